"""Splice SAE reconstructions into an HF model: the one mechanism behind spliced-in quality metrics,
`features --spliced` and Stage II tuning.

Each SAE replaces the output of the HF module at its hookpoint (decoder layer for resid_post, its MLP for
mlp_out) with `sae(x)`. The first `keep_first` positions keep their clean activation: SAEs are trained with
the first (sink) position excluded, so reconstructing it would splice in something the SAE never learned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from resa_interp.model.hooks import hook_module

if TYPE_CHECKING:
    from sae_lens import SAE


def _replace(sae: SAE, keep_first: int):
    def hook(_module: nn.Module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        recon = sae(hidden.to(sae.dtype)).to(hidden.dtype)
        if keep_first:
            recon = torch.cat([hidden[:, :keep_first], recon[:, keep_first:]], dim=1)
        return (recon, *output[1:]) if isinstance(output, tuple) else recon

    return hook


@contextlib.contextmanager
def spliced(model: nn.Module, saes: Mapping[tuple[str, int], SAE], keep_first: int = 1) -> Iterator[None]:
    """Within the block, `model` runs with each SAE (keyed by (hook, layer)) spliced in at its hookpoint."""
    handles = [
        hook_module(model, hook, layer).register_forward_hook(_replace(sae, keep_first))
        for (hook, layer), sae in saes.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
