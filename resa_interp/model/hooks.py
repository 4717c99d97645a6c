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


MLP_NAMES = ("mlp", "feed_forward", "ffn")
"""Names a decoder layer gives its MLP (or mixture of experts) across transformers' causal LMs."""
POST_MLP_NORMS = ("post_feedforward_layernorm", "post_mlp_layernorm")
"""Names of a norm applied to the MLP's output before it joins the residual stream (sandwich norms: Gemma 2/3,
OLMo 2); where a layer has one, `mlp_out` is its output, as in TransformerLens."""


def n_layers_of(model: nn.Module) -> int | None:
    """Number of decoder layers from the (text) config of an HF model, also when wrapped by peft or DDP."""
    config = getattr(model, "config", None)
    return getattr(config.get_text_config(), "num_hidden_layers", None) if config is not None else None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of an HF causal LM: the first module list as long as the config's layer count
    (`model.layers`, `transformer.h`, `gpt_neox.layers`, ...), also when wrapped by peft or DDP."""
    n_layers = n_layers_of(model)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ResaError(f"could not find the decoder layers of {type(model).__name__}: no module list of {n_layers} layers")


def hook_module(model: nn.Module, hook: str, layer: int) -> nn.Module:
    """The HF module whose output equals TransformerLens' `hook` at `layer`: the decoder layer (resid_post), or
    what the MLP branch adds to the residual stream (mlp_out: the MLP, or the norm after it where there is one)."""
    check_choice("hook", hook, HOOKS, "is not supported")
    block = decoder_layers(model)[layer]
    if hook == "resid_post":
        return block
    for name in (*POST_MLP_NORMS, *MLP_NAMES):
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    raise ResaError(
        f"hook mlp_out: decoder layer {type(block).__name__} has no MLP named {', '.join(MLP_NAMES)}; "
        "use resid_post for this model"
    )
