"""What a Stage I run will do, known before it starts: its settings next to the paper's, the memory planner (how
many layers share one forward pass), and a plan (layers with hook names and the paper's labels, dictionary size,
tokens and steps, memory, outputs) built from the model's config alone, so that `train-saes --dry-run` answers
in seconds and reads no weights.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from resa_interp.model import EMBEDDED_ALIASES, hook_name, model_shape, resolve_device
from resa_interp.numbering import describe_layers, parse_layers
from resa_interp.presets import SettingsReport, settings_report, with_preset
from resa_interp.sae.checkpoint import CHECKPOINT
from resa_interp.sae.config import K_ARCHITECTURES, PRESETS, SAETrainConfig
from resa_interp.sae.folders import SAES_DIR
from resa_interp.sae.metrics import METRICS_FILE
from resa_interp.sae.pretrained import find_source_sae
from resa_interp.sae.ranks import layer_owners, most_per_rank
from resa_interp.shards import launcher_shard

OPERATIONAL = ("group_size", "checkpoint_every", "report_to")
"""Settings that change how a run is scheduled or reported, not its result."""


def stage1_settings(cfg: SAETrainConfig, preset: str | None) -> SettingsReport:
    """`cfg` next to `--preset paper` (Appendix A), every difference marked."""
    return settings_report("train-saes", cfg, with_preset(SAETrainConfig, PRESETS, "paper"), preset, OPERATIONAL)


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated bytes for one group of layers, and the group size chosen."""

    per_layer_sae: int
    per_layer_buffer: int
    step: int
    group_size: int
    available: int | None
    seeds: int = 1
    """SAEs per layer (one per seed), all beside the layer's one buffer."""

    @property
    def total(self) -> int:
        """Bytes planned for one group: its SAEs and buffers, and one step's workspace (the model not counted)."""
        return self.group_size * (self.seeds * self.per_layer_sae + self.per_layer_buffer) + self.step

    def describe(self, n_layers: int) -> str:
        """One line for the log."""
        gib = 1024**3
        total = self.total
        avail = f" of {self.available / gib:.1f} GiB available" if self.available else ""
        seeds = f" x {self.seeds} seeds" if self.seeds > 1 else ""
        return (
            f"memory plan: {self.per_layer_sae / gib:.2f} GiB per SAE{seeds} (weights, grads, optimizer) + "
            f"{self.per_layer_buffer / gib:.2f} GiB activation buffer per layer + {self.step / gib:.2f} GiB per step; "
            f"{self.group_size} of {n_layers} layers per forward pass = {total / gib:.2f} GiB{avail}"
        )


def _available_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


MEMORY_HEADROOM = 0.8
"""Fraction of the free memory a group of layers may plan to use (the rest absorbs allocator slack)."""


def plan_memory(cfg: SAETrainConfig, d_in: int, n_layers: int, device: torch.device,
                available: int | None = None) -> MemoryPlan:
    """Estimate memory per layer and choose how many layers share one forward pass; `available` (bytes free)
    is measured on `device` unless given (a plan for a machine other than this one)."""
    d_sae = cfg.latents_for(d_in)
    params = 2 * d_sae * d_in + d_sae + d_in
    optimizer_copies = 2 if cfg.optimizer == "adam" else 1
    per_sae = 4 * params * (2 + optimizer_copies)  # weights + grads + optimizer state, float32
    per_buffer = 4 * d_in * (cfg.buffer_tokens + cfg.seq_batch * cfg.max_seq_len)
    step = 4 * cfg.batch_tokens * d_sae * 2  # pre-activations and their top-k workspace
    available = _available_memory(device) if available is None else available
    if cfg.group_size is not None:
        group = cfg.group_size
    elif available is None:
        group = n_layers
    else:
        per_layer = len(cfg.all_seeds) * per_sae + per_buffer
        group = max(1, min(n_layers, int((MEMORY_HEADROOM * available - step) // per_layer)))
    return MemoryPlan(per_sae, per_buffer, step, max(1, min(group, n_layers)), available, len(cfg.all_seeds))


def source_note(cfg: SAETrainConfig) -> str:
    """What a run with --from does with the pretrained SAEs, in one line."""
    hook = cfg.resolved_source_hook()
    return (f"--from {cfg.source}: the {hook} SAEs{' (--from-hook)' if hook != cfg.hook else ''}, "
            f"{'fine-tuned' if cfg.mode == 'finetune' else 'imported'} at {cfg.hook}; their size and k replace "
            "--latents/--k")


@dataclass(frozen=True)
class Stage1Plan:
    """A Stage I run as it will go, from the config and the model's config."""

    model: str
    architecture: str
    n_layers: int
    d_model: int
    device: str
    layers: list[int]
    hook_names: list[str]
    d_sae: int | None
    """Latents per SAE; None when they come from --from (known once the source is read)."""
    k: int | None
    sae_kind: str
    """Trainer and architecture: 'fused TopK' or 'SAELens <architecture>'."""
    tokens: int | None
    """Training tokens per SAE; None: one epoch over the dataset (counted when it is loaded)."""
    steps: int | None
    memory: MemoryPlan
    outputs: list[str]
    dataset: str
    packed: bool
    seq_len: int
    """Chunk length when packed, else the truncation length."""
    rank_of_layer: dict[int, int]
    """Layer -> the launcher rank that trains it (all 0 in one process)."""
    source: str | None = None
    """With --from: what is done with the pretrained SAEs, in words."""

    def format(self) -> str:
        """The plan, one fact per line."""
        ranks = len(set(self.rank_of_layer.values()))
        sparsity = f"k {self.k}" if self.k is not None else "sparsity by its penalty"
        width = "from --from" if self.d_sae is None else f"{self.d_sae:,} latents, {sparsity}"
        tokens = "one epoch over the dataset" if self.tokens is None else f"{self.tokens:,} tokens per SAE"
        steps = "" if self.steps is None else f", {self.steps:,} optimizer steps each"
        rows = (f"packed into chunks of {self.seq_len:,} tokens" if self.packed
                else f"one text per row, up to {self.seq_len:,} tokens")
        lines = [
            f"plan: {self.model} ({self.architecture}, {self.n_layers} decoder layers, d_model {self.d_model}) "
            f"on {self.device}",
            f"  {len(self.layers)} {self.sae_kind} SAE(s), {width}; {tokens}{steps}",
            f"  data: {self.dataset}, {rows}",
            f"  layers: {describe_layers(self.layers)}",
            f"  hooks: {self.hook_names[0]}" + (f" .. {self.hook_names[-1]}" if len(self.hook_names) > 1 else ""),
            f"  {self.memory.describe(most_per_rank(self.rank_of_layer))}{f' on each of {ranks} ranks' * (ranks > 1)}",
            "  outputs: " + ", ".join(self.outputs),
        ]
        if self.source:
            lines.append(f"  {self.source}")
        if ranks > 1:
            trains = [",".join(str(layer) for layer, rank in self.rank_of_layer.items() if rank == r)
                      for r in range(ranks)]
            lines.insert(-2, f"  {ranks} launcher ranks, each harvesting its slice of every batch; the SAEs of layers "
                         + "; ".join(f"{layers} on rank {r}" for r, layers in enumerate(trains)))
        return "\n".join(lines)


def plan_stage1(cfg: SAETrainConfig, run: str | Path) -> Stage1Plan:
    """The plan of `train_saes(cfg, run)`; raises the same one-line errors for bad layers or settings first."""
    cfg.check()
    shape = model_shape(cfg.model)
    n_layers, d_model = shape.n_layers, shape.d_model
    layers = parse_layers(cfg.layers, n_layers)
    shard = launcher_shard()
    owners = layer_owners(layers, shard)  # more ranks than layers is refused here, before any weights load
    device = resolve_device(cfg.device)
    if cfg.mode != "scratch":  # a --from without these SAEs is refused now, not after the model has loaded
        for layer in layers:
            find_source_sae(cfg.source, layer, cfg.resolved_source_hook())
    d_sae = None if cfg.mode != "scratch" else cfg.latents_for(d_model)
    steps = None if cfg.tokens is None or cfg.mode == "pretrained" else math.ceil(cfg.tokens / cfg.batch_tokens)
    run = Path(run)
    return Stage1Plan(
        model=cfg.model or EMBEDDED_ALIASES[0],
        architecture=shape.architecture,
        n_layers=n_layers,
        d_model=d_model,
        device=str(device),
        layers=layers,
        hook_names=[hook_name(cfg.hook, layer) for layer in layers],
        d_sae=d_sae,
        k=None if d_sae is None or cfg.architecture not in K_ARCHITECTURES else cfg.k,
        sae_kind="fused TopK" if cfg.trainer == "fused" else f"SAELens {cfg.architecture}",
        tokens=cfg.tokens,
        steps=steps,
        memory=plan_memory(cfg, d_model, most_per_rank(owners), torch.device(device)),
        rank_of_layer=owners,
        dataset=cfg.dataset,
        packed=cfg.pack,
        seq_len=cfg.max_seq_len,
        source=None if cfg.mode == "scratch" else source_note(cfg),
        outputs=[f"{run / SAES_DIR}/<hook name>/ (SAELens folders)", str(run / SAES_DIR / METRICS_FILE),
                 str(run / "manifest.json"), f"{run / SAES_DIR / CHECKPOINT}-N/ while it runs"],
    )
