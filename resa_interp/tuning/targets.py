"""What a run adapts and where the SAE goes: the SAE folder and its hookpoint (checked against its metadata), and
the LoRA target modules as a given model names them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from resa_interp.errors import ResaError
from resa_interp.model import MLP_NAMES, check_splice_hook, decoder_layers, parse_hook_name
from resa_interp.sae import sae_dir
from resa_interp.tuning.config import LORA_TARGETS, TuneConfig

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
"""Names a decoder layer gives its attention across transformers' causal LMs."""


def model_lora_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    """`targets` where the model has modules of those names; a named set (`LORA_TARGETS`) on a model that names
    its projections otherwise (GPT-2's c_attn, GPT-NeoX's query_key_value) becomes the linear layers of its
    decoder layers' attention (and, for 'attn+mlp', MLP), as paths relative to the layer."""
    from transformers.pytorch_utils import Conv1D

    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if set(targets) & leaves or targets not in LORA_TARGETS.values():
        return targets
    parts = ATTENTION_NAMES + (MLP_NAMES if targets == LORA_TARGETS["attn+mlp"] else ())
    block = decoder_layers(model)[0]
    found = tuple(
        f"{part}.{name}"
        for part in parts
        if isinstance(getattr(block, part, None), torch.nn.Module)
        for name, module in getattr(block, part).named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))
    )
    return found or targets


@dataclass(frozen=True)
class SAEChoice:
    """The SAE a run splices in, where it goes, and what its metadata says about its origin."""

    path: Path
    hook: str
    layer: int
    source_model: str | None
    """The model the SAE was trained on (SAELens metadata `model_name`), if recorded."""


def resolve_sae(config: TuneConfig) -> SAEChoice:
    """Find the SAE folder from `sae` or `saes_run` + `layer`, and its hookpoint (checked against metadata)."""
    if config.sae is not None and config.saes_run is not None:
        raise ResaError("give either an SAE folder (--sae) or a Stage I run (--saes with --layer), not both")
    if config.sae is not None:
        path = Path(config.sae)
        cfg_file = path / "cfg.json"
        if not cfg_file.is_file():
            raise ResaError(f"SAE {str(path)!r}: no cfg.json there, so it is not an SAELens SAE folder")
        recorded = (json.loads(cfg_file.read_text()).get("metadata") or {}).get("hook_name")
        if recorded:
            hook, layer = parse_hook_name(recorded)
        elif config.layer is None:
            raise ResaError(f"SAE {str(path)!r} records no hook_name in its metadata; pass --layer (and --hook)")
        else:
            hook, layer = config.hook, config.layer
        return SAEChoice(path, check_splice_hook(hook), config.layer if config.layer is not None else layer, None)
    if config.saes_run is None:
        raise ResaError("no SAE given: pass --sae SAE_DIR, or --saes RUN with --layer L, or --no-sae for plain SFT")
    if config.layer is None:
        raise ResaError("--saes RUN needs --layer L (which of the run's SAEs to splice in)")
    hook = check_splice_hook(config.hook)
    return SAEChoice(sae_dir(config.saes_run, hook, config.layer), hook, config.layer, None)
