"""Stage II, SAE-Tuning (paper section 2.1 and Appendix A): a frozen SAE is spliced into the target model at
the hookpoint it was trained on, and LoRA adapters are trained so that the spliced model's next-token
distributions match the untouched model's, KL(p_teacher || p_student). Afterwards the SAE is gone: the
adapter is saved, and merged into the target's weights for ordinary inference.

Teacher: the target with adapters disabled and no SAE, without gradients. Student: the target with the SAE
spliced in (`model.splice.spliced`) and adapters on. Data: CoT-free elicitation text (`data.templates.format_trigger`)
from question/answer pairs (`data.qa.load_qa`), one sequence per micro-batch, no padding: one text, or with `pack`
one full chunk of the EOS-joined text stream, as the authors' code trains (`data.packing`). With `no_sae` the
same LoRA is trained with plain next-token cross-entropy on the same text: the paper's CoT-free SFT baseline.

Runs under `accelerate launch` (DDP: each process takes every world-th example); checkpoints hold the
adapter, optimizer, schedule and every process's RNG state, and the data order is a pure function of the
seed, so `resume` continues to the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from resa_interp.errors import ResaError
from resa_interp.model import attach, save_adapter
from resa_interp.runs import atomic_write_json, atomic_write_text, record_stage, run_relative
from resa_interp.shards import is_main_process
from resa_interp.tracking import Tracker, open_tracker
from resa_interp.tuning.checkpoints import checkpoint_dirs, load_checkpoint, refuse_pickled_checkpoints, save_checkpoint
from resa_interp.tuning.config import TuneConfig
from resa_interp.tuning.tuner import SAETuner, StepRecord

if TYPE_CHECKING:
    from accelerate import Accelerator

TRAIN_LOG = "train_log.jsonl"
STAGE = "tune"
_CONFIG_FILE = "tune_config.json"
_NOT_COMPARED_ON_RESUME = ("resume", "save_every", "device", "report_to")


@dataclass(frozen=True)
class TuneResult:
    """What a finished run produced."""

    out: Path
    adapter: Path
    merged: Path
    steps: int
    first: float
    """Logged loss value (KL or cross-entropy) at the first step."""
    last: float
    """Logged loss value at the last step."""
    tokens: int
    wall_s: float
    records: list[StepRecord] = field(repr=False)


def changed_settings(config: TuneConfig, out: str | Path) -> list[str]:
    """Settings of `config` that differ from those the run in `out` was started with (none when `out` has no run);
    `resume`, `save_every`, `device` and `report_to` do not count."""
    saved = Path(out) / _CONFIG_FILE
    if not saved.exists():
        return []
    before = {k: v for k, v in json.loads(saved.read_text()).items() if k not in _NOT_COMPARED_ON_RESUME}
    now = {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k not in _NOT_COMPARED_ON_RESUME}
    return sorted(k for k in now if before.get(k) != now[k])


def prepare_out(config: TuneConfig, out: Path) -> Path | None:
    """Check the output directory against `resume`; return the checkpoint to resume from, if any."""
    if not config.resume:
        if (out / _CONFIG_FILE).exists() or (out / TRAIN_LOG).exists():
            raise ResaError(
                f"output {str(out)!r} already holds a tuning run; pass --resume to continue it, or another --out"
            )
        return None
    changed = changed_settings(config, out)
    if changed:
        raise ResaError(
            f"--resume: the run in {str(out)!r} was started with other settings ({', '.join(changed)}); "
            f"rerun with the same options, or use another --out"
        )
    refuse_pickled_checkpoints(out)
    checkpoints = checkpoint_dirs(out)
    return checkpoints[-1] if checkpoints else None


def tune(
    config: TuneConfig,
    out: str | Path,
    *,
    on_step: Callable[[StepRecord], None] | None = None,
    accelerator: Accelerator | None = None,
) -> TuneResult:
    """Run SAE-Tuning (or the `no_sae` SFT baseline) into `out`: adapter/, merged/, train_log.jsonl,
    checkpoints/, manifest.json, and (`config.report_to`) the same steps on a tracker from the main process.
    `on_step` is called after every optimizer step (on every process)."""
    out = Path(out)
    tracker = open_tracker(config.report_to, main=is_main_process())
    checkpoint = prepare_out(config, out)
    tuner = SAETuner(config, accelerator)
    accelerator = tuner.accelerator
    main = accelerator.is_main_process
    records: list[StepRecord] = []
    start, elapsed_before = 0, 0.0
    if checkpoint is not None:
        state = load_checkpoint(tuner, checkpoint)
        start, elapsed_before = state["step"], state["elapsed_s"]
        lines = (out / TRAIN_LOG).read_text().splitlines() if (out / TRAIN_LOG).exists() else []
        records = [StepRecord(**json.loads(line)) for line in lines if json.loads(line)["step"] <= start]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / _CONFIG_FILE, config.to_dict())
        atomic_write_text(out / TRAIN_LOG, "".join(json.dumps(r.to_dict()) + "\n" for r in records))
    tracker.start(config.to_dict(), out, out.name)
    try:
        for record in records:  # a resumed run's steps so far, so that the tracker's curves are whole
            tracker.log(record.step, _scalars(record))
        result = _train(tuner, config, out, records, start, elapsed_before, tracker, on_step)
        tracker.summary(_summary(result, config))
        return result
    finally:
        tracker.finish()


def _train(tuner: SAETuner, config: TuneConfig, out: Path, records: list[StepRecord], start: int,
           elapsed_before: float, tracker: Tracker, on_step: Callable[[StepRecord], None] | None) -> TuneResult:
    """The steps from `start` on (appended to `records`, train_log.jsonl and the tracker), then the adapter, the
    merged model and the manifest."""
    from tqdm.auto import tqdm

    accelerator = tuner.accelerator
    main = accelerator.is_main_process
    total = tuner.schedule.total_steps
    began = time.perf_counter()
    bar = tqdm(total=total, initial=start, disable=not main, desc="sft" if config.no_sae else "sae-tuning", unit="step")
    with bar, (out / TRAIN_LOG).open("a") if main else contextlib.nullcontext() as log:
        for step in range(start, total):
            step_began = time.perf_counter()
            record = tuner.train_step(step)
            seconds = time.perf_counter() - step_began
            records.append(record)
            if main:
                log.write(json.dumps(record.to_dict()) + "\n")
                log.flush()
            tracker.log(record.step, {**_scalars(record), "tokens_per_s": record.tokens / max(seconds, 1e-9)})
            bar.update(1)
            bar.set_postfix({"ce" if config.no_sae else "kl": f"{record.loss_value:.4g}"})
            done = record.step
            if config.save_every and done % config.save_every == 0 and done < total:
                save_checkpoint(tuner, out, done, elapsed_before + time.perf_counter() - began)
            if on_step is not None:
                on_step(record)
    wall = elapsed_before + time.perf_counter() - began
    tokens = sum(r.tokens for r in records)
    accelerator.wait_for_everyone()
    adapter, merged = out / "adapter", out / "merged"
    if main:
        save_adapter(tuner.model, adapter, tuner.subject.spec)
        attach(adapter, config.model, merged)
        record_stage(out, STAGE, _manifest(tuner, out, records, wall, tokens))
    accelerator.wait_for_everyone()
    first, last = records[0].loss_value, records[-1].loss_value
    return TuneResult(out, adapter, merged, total, first, last, tokens, wall, records)


def _scalars(record: StepRecord) -> dict[str, float]:
    """A step's train_log.jsonl line as the tracker's scalars (the step is the tracker's own)."""
    return {key: value for key, value in record.to_dict().items() if key != "step"}


def _summary(result: TuneResult, config: TuneConfig) -> dict[str, Any]:
    """The tracker's summary: the final and first KL (or cross-entropy), the last SAE MSE, steps, tokens, time."""
    name = "ce" if config.no_sae else "kl"
    final = {name: result.last, **({"sae_mse": result.records[-1].sae_mse} if not config.no_sae else {})}
    return {"final": final, "first": {name: result.first}, "steps": result.steps, "tokens_seen": result.tokens,
            "wall_s": result.wall_s}


def _manifest(tuner: SAETuner, out: Path, records: list[StepRecord], wall: float, tokens: int) -> dict[str, Any]:
    config, accelerator, subject = tuner.config, tuner.accelerator, tuner.subject
    device = str(accelerator.device)
    if accelerator.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(accelerator.device)})"
    sae = None
    if tuner.choice is not None:
        sae = {
            "path": run_relative(tuner.choice.path, out),
            "hook_name": tuner.sae.cfg.metadata.hook_name,
            "layer": tuner.choice.layer,
            "d_in": tuner.sae.cfg.d_in,
            "d_sae": tuner.sae.cfg.d_sae,
            "k": getattr(tuner.sae.cfg, "k", None),
            "architecture": tuner.sae.cfg.architecture(),
        }
    return {
        "objective": "next-token cross-entropy (CoT-free SFT)" if config.no_sae
        else "KL(teacher || SAE-spliced student)",
        "source_model": tuner.choice.source_model if tuner.choice else None,
        "target_model": subject.spec,
        "target_model_path": str(subject.path),
        "elicitation_dataset": config.dataset,
        "dataset_fingerprint": tuner.data_fingerprint,
        "n_examples": len(tuner.examples),
        "sae": sae,
        "config": config.to_dict(),
        "steps": len(records),
        "first": records[0].loss_value,
        "last": records[-1].loss_value,
        "tokens_seen": tokens,
        "wall_s": round(wall, 3),
        "s_per_step": round(wall / max(len(records), 1), 4),
        "device": device,
        "processes": accelerator.num_processes,
        "dtype": str(subject.dtype).removeprefix("torch."),
        "trainable_parameters": sum(p.numel() for p in tuner.trainable),
    }
