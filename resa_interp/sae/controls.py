"""Control SAEs for SAE-Tuning: the same bottleneck without the trained dictionary's meaning.

`permuted_decoder` keeps an SAE's encoder (which latents fire, and how strongly, on every token: the same
sparsity, the same activation statistics) and its decoder's set of rows, but gives every latent another latent's
decoder row. Spliced into a model it is a bottleneck of the same shape, sparsity and output norms whose
reconstruction no longer says what the input was: what SAE-Tuning learns through it is what any such bottleneck
teaches, not the source's features.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resa_interp.runs import atomic_dir, atomic_write_json
from resa_interp.sae.folders import load_sae

if TYPE_CHECKING:
    from sae_lens import SAE

CONTROL_FILE = "control.json"
"""What a control folder was made from (beside the SAELens files)."""


def decoder_permutation(d_sae: int, seed: int) -> torch.Tensor:
    """A seeded permutation of the latents that moves every one of them (a derangement, for d_sae > 1)."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(d_sae, generator=generator)
    fixed = perm == torch.arange(d_sae)
    if d_sae > 1 and fixed.any():  # rotate the fixed points among themselves, or swap a lone one with its neighbour
        points = fixed.nonzero().flatten()
        if len(points) > 1:
            perm[points] = perm[points.roll(1)]
        else:
            p, q = int(points[0]), (int(points[0]) + 1) % d_sae
            perm[p], perm[q] = perm[q].clone(), perm[p].clone()
    return perm


@torch.no_grad()
def permuted_decoder(sae: SAE, seed: int = 0) -> SAE:
    """`sae` with latent i decoding through row perm[i] of its decoder (`decoder_permutation`), in place."""
    perm = decoder_permutation(sae.cfg.d_sae, seed)
    sae.W_dec.copy_(sae.W_dec[perm].clone())
    return sae


def write_permuted_control(source: str | Path, out: str | Path, seed: int = 0) -> Path:
    """The SAELens folder `out`: the SAE folder `source` with its decoder rows permuted (`permuted_decoder`)."""
    from sae_lens.constants import SPARSITY_FILENAME

    sae = permuted_decoder(load_sae(source), seed)
    source, out = Path(source), Path(out)
    with atomic_dir(out) as tmp:
        sae.save_model(tmp)
        if (source / SPARSITY_FILENAME).exists():  # which latents fire is unchanged: the firing record stays true
            (tmp / SPARSITY_FILENAME).write_bytes((source / SPARSITY_FILENAME).read_bytes())
        atomic_write_json(tmp / CONTROL_FILE, {"kind": "permuted_decoder", "source": str(source), "seed": seed})
    return out

