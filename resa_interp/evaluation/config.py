"""What `eval` and `sweep` run and how: `EvalConfig` and `SweepConfig` (a docstring under every field, which is
also its `--help`), their presets and the `--tasks` parser. Everything that takes an evaluation or sweep config
imports it from here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from resa_interp.errors import ResaError, check_choice
from resa_interp.evaluation.tasks import PAPER_ORDER, PAPER_TASKS, SYNTHETIC
from resa_interp.model import resolve_dtype
from resa_interp.presets import with_preset
from resa_interp.sae import PRESETS as SAE_PRESETS
from resa_interp.sae import SAETrainConfig
from resa_interp.tuning import TuneConfig, preset_config

BACKENDS = ("auto", "vllm", "transformers")
DEFAULT_TASKS = ("aime24", "aime25", "amc23", "math_500", "minerva", "gpqa:diamond")
"""What eval runs by default: the paper's six tasks, as its --tasks default lists them."""


@dataclass
class EvalConfig:
    """What and how to evaluate; the defaults are the paper's (its six tasks, temperature 0.6, top-p 0.95, up to
    32,768 new tokens)."""

    backend: str = "auto"
    """vllm (lighteval on vLLM, GPU), transformers (local sampling, CPU or GPU), or auto: vllm when a CUDA GPU is
    visible and vLLM is installed, else transformers."""
    samples: int = 1
    """Generations per problem; Pass@1 is the mean verdict over them."""
    max_new_tokens: int = 32768
    """Generation budget per sample (the paper's: 32768); the model length is set so that every prompt plus this
    fits."""
    temperature: float = 0.6
    """Sampling temperature (the paper's: 0.6; 0 = greedy, which allows only one sample)."""
    top_p: float = 0.95
    """Nucleus sampling threshold (the paper's: 0.95)."""
    limit: int | None = None
    """Evaluate only the first N problems of each task (unset: all)."""
    seed: int = 0
    """Seed of the sampling and of GPQA's option order."""
    batch_size: int = 8
    """Sequences per generation batch (transformers backend)."""
    device: str = "auto"
    """Device of the transformers backend: cpu, cuda, cuda:N or auto (CUDA when present)."""
    dtype: str | None = None
    """Weights dtype: float32, bfloat16 or float16; unset: bfloat16 on GPU (the authors' vLLM setting), float32 on
    CPU."""
    gpu_memory_utilization: float = 0.7
    """Share of GPU memory vLLM may take (the authors' setting: 0.7)."""
    data_parallel_size: int | None = None
    """vLLM replicas, one per GPU; unset: every visible GPU (the authors ran 2)."""
    model: str | None = None
    """Model to evaluate: a model spec (HF folder, .gguf file, hub id org/name, or smollm2-135m), or a tune output
    folder (its merged/ model is evaluated); unset: the embedded default."""
    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Tasks, comma-separated: the paper's aime24, aime25, amc23, math_500, minerva, gpqa:diamond (from the hub),
    synthetic (the built-in held-out set), or local .jsonl files (problem, answer[, choices])."""

    def check(self) -> None:
        """Raise a one-line error for values no backend can run."""
        check_choice("--backend", self.backend, BACKENDS)
        for name in ("samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ResaError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.temperature < 0:
            raise ResaError(f"--temperature {self.temperature}: must be 0 (greedy) or positive")
        if self.temperature == 0 and self.samples > 1:
            raise ResaError(f"--samples {self.samples} with --temperature 0: greedy decoding gives one answer; "
                            "use --samples 1 or a positive temperature")
        if not 0 < self.top_p <= 1:
            raise ResaError(f"--top-p {self.top_p}: must be in (0, 1]")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ResaError(f"--gpu-memory-utilization {self.gpu_memory_utilization}: must be in (0, 1]")
        if self.data_parallel_size is not None and self.data_parallel_size < 1:
            raise ResaError(f"--data-parallel-size {self.data_parallel_size}: must be at least 1")
        if self.dtype is not None:
            resolve_dtype(self.dtype)


EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"backend": "transformers", "limit": 20, "max_new_tokens": 256},
    "paper": {"backend": "vllm"},
}
"""'cpu': 20 synthetic problems, 256 new tokens, local sampling (the eval README's CPU example). 'paper': the
paper's setting, which is `EvalConfig`'s defaults (1 sample, temperature 0.6, top-p 0.95, 32,768 new tokens)
on lighteval + vLLM."""

INPUT_FIELDS = ("model", "tasks")
"""EvalConfig fields that name what is evaluated rather than how; scores.json records the model and the tasks on
their own, so its "config" leaves them out."""


def generation_settings(config: EvalConfig) -> dict:
    """The config as scores.json records it (JSON types): every setting, without the model and the tasks."""
    return json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in INPUT_FIELDS}))


def parse_task_list(text: str) -> list[str]:
    """`--tasks` text: comma-separated task specs (paths may not contain commas)."""
    specs = [part.strip() for part in text.split(",") if part.strip()]
    if not specs:
        raise ResaError("--tasks is empty; give one or more of: " + ", ".join([*PAPER_TASKS, SYNTHETIC, "file.jsonl"]))
    return specs


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
    `resume` are set per layer, `report_to` is the sweep's, `sae` is not used."""
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    """How every tuned model is evaluated; `model` and `tasks` are set per layer (the layer's tuning output and
    the sweep's `tasks`)."""
    saes: SAETrainConfig = field(default_factory=SAETrainConfig)
    """Stage I settings for SAEs the sweep trains itself; model, hook, layers and `report_to` are taken from the
    sweep."""
    report_to: str = "none"
    """Experiment tracking: 'wandb' (WANDB_MODE=offline works without a network), 'tensorboard' or 'none'. The
    sweep's own run (OUT/wandb/ or OUT/tensorboard/: its config, each layer's scores and KL with the layer as
    the step, every layer's results at the end) and every run it starts report there: each layer's tuning
    (OUT/layer-L/) and the Stage I run it trains first (extra 'track')."""


SWEEP_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"tasks": (SYNTHETIC,)},
    "paper": {"layers": "1-26", "tasks": PAPER_ORDER},  # hook indices of Table 6's 2nd..27th layers
}
"""Sweep-level values of each preset; the stages' own presets of the same name supply the rest: tuning's
'cpu' and 'paper' (`tuning.config.PRESETS`), evaluation's (`evaluation.config.EVAL_PRESETS`), and Stage I's
'paper' (`sae.config.PRESETS`)."""


def sweep_config(
    preset: str | None = "cpu",
    *,
    layers: str | None = None,
    tasks: list[str] | tuple[str, ...] | None = None,
    saes_run: str | None = None,
    device: str | None = None,
    report_to: str | None = None,
    tune: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> SweepConfig:
    """A config from a preset ('cpu', 'paper'; None: each stage's defaults), then every non-None value given;
    `device` applies to Stage I, tuning and evaluation alike."""
    if preset is not None:
        check_choice("--preset", preset, SWEEP_PRESETS)
    return with_preset(
        SweepConfig, SWEEP_PRESETS, preset,
        layers=layers,
        tasks=tuple(tasks) if tasks is not None else None,
        saes_run=saes_run,
        report_to=report_to,
        tune=preset_config(preset, device=device, **(tune or {})),
        evaluation=with_preset(EvalConfig, EVAL_PRESETS, preset, device=device, **(evaluation or {})),
        saes=with_preset(SAETrainConfig, SAE_PRESETS, preset if preset in SAE_PRESETS else None, device=device),
    )
