"""The per-layer sweep that closes the loop of the paper's Table 6 (section 5): SAE-Tuning at every layer with
that layer's Stage I SAE, every tuned model evaluated, and one row of scores per layer in `OUT/scores.csv`
(`layer`, one column per task with Pass@1 in percent, `avg`): the file `select-layers --scores` reads.

`OUT/layer-{l}/` is layer l's tuning output (adapter/, merged/, train_log.jsonl, checkpoints/, manifest.json)
and `OUT/layer-{l}/eval/` its evaluation (scores.json, samples.jsonl). A sweep resumes what an earlier run of it
left: a layer whose tuning finished is not tuned again (its settings must be the same), an interrupted tuning
continues from its last checkpoint (tuning's own resume), and an evaluation that finished with the same tasks
and settings is not run again. scores.csv and the manifest's 'sweep' record are rewritten after every layer.
"""

from __future__ import annotations

import csv
import gc
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from resa_interp.errors import ResaError, check_choice
from resa_interp.evaluation.evaluator import (
    SCORES,
    EvalConfig,
    EvalResult,
    evaluate,
    generation_settings,
    read_scores,
    table_columns,
)
from resa_interp.evaluation.tasks import PAPER_ORDER, SYNTHETIC, load_tasks
from resa_interp.features.extract import default_layers
from resa_interp.model.hooks import HOOKS
from resa_interp.model.loading import model_shape
from resa_interp.presets import with_preset
from resa_interp.runs import atomic_write_text, read_manifest, record_stage, run_relative
from resa_interp.sae.folders import require_sae_dirs, run_sae_dirs
from resa_interp.sae.train import PRESETS as SAE_PRESETS
from resa_interp.sae.train import SAETrainConfig, parse_layers, train_saes
from resa_interp.tuning.sae_tuning import STAGE as TUNE_STAGE
from resa_interp.tuning.sae_tuning import TuneConfig, changed_settings, preset_config, tune

STAGE = "sweep"
SCORES_CSV = "scores.csv"
EVAL_DIR = "eval"
_RESERVED_COLUMNS = ("layer", "avg")


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs at every layer. The tuning settings name the model and the kind of hookpoint."""

    layers: str | None = None
    """Layers to sweep: a range 'A-B' (inclusive), a list 'L,L,...' or 'all'. None: 1..L-2, the layers
    `features` counts by default, so that the scores line up with its counts (paper preset: 1-26, Table 6's
    rows, which the paper labels 2nd..27th; see `resa_interp.numbering`)."""
    tasks: tuple[str, ...] = (SYNTHETIC,)
    """Evaluation tasks: the paper's task names, 'synthetic' or local .jsonl files; one scores.csv column each."""
    saes_run: str | None = None
    """Stage I run with an SAE at every swept layer. None: the sweep's own output folder, where the SAEs are
    trained first (with `saes`) when it holds none."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """SAE-Tuning settings of every layer (model, hook, data, steps, LoRA, ...); `layer`, `saes_run` and
    `resume` are set per layer, `sae` is not used."""
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    """How every tuned model is evaluated; `model` and `tasks` are set per layer (the layer's tuning output and
    the sweep's `tasks`)."""
    saes: SAETrainConfig = field(default_factory=SAETrainConfig)
    """Stage I settings for SAEs the sweep trains itself; model, hook and layers are taken from the sweep."""


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"tasks": (SYNTHETIC,)},
    "paper": {"layers": "1-26", "tasks": PAPER_ORDER},  # hook indices of Table 6's 2nd..27th layers
}
"""Sweep-level values of each preset; the stages' own presets of the same name supply the rest: tuning's
'cpu' and 'paper' (`tuning.sae_tuning.PRESETS`), evaluation's below, and Stage I's 'paper' (`sae.train.PRESETS`)."""

EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"backend": "transformers", "limit": 20, "max_new_tokens": 256},
    "paper": {"backend": "vllm"},
}
"""'cpu': 20 synthetic problems, 256 new tokens, local sampling (the eval README's CPU example). 'paper': the
paper's setting, which is `EvalConfig`'s defaults (1 sample, temperature 0.6, top-p 0.95, 32,768 new tokens)
on lighteval + vLLM."""


def sweep_config(
    preset: str | None = "cpu",
    *,
    layers: str | None = None,
    tasks: list[str] | tuple[str, ...] | None = None,
    saes_run: str | None = None,
    device: str | None = None,
    tune: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> SweepConfig:
    """A config from a preset ('cpu', 'paper'; None: each stage's defaults), then every non-None value given;
    `device` applies to Stage I, tuning and evaluation alike."""
    if preset is not None:
        check_choice("--preset", preset, PRESETS)
    return with_preset(
        SweepConfig, PRESETS, preset,
        layers=layers,
        tasks=tuple(tasks) if tasks is not None else None,
        saes_run=saes_run,
        tune=preset_config(preset, device=device, **(tune or {})),
        evaluation=with_preset(EvalConfig, EVAL_PRESETS, preset, device=device, **(evaluation or {})),
        saes=with_preset(SAETrainConfig, SAE_PRESETS, preset if preset in SAE_PRESETS else None, device=device),
    )


@dataclass(frozen=True)
class LayerResult:
    """One layer of a sweep: its tuning and its scores."""

    layer: int
    out: Path
    """The layer's tuning output; its evaluation is in `out/eval`."""
    steps: int
    kl_first: float
    """Per-token KL(teacher || student) at the first tuning step."""
    kl_last: float
    """Per-token KL at the last tuning step."""
    tune_wall_s: float
    scores: dict[str, float]
    """scores.csv column -> Pass@1 in percent, in the paper's column order (local tasks after)."""
    average: float
    """Mean Pass@1 over the tasks, in percent."""
    eval_wall_s: float
    tuned_now: bool
    """False when an earlier run of the sweep had tuned this layer."""
    evaluated_now: bool
    """False when an earlier run had evaluated it with the same tasks and settings."""


@dataclass(frozen=True)
class SweepResult:
    """What `sweep` produced."""

    out: Path
    layers: list[LayerResult]
    scores_csv: Path
    wall_s: float
    """Wall time of this call (layers finished earlier cost nothing)."""


def sweep(config: SweepConfig, out: str | Path, echo: Callable[[str], None] = print) -> SweepResult:
    """Tune and evaluate at every layer of `config.layers` into `out`, resuming what an earlier run of the same
    sweep finished; write `out`/scores.csv and the 'sweep' record of `out`/manifest.json. `echo` gets one line per
    layer (and a note when Stage I runs first)."""
    started = time.perf_counter()
    out = Path(out)
    config.evaluation.check()
    if config.tune.hook not in HOOKS:
        raise ResaError(f"--hook {config.tune.hook!r}: accepted {', '.join(HOOKS)}")
    n_layers = model_shape(config.tune.model).n_layers
    layers = parse_layers(config.layers or default_layers(n_layers), n_layers)
    if not config.tasks:
        raise ResaError("no tasks to evaluate; give one or more task names or .jsonl files with --tasks")
    # every task is loaded once before any work, so that a wrong name or an unreachable dataset fails now
    task_names = [t.name for t in load_tasks(list(config.tasks), config.evaluation.limit, config.evaluation.seed)]
    reserved = [name for name in task_names if score_column(name) in _RESERVED_COLUMNS]
    if reserved:
        raise ResaError(f"--tasks: a task named {reserved[0]!r} would clash with scores.csv's own column; rename it")
    counted = read_manifest(out)["stages"].get("features", {}).get("layers")
    if counted and counted != layers:
        echo(f"note: the features in {out} count layers {_span(counted)}, this sweep tunes {_span(layers)}; "
             "select-layers needs the same layers in both")
    run = _sae_run(config, out, layers, echo)
    rows: list[LayerResult] = []
    for i, layer in enumerate(layers):
        rows.append(_sweep_layer(config, run, layer, out, task_names))
        echo(f"[{i + 1}/{len(layers)}] {format_layer(rows[-1])}")
        path = write_scores_csv(out / SCORES_CSV, rows)
        _record(out, config, run, layers, rows, path, time.perf_counter() - started)
    return SweepResult(out, rows, path, time.perf_counter() - started)


def _sae_run(config: SweepConfig, out: Path, layers: list[int], echo: Callable[[str], None]) -> Path:
    """The Stage I run to take SAEs from, with one for every layer (trained first in `out` when it holds none)."""
    hook = config.tune.hook
    run = Path(config.saes_run) if config.saes_run is not None else out
    if config.saes_run is None and not run_sae_dirs(run, hook):
        stage1 = replace(config.saes, model=config.tune.model, hook=hook, layers=",".join(map(str, layers)))
        echo(f"{out} has no SAEs: training them first (Stage I, layers {_span(layers)})")
        train_saes(stage1, run)
        _release_memory()
    require_sae_dirs(run, hook, layers)
    return run.resolve()


def _span(layers: list[int]) -> str:
    """'1-26' for a run of consecutive layers, else '3,12,24'."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _sweep_layer(config: SweepConfig, run: Path, layer: int, out: Path, task_names: list[str]) -> LayerResult:
    """Tune (or resume, or keep) and evaluate (or keep) one layer."""
    folder = out / f"layer-{layer}"
    tune_config = replace(config.tune, sae=None, saes_run=str(run), layer=layer, resume=True)
    tuned_before = TUNE_STAGE in read_manifest(folder)["stages"]
    if tuned_before:
        changed = changed_settings(tune_config, folder)
        if changed:
            raise ResaError(
                f"layer {layer} in {str(out)!r} was tuned with other settings ({', '.join(changed)}); rerun with "
                "the same options, or use another --out"
            )
    else:
        tune(tune_config, folder)
        _release_memory()
    tuned = read_manifest(folder)["stages"][TUNE_STAGE]
    result = _finished_evaluation(folder / EVAL_DIR, config.evaluation, task_names) if tuned_before else None
    evaluated_now = result is None
    if result is None:
        result = evaluate(replace(config.evaluation, model=str(folder), tasks=tuple(config.tasks)), folder / EVAL_DIR)
        _release_memory()
        _record_evaluation(folder, result)
    return LayerResult(
        layer=layer,
        out=folder,
        steps=tuned["steps"],
        kl_first=tuned["first"],
        kl_last=tuned["last"],
        tune_wall_s=tuned["wall_s"],
        scores=layer_scores(result),
        average=100 * result.average,
        eval_wall_s=result.wall_time_s,
        tuned_now=not tuned_before,
        evaluated_now=evaluated_now,
    )


def _finished_evaluation(folder: Path, config: EvalConfig, task_names: list[str]) -> EvalResult | None:
    """The evaluation in `folder` if it finished with these tasks and settings, else None."""
    if not (folder / SCORES).is_file():
        return None
    result = read_scores(folder)
    same = list(result.tasks) == task_names and result.config == generation_settings(config)
    return result if same else None


def _record_evaluation(folder: Path, result: EvalResult) -> None:
    record_stage(folder, "eval", {
        "out": str(folder / EVAL_DIR),
        "backend": result.backend,
        "device": result.device,
        "pass@1": {name: score.pass_at_1 for name, score in result.tasks.items()},
        "average": result.average,
        "wall_s": result.wall_time_s,
        "config": result.config,
    })


def _release_memory() -> None:
    """Give cached GPU memory back between stages (vLLM claims a share of what is free when it starts)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_column(task: str) -> str:
    """A task's scores.csv column: its name with ':' as '_' (gpqa:diamond -> gpqa_diamond, as in Table 6's file)."""
    return task.replace(":", "_")


def layer_scores(result: EvalResult) -> dict[str, float]:
    """scores.csv column -> Pass@1 in percent, in the paper's column order."""
    return {score_column(name): 100 * result.tasks[name].pass_at_1 for name in table_columns(result)}


def write_scores_csv(path: Path, rows: list[LayerResult]) -> Path:
    """`layer`, one column per task, `avg` (Pass@1 in percent), one row per layer in layer order; atomic."""
    columns = list(rows[0].scores)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", *columns, "avg"])
    for row in sorted(rows, key=lambda r: r.layer):
        writer.writerow([row.layer, *(_number(row.scores[c]) for c in columns), _number(row.average)])
    return atomic_write_text(path, buffer.getvalue())


def _number(value: float) -> str:
    return f"{value:.6g}"


def format_layer(row: LayerResult) -> str:
    """The progress line of one finished layer."""
    tuned = "tuned" if row.tuned_now else "tuned earlier"
    evaluated = "evaluated" if row.evaluated_now else "evaluated earlier"
    scores = "  ".join(f"{name} {value:.2f}" for name, value in row.scores.items())
    return (
        f"layer {row.layer}: {tuned} ({row.steps} steps, {row.tune_wall_s:.0f} s), kl {row.kl_first:.4g} -> "
        f"{row.kl_last:.4g}; {evaluated} ({row.eval_wall_s:.0f} s): {scores}  avg {row.average:.2f}"
    )


def _record(
    out: Path, config: SweepConfig, run: Path, layers: list[int], rows: list[LayerResult], path: Path, wall: float
) -> None:
    record_stage(out, STAGE, {
        # evaluation's model and tasks are set per layer (recorded below and per layer), not the config's defaults
        "config": {**asdict(config), "evaluation": generation_settings(config.evaluation)},
        "model": config.tune.model,
        "hook": config.tune.hook,
        "saes_run": run_relative(run, out),
        "layers": layers,
        "tasks": list(config.tasks),
        "complete": len(rows) == len(layers),
        "scores_csv": run_relative(path, out),
        "wall_s_this_run": round(wall, 2),
        "per_layer": [{**asdict(row), "out": run_relative(row.out, out)} for row in rows],
    })
