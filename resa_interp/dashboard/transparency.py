"""What moved inside a tuned model: one SAE read at its hookpoint in several models on the same texts, and per
latent how closely each model's activation pattern follows the reference model's (the SAE's own).

A transfer experiment's question: after SAE-Tuning with the source's SAE, do the source's reasoning features fire
in the tuned model where they fire in the source? Each model's activations at the SAE's hookpoint are encoded by
the same SAE over the same held-out trigger texts (their shared prefix, the R1 system prompt with the markers,
counted once; position 0, the attention sink the SAE never trained on, left out); the agreement of a latent is the
Pearson correlation of its activations over those positions with the reference's. A latent that is silent in a
model (constant over the positions) has no correlation there: NaN, counted as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from resa_interp.dashboard.harvest import Corpus, harvest_latents
from resa_interp.model import Subject, encode_texts, parse_hook_name, shared_prefix_length

if TYPE_CHECKING:
    from sae_lens import SAE


def pearson_columns(reference: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """Pearson correlation of each column of `other` [rows, n] with the same column of `reference`; NaN where
    either column is constant."""
    a = reference.double() - reference.double().mean(0)
    b = other.double() - other.double().mean(0)
    denominator = a.norm(dim=0) * b.norm(dim=0)
    r = (a * b).sum(0) / denominator
    r[denominator == 0] = float("nan")
    return r.numpy()


@torch.inference_mode()
def latent_patterns(subject: Subject, sae: SAE, latents: list[int], texts: list[str], batch_size: int = 16
                    ) -> torch.Tensor:
    """Activations [positions, latents] of `sae`'s `latents` on `subject`'s activations at the SAE's hookpoint,
    over `texts` (their shared prefix once, position 0 left out)."""
    hook, layer = parse_hook_name(sae.cfg.metadata.hook_name)
    encoded = encode_texts(subject.tokenizer, texts)
    corpus = Corpus(encoded, shared_prefix_length(encoded), [set() for _ in encoded])
    values = harvest_latents(subject, {layer: sae}, {layer: latents}, hook, corpus, batch_size, progress=False)
    _, position, _ = corpus.index()
    return values[layer].values[torch.from_numpy(position > 0)]


@dataclass(frozen=True)
class Agreement:
    """Per latent, each model's correlation with the reference (NaN: silent in one of them)."""

    latents: list[int]
    correlation: dict[str, list[float]]

    def summary(self) -> dict[str, dict[str, float | int]]:
        """Per model: mean and median over the latents with a correlation, how many had one, and the share >= 0.7."""
        out = {}
        for name, values in self.correlation.items():
            r = np.array(values, dtype=float)
            have = r[np.isfinite(r)]
            out[name] = {
                "mean": float(have.mean()) if have.size else float("nan"),
                "median": float(np.median(have)) if have.size else float("nan"),
                "n": int(have.size),
                "share_at_least_0.7": float((have >= 0.7).mean()) if have.size else float("nan"),
            }
        return out


def agreement(reference: torch.Tensor, others: dict[str, torch.Tensor], latents: list[int]) -> Agreement:
    """Each of `others`' patterns [positions, latents] against `reference`'s, column by column."""
    return Agreement(latents, {name: pearson_columns(reference, p).tolist() for name, p in others.items()})
