"""Reasoning features that survive a change of SAE seed: latents matched across the seeds of a multi-seed run.

The matching rule is `STABILITY_RULE` (features.json records it). Why a decoder cosine of 0.7 by default
(`FeatureConfig.match_threshold`): decoder rows of unrelated latents are nearly orthogonal — in d dimensions the
cosine of two random directions has standard deviation 1/sqrt(d) (0.042 for d = 576), and the largest of 4,608
such cosines is about 0.17 — so 0.7 cannot be reached by chance, while the same feature learnt from a different
initialisation lands at 0.8-1.0. 0.7 is also the cut used for "shared" latents between SAEs of different seeds in
the literature (Paulo & Belrose 2025, "Sparse autoencoders trained on the same data learn different features").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from resa_interp.errors import ResaError

STABILITY_RULE = (
    "For each pair of seeds (r, s) of a layer, the reasoning features of r are matched one-to-one to *all* latents "
    "of s by decoder direction (Hungarian assignment, `scipy.optimize.linear_sum_assignment`, maximising the summed "
    "cosine similarity of the unit decoder rows); a pair counts only when its cosine is at least the threshold. Two "
    "reasoning features of different seeds are *linked* when each is the other's match (r -> s and s -> r agree), "
    "and linked features form groups (connected components over seeds). A group is *stable* when it holds a "
    "reasoning feature in at least `min_seeds` of the seeds."
)
"""The matching rule, as features.json records it (a constant string, so it survives `python -OO`)."""


@dataclass(frozen=True)
class Match:
    """One latent of seed `seed_a` and the latent of `seed_b` assigned to it."""

    seed_a: int
    feature_a: int
    seed_b: int
    feature_b: int
    cosine: float
    reasoning_b: bool
    """Whether `feature_b` is a reasoning feature of `seed_b`."""


@dataclass
class StableGroup:
    """Reasoning features of several seeds linked by mutual decoder matches."""

    ids: dict[int, list[int]]
    """Seed -> its reasoning feature ids in the group (one id per seed unless matches chain)."""
    stable: bool

    @property
    def n_seeds(self) -> int:
        """Seeds that have a reasoning feature in the group."""
        return sum(bool(v) for v in self.ids.values())


@dataclass
class LayerStability:
    """One layer of a multi-seed run: counts per seed, their spread, and the matching."""

    layer: int
    counts: dict[int, int]
    """Seed -> reasoning-feature count."""
    groups: list[StableGroup]
    matches: list[Match] = field(repr=False)
    """Every above-threshold match of a reasoning feature to another seed's latent."""

    @property
    def mean(self) -> float:
        """Mean count over seeds."""
        return float(np.mean(list(self.counts.values())))

    @property
    def std(self) -> float:
        """Sample standard deviation of the count over seeds (0 for one seed)."""
        values = list(self.counts.values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    @property
    def stable_count(self) -> int:
        """Stable groups at this layer."""
        return sum(g.stable for g in self.groups)


def default_min_seeds(n_seeds: int) -> int:
    """A majority of the seeds: 2 of 2 or 3, 3 of 4 or 5, ..."""
    return n_seeds // 2 + 1


def check_min_seeds(min_seeds: int | None, n_seeds: int) -> int:
    """`min_seeds` (None: a majority), refused in one line unless 1 <= M <= N."""
    m = default_min_seeds(n_seeds) if min_seeds is None else min_seeds
    if not 1 <= m <= n_seeds:
        raise ResaError(f"--min-seeds {m}: the run has {n_seeds} seed(s); accepted 1..{n_seeds}")
    return m


def match_latents(decoder_a: torch.Tensor, rows: list[int], decoder_b: torch.Tensor,
                  threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one matching of the latents `rows` of decoder A ([d_sae_a, d_in]) to the latents of decoder B
    (maximum total cosine similarity of decoder rows): (row, matched latent of B, cosine) for each pair whose
    cosine is at least `threshold`."""
    if not rows:
        return []
    a = torch.nn.functional.normalize(decoder_a[rows].double(), dim=-1)
    b = torch.nn.functional.normalize(decoder_b.double(), dim=-1)
    cosine = (a @ b.T).cpu().numpy()
    picked, assigned = linear_sum_assignment(cosine, maximize=True)
    return [(rows[i], int(j), float(cosine[i, j])) for i, j in zip(picked, assigned) if cosine[i, j] >= threshold]


def layer_stability(layer: int, decoders: dict[int, torch.Tensor], features: dict[int, list[int]],
                    threshold: float, min_seeds: int) -> LayerStability:
    """Match one layer's reasoning features across seeds: `decoders` and `features` map each seed to its decoder
    ([d_sae, d_in]) and its reasoning feature ids."""
    seeds = list(decoders)
    matches: list[Match] = []
    assigned: dict[tuple[int, int, int], int] = {}
    for r in seeds:
        for s in seeds:
            if r == s:
                continue
            reasoning_s = set(features[s])
            for i, j, cos in match_latents(decoders[r], features[r], decoders[s], threshold):
                matches.append(Match(r, i, s, j, round(cos, 6), j in reasoning_s))
                assigned[r, i, s] = j
    parent = {(s, i): (s, i) for s in seeds for i in features[s]}

    def root(node: tuple[int, int]) -> tuple[int, int]:
        while parent[node] != node:
            node = parent[node]
        return node

    for m in matches:
        if m.reasoning_b and assigned.get((m.seed_b, m.feature_b, m.seed_a)) == m.feature_a:
            parent[root((m.seed_a, m.feature_a))] = root((m.seed_b, m.feature_b))
    members: dict[tuple[int, int], dict[int, list[int]]] = {}
    for s in seeds:
        for i in features[s]:
            members.setdefault(root((s, i)), {t: [] for t in seeds})[s].append(i)
    groups = [StableGroup(ids, sum(bool(v) for v in ids.values()) >= min_seeds) for ids in members.values()]
    groups.sort(key=lambda g: (not g.stable, -g.n_seeds, [g.ids[s] or [1 << 62] for s in seeds]))
    return LayerStability(layer, {s: len(features[s]) for s in seeds}, groups, matches)
