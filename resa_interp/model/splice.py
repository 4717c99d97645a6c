"""Splice SAE reconstructions into an HF model: the one mechanism behind spliced-in quality metrics,
`features --spliced` and Stage II tuning.

Each SAE replaces the activation at its hookpoint (`hooks.splice_point`: the output of the decoder layer for
resid_post, of the MLP branch for mlp_out, of the attention branch for attn_out; the input of the decoder layer
for resid_pre, of the attention's output projection for hook_z) with `sae(x)`. The first `keep_first` positions
keep their clean activation: SAEs are trained with the first (sink) position excluded, so reconstructing it
would splice in something the SAE never learned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from resa_interp.model.hooks import HFPoint, splice_point

if TYPE_CHECKING:
    from sae_lens import SAE


def rewrite_at(point: HFPoint, fn: Callable[[Tensor], Tensor], prepend: bool = False) -> RemovableHandle:
    """Hook `point` so that its activation (the module's output, or its first input) becomes `fn(activation)`."""
    if point.reads_input:
        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        return point.module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=prepend)

    def hook(_module: nn.Module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    return point.module.register_forward_hook(hook, prepend=prepend)


def _replace(sae: SAE, keep_first: int) -> Callable[[Tensor], Tensor]:
    def replace(hidden: Tensor) -> Tensor:
        recon = sae(hidden.to(sae.dtype)).to(hidden.dtype)
        if keep_first:
            recon = torch.cat([hidden[:, :keep_first], recon[:, keep_first:]], dim=1)
        return recon

    return replace


@contextlib.contextmanager
def spliced(model: nn.Module, saes: Mapping[tuple[str, int], SAE], keep_first: int = 1) -> Iterator[None]:
    """Within the block, `model` runs with each SAE (keyed by (hook, layer)) spliced in at its hookpoint."""
    handles = [rewrite_at(splice_point(model, hook, layer), _replace(sae, keep_first))
               for (hook, layer), sae in saes.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
