"""Hookpoints: TransformerLens/SAELens hook names, and the HF modules whose outputs (or inputs) they name.

A hook is given by a short name (`resid_post`, `mlp_out`, ... as TransformerLens' `get_act_name` calls them) or
by any TransformerLens hook name pattern with the layer as `{l}` (`blocks.{l}.attn.hook_z`,
`blocks.{l}.mlp.hook_post`, ...). Its canonical form (`canonical_hook`) is the short name where one exists, else
the pattern; `hook_name` fills in the layer, `parse_hook_name` inverts it.

Where an HF module's output or input equals the hook's activation (`hf_point`) activations are read from the HF
model with forward hooks (the fast path); every other hook is read from the TransformerLens view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from resa_interp.errors import ResaError

HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}
"""Short names of the residual-stream and sublayer-output hooks (TransformerLens' `get_act_name` names)."""
Z_HOOK = "blocks.{l}.attn.hook_z"
"""Attention heads' mixed values before the output projection, flattened to [pos, n_heads * d_head]."""
SPLICE_HOOKS = ("resid_post", "resid_pre", "mlp_out", "attn_out", Z_HOOK)
"""Hooks at which an SAE can be spliced into the HF model (Stage II, spliced metrics, `features --spliced`)."""
NOT_PER_POSITION = ("attn.hook_pattern", "attn.hook_attn_scores")
"""Block hooks whose activations are not one vector per position ([batch, heads, query, key])."""
_SUFFIX = r"((?:[a-z][a-z0-9_]*\.)*hook_[a-z0-9_]+)"
_PATTERN = re.compile(r"blocks\.\{(?:l|layer)\}\." + _SUFFIX)
_NAME = re.compile(r"blocks\.(\d+)\." + _SUFFIX)


def _canonical_suffix(suffix: str) -> str:
    short = next((s for s, pattern in HOOKS.items() if pattern == f"blocks.{{layer}}.{suffix}"), None)
    return short or f"blocks.{{l}}.{suffix}"


def canonical_hook(hook: str, what: str = "--hook") -> str:
    """The canonical form of a hook given by short name or TransformerLens pattern (one-line error otherwise)."""
    if hook in HOOKS:
        return hook
    match = _PATTERN.fullmatch(hook)
    if not match:
        raise ResaError(f"{what} {hook!r} is not a hook; accepted: {', '.join(HOOKS)}, or a TransformerLens hook "
                        "name pattern with the layer as {l} (blocks.{l}.attn.hook_z, blocks.{l}.mlp.hook_post, ...)")
    if match.group(1) in NOT_PER_POSITION:
        raise ResaError(f"{what} {hook!r}: attention patterns are not one vector per position; accepted: "
                        f"{', '.join(HOOKS)} or another TransformerLens block hook")
    return _canonical_suffix(match.group(1))


def hook_name(hook: str, layer: int) -> str:
    """TransformerLens/SAELens hook name of `hook` (short name or pattern) at `layer`."""
    hook = canonical_hook(hook)
    return HOOKS[hook].format(layer=layer) if hook in HOOKS else hook.replace("{l}", str(layer))


def parse_hook_name(name: str) -> tuple[str, int]:
    """Inverse of `hook_name`: 'blocks.12.hook_resid_post' -> ('resid_post', 12), 'blocks.3.attn.hook_z' ->
    ('blocks.{l}.attn.hook_z', 3)."""
    match = _NAME.fullmatch(name)
    if not match:
        raise ResaError(f"hook name {name!r} is not of the form blocks.<layer>.<TransformerLens hook>")
    return canonical_hook(_canonical_suffix(match.group(2)), "hook name"), int(match.group(1))


def check_splice_hook(hook: str, what: str = "--hook") -> str:
    """The canonical hook, refused in one line unless an SAE can be spliced into the HF model there."""
    hook = canonical_hook(hook, what)
    if hook not in SPLICE_HOOKS:
        raise ResaError(f"{what} {hook!r}: SAEs are spliced into the HF model, which has no module for it; "
                        f"accepted: {', '.join(SPLICE_HOOKS)}")
    return hook


MLP_NAMES = ("mlp", "feed_forward", "ffn")
"""Names a decoder layer gives its MLP (or mixture of experts) across transformers' causal LMs."""
POST_MLP_NORMS = ("post_feedforward_layernorm", "post_mlp_layernorm")
"""Names of a norm applied to the MLP's output before it joins the residual stream (sandwich norms: Gemma 2/3,
OLMo 2); where a layer has one, `mlp_out` is its output, as in TransformerLens."""
ATTN_NAMES = ("self_attn", "attn", "attention")
"""Names a decoder layer gives its attention."""
ATTN_OUT_PROJ = ("o_proj", "c_proj", "dense", "out_proj")
"""Names an attention module gives its output projection (whose input is hook_z, heads flattened)."""
PRE_MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")
"""Names of the norm in front of the MLP, whose input is resid_mid (in a sandwich-norm layer
post_attention_layernorm normalises the attention output instead)."""
PARALLEL_FLAGS = ("use_parallel_residual", "parallel_attn")
"""Config flags of layers that run attention and MLP side by side (no resid_mid)."""


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


@dataclass(frozen=True)
class HFPoint:
    """Where an HF model computes a hook's activation: a module's output, or its first input."""

    module: nn.Module
    reads_input: bool = False
    """The activation is the module's input (a forward pre-hook reads it), not its output."""


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    return next((getattr(module, n) for n in names if isinstance(getattr(module, n, None), nn.Module)), None)


def hf_point(model: nn.Module, hook: str, layer: int) -> HFPoint | None:
    """The HF module whose output (or input) equals TransformerLens' `hook` at `layer`, None where there is none
    (the hook is then read from the TransformerLens view):
    resid_post: the decoder layer's output; resid_pre: its input; mlp_out: what the MLP branch adds to the
    residual stream (the norm after the MLP where there is one, else the MLP); attn_out: likewise for attention
    (in a sandwich-norm layer post_attention_layernorm's output); resid_mid: the input of the norm in front of
    the MLP (of the MLP itself in OLMo 2's post-norm layers; none where attention and MLP run in parallel);
    hook_z: the input of the attention's output projection."""
    hook = canonical_hook(hook)
    block = decoder_layers(model)[layer]
    sandwich = _child(block, POST_MLP_NORMS) is not None
    attention = _child(block, ATTN_NAMES)
    if hook in ("resid_post", "resid_pre"):
        return HFPoint(block, reads_input=hook == "resid_pre")
    if hook == "mlp_out":
        found = _child(block, (*POST_MLP_NORMS, *MLP_NAMES))
    elif hook == "attn_out":
        found = block.post_attention_layernorm if sandwich else attention
    elif hook == "resid_mid":
        config = model.config.get_text_config()
        if any(getattr(config, flag, False) for flag in PARALLEL_FLAGS):
            return None
        names = PRE_MLP_NORMS[:1] + MLP_NAMES if sandwich else PRE_MLP_NORMS[1:]
        found = _child(block, names)
        return HFPoint(found, reads_input=True) if found is not None else None
    elif hook == Z_HOOK and attention is not None:
        found = _child(attention, ATTN_OUT_PROJ)
        return HFPoint(found, reads_input=True) if found is not None else None
    else:
        return None
    return HFPoint(found) if found is not None else None


def splice_point(model: nn.Module, hook: str, layer: int) -> HFPoint:
    """The HF module an SAE at `hook`/`layer` is spliced into (one-line error where there is none)."""
    point = hf_point(model, check_splice_hook(hook), layer)
    if point is None:
        raise ResaError(f"hook {hook!r}: {type(decoder_layers(model)[layer]).__name__} has no module for it; "
                        "accepted for this model: resid_post, resid_pre")
    return point
