"""Stage II's options: `TuneConfig` (the paper's Appendix A as defaults, a docstring under every field), its
presets (`cpu`, `paper`) and the parser of a LoRA target spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from resa_interp.data import TEMPLATES
from resa_interp.errors import ResaError, check_choice
from resa_interp.presets import with_preset
from resa_interp.tracking import check_report_to

LORA_TARGETS = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "attn+mlp": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
"""Named LoRA target sets: the paper's table (query, key, value, dense) and the authors' code (+ MLP)."""
KL_REDUCTIONS = ("token", "batchmean")
"""How the per-position KL becomes the loss: averaged over positions, or summed and divided by the batch size."""


@dataclass(frozen=True)
class TuneConfig:
    """Everything that defines one SAE-Tuning (or `no_sae` SFT) run. Defaults are the paper's Appendix A."""

    model: str | None = None
    """Target model spec (HF folder, .gguf, hub id); unset: the embedded SmolLM2-135M-Instruct."""
    sae: str | None = None
    """One SAELens SAE folder to splice in, instead of a Stage I run and a layer; unused without an SAE (no_sae)."""
    saes_run: str | None = None
    """Stage I run whose SAE to splice in: the one at `hook` and `layer`, RUN/saes/blocks.L.hook_<hook>/."""
    layer: int | None = None
    """Layer of the hookpoint. With an SAE folder it is optional (read from the SAE's metadata) and checked."""
    hook: str = "resid_post"
    """'resid_post' (output of decoder layer `layer`, the authors' code), 'mlp_out' (its MLP, the paper's text), or
    another hook with an HF module to splice at (`model.hooks.SPLICE_HOOKS`)."""
    dataset: str = "synthetic"
    """Elicitation data: 'synthetic', 'traces' (questions with worked solutions, for 'r1-trace'), 'still',
    'deepscaler', a hub id or a local json/jsonl/csv/parquet file."""
    problem_column: str | None = None
    """Column with the question (default: matched by common names)."""
    answer_column: str | None = None
    """Column with the verified final answer (default: matched by common names)."""
    trace_column: str | None = None
    """Column with a worked solution, for the 'r1-trace' template (default: matched by common names, if any)."""
    limit: int | None = None
    """Tune on the first N question/answer pairs (unset: all)."""
    template: str = "r1"
    """Elicitation template: 'r1' (R1 system prompt + User/Assistant, the authors' code), 'r1-paper', 'short' (the
    paper's text), or 'r1-trace' (the 'r1' turns with each example's worked solution inside <think>, for SFT of a
    source model with --no-sae)."""
    max_length: int = 2048
    """Sequences are truncated to this many tokens; with `pack`, the chunk length (the authors' 2048)."""
    pack: bool = False
    """Pack the texts as the authors' code does (sparsify's chunk_and_tokenize): joined with EOS and cut into
    chunks of exactly `max_length` tokens, the remainder of every 2048 texts dropped; an 'example' is then a
    chunk. Off: one text per sequence."""
    epochs: int = 2
    """Passes over the data (paper: 2). Ignored when steps are set."""
    steps: int | None = None
    """Optimizer steps in total, cycling through the data as needed (overrides epochs; unset: from epochs)."""
    lr: float = 1e-6
    """Peak AdamW learning rate (paper: 1e-6)."""
    min_lr_rate: float = 0.1
    """The cosine schedule ends at `lr * min_lr_rate` (transformers' cosine_with_min_lr)."""
    warmup_ratio: float = 0.0
    """Fraction of the steps spent warming the learning rate up linearly from 0."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (paper: 0.9, 0.999)."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default, which the authors' code keeps)."""
    lora_r: int = 32
    """LoRA rank (paper: 32)."""
    lora_alpha: int = 128
    """LoRA alpha (paper: 128); the update is B @ A * alpha / r."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input (paper: 0.05)."""
    lora_targets: tuple[str, ...] = LORA_TARGETS["attn"]
    """Module names that get adapters (paper: q, k, v, o projections; the authors' code adds the MLP's)."""
    grad_accum: int = 1
    """Micro-batches (sequences) per optimizer step and process."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this total norm (the authors' code: 1.0)."""
    kl_reduction: str = "token"
    """'token': KL averaged over the sequence's positions. 'batchmean': summed over positions and divided by
    the batch size only, as the authors' code does (so long sequences weigh more)."""
    detach_sae: bool = False
    """Stop gradients at the SAE's input, as the authors' code does (its hook runs under no_grad), so only
    layers after the hookpoint adapt. Default: gradients flow through the frozen SAE, as the paper describes."""
    keep_first: int = 1
    """The first positions keep their clean activation (SAEs are trained without the sink position)."""
    no_sae: bool = False
    """The CoT-free SFT baseline: same data and LoRA, next-token cross-entropy, no SAE and no teacher."""
    teacher_cache: str | None = None
    """A folder that keeps the teacher's final hidden states, one file per training sequence, under a key of the
    target's weights, dtype and device: runs on the same target and data (other seeds, layers or SAEs) read them
    and apply only the output head instead of the teacher's forward, with the same logits. Unset: the teacher
    runs at every micro-step."""
    save_every: int | None = 500
    """Save a checkpoint every this many optimizer steps, for resuming (the authors' code: 500); unset: only at
    the end."""
    resume: bool = False
    """Require an interrupted run in the output folder and continue it from its last checkpoint, to the same
    result as an uninterrupted run."""
    seed: int = 42
    """Seed of LoRA initialisation, dropout and data order (the authors' recipe: 42)."""
    shuffle: bool = True
    """Shuffle the data every epoch (seeded); False keeps the dataset's order, as the authors' code."""
    device: str = "auto"
    """'auto' (CUDA if present, or each process's device under accelerate launch), 'cpu' or 'cuda'."""
    dtype: str = "auto"
    """Model weights' dtype: 'auto' is bfloat16 on CUDA and float32 on CPU. Adapters train in float32."""
    report_to: str = "none"
    """Experiment tracking: 'wandb' (a run under OUT/wandb/; WANDB_MODE=offline works without a network),
    'tensorboard' (OUT/tensorboard/) or 'none'. Per step what train_log.jsonl holds (KL or cross-entropy, SAE
    MSE, lr, grad norm, tokens) and tokens/s; the config; the final KL or cross-entropy (extra 'track')."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON."""
        return asdict(self)

    def check(self) -> None:
        """One-line errors for settings no run can use (before any model or data is loaded)."""
        check_choice("KL reduction", self.kl_reduction, KL_REDUCTIONS)
        check_choice("--template", self.template, TEMPLATES)
        for name in ("grad_accum", "lora_r", "max_length"):
            if getattr(self, name) < 1:
                raise ResaError(f"{name} {getattr(self, name)} must be at least 1")
        if self.steps is None and self.epochs < 1 or self.steps is not None and self.steps < 1:
            raise ResaError("the run needs at least one step: --steps N >= 1 or --epochs E >= 1")
        if self.no_sae and self.teacher_cache is not None:
            raise ResaError("--teacher-cache with --no-sae: the CoT-free SFT baseline has no teacher to cache")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ResaError(f"device {self.device!r}: accepted auto, cpu, cuda (one GPU per process)")
        check_report_to(self.report_to)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "dataset": "still",
        "layer": 12,
        "epochs": 2,
        "lr": 1e-6,
        "pack": True,
    },
    "cpu": {"dataset": "synthetic", "layer": 12, "limit": 64, "steps": 60, "lr": 1e-4, "save_every": 30},
}
"""'paper': R1-Distill target, STILL, layer 12, Appendix A, packed 2048-token chunks as the authors' code (needs a
GPU and the hub). 'cpu': one text per sequence, the embedded
model on 64 synthetic pairs for 60 steps at lr 1e-4, where the paper's 1e-6 would move the KL too little to
see in a few minutes."""


def preset_config(preset: str | None, **overrides: Any) -> TuneConfig:
    """A config from a named preset (None: the paper's Appendix A defaults), then `overrides` (None values skipped)."""
    # an SAE folder names its own layer; the preset's would contradict it
    drop = ("layer",) if overrides.get("sae") is not None else ()
    return with_preset(TuneConfig, PRESETS, preset, drop, **overrides)


def lora_targets(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'attn' | 'attn+mlp' | module names (a list, or one comma-separated string) -> module names."""
    if isinstance(spec, str):
        if spec in LORA_TARGETS:
            return LORA_TARGETS[spec]
        spec = [s for s in spec.split(",")]
    names = tuple(s.strip() for s in spec if s.strip())
    if not names:
        raise ResaError(f"LoRA targets {spec!r}: none given; accepted: {', '.join(LORA_TARGETS)} or module names")
    return names
