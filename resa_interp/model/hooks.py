"""Hookpoints: TransformerLens/SAELens hook names and the HF modules whose outputs they name."""

from __future__ import annotations

import re

from torch import nn

from resa_interp.errors import ResaError, check_choice

HOOKS = {"resid_post": "blocks.{layer}.hook_resid_post", "mlp_out": "blocks.{layer}.hook_mlp_out"}


def hook_name(hook: str, layer: int) -> str:
    """TransformerLens/SAELens hook name for `hook` ('resid_post' or 'mlp_out') at `layer`."""
    check_choice("hook", hook, HOOKS, "is not supported")
    return HOOKS[hook].format(layer=layer)


def parse_hook_name(name: str) -> tuple[str, int]:
    """Inverse of `hook_name`: 'blocks.12.hook_resid_post' -> ('resid_post', 12)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_post|mlp_out)", name)
    if not match:
        raise ResaError(f"hook name {name!r} is not of the form blocks.<layer>.hook_resid_post|hook_mlp_out")
    return match.group(2), int(match.group(1))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of an HF causal LM, also when wrapped by peft or DDP."""
    n_layers = model.config.num_hidden_layers if hasattr(model, "config") else None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "h") and len(module) == n_layers:
            return module
    raise ResaError(f"could not find the decoder layers of {type(model).__name__}")


def hook_module(model: nn.Module, hook: str, layer: int) -> nn.Module:
    """The HF module whose output equals TransformerLens' `hook` at `layer` (decoder layer or its MLP)."""
    check_choice("hook", hook, HOOKS, "is not supported")
    block = decoder_layers(model)[layer]
    return block if hook == "resid_post" else block.mlp

