"""The uncertainty of the fits: bootstrap resampling (features, SAE seeds, or layers), percentile intervals, the
seed-versus-feature variance split of a multi-seed run, and the permutation test of how closely the score mixture
follows the count mixture."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from resa_interp.layers.config import LayerConfig
from resa_interp.layers.fits import MixtureFit, fit_batch
from resa_interp.layers.inputs import LayerData
from resa_interp.layers.mixture import Mixture, hellinger


@dataclass(frozen=True)
class MatchedPair:
    """A count component and the score component assigned to it."""

    counts_component: int
    scores_component: int
    abs_mean_diff: float
    abs_weight_diff: float


@dataclass(frozen=True)
class Alignment:
    """How closely the score mixture follows the count mixture."""

    pairs: list[MatchedPair]
    """Optimal one-to-one assignment minimising Σ W2 between matched component Gaussians."""
    weight_l1: float
    """Σ |w_counts - w_scores| over matched pairs."""
    entropy_difference: float
    """entropy(scores) - entropy(counts), nats."""
    weight_entropy_difference: float
    hellinger: float
    """Hellinger distance between the two mixture densities (0 identical, 1 disjoint)."""
    statistic: float | None
    """The distance the test uses: the observed scores refitted exactly as the shuffles are (the same starts)."""
    p_value: float | None
    """P(distance ≤ statistic) with scores shuffled over layers, (1 + #{null ≤ statistic}) / (1 + permutations)."""
    null: np.ndarray = field(repr=False)
    """Distances of the shuffled-score fits."""


def resample(data: LayerData, n: int, rng: np.random.Generator, seeds: bool = True) -> np.ndarray:
    """Bootstrap weight vectors: features resampled for counts (from a seed drawn at random for each replicate
    when the counts have several seeds and `seeds`), layers resampled for scores."""
    if data.kind == "counts" and seeds and data.seed_values is not None:
        rows = data.seed_values[rng.integers(len(data.seed_values), size=n)]
        rows = rows[rows.sum(1) > 0]  # a seed with no feature at all has no distribution to draw from
        return np.stack([rng.multinomial(int(row.sum()), row / row.sum()) for row in rows]).astype(float)
    if data.kind == "counts":
        return rng.multinomial(int(data.values.sum()), data.weights / data.weights.sum(), size=n).astype(float)
    draws = rng.multinomial(len(data.layers), np.full(len(data.layers), 1.0 / len(data.layers)), size=n)
    weights = draws * data.weights
    return weights[weights.sum(1) > 0]  # a replicate that drew only zero-weight layers has no distribution


PARAMETERS = ("mean", "std", "weight")


def _variance(values: list[float]) -> float:
    """Population variance as the mean squared pairwise difference / 2: exactly 0 for equal values."""
    x = np.asarray(values, dtype=float)
    return float(((x[:, None] - x[None, :]) ** 2).mean() / 2)


def seed_feature_variance(data: LayerData, config: LayerConfig, rng: np.random.Generator, fit_seed: int,
                   start: Mixture) -> list[dict[str, dict[str, float]]]:
    """Per component and parameter: variance over the seeds' own fits, over a features-only bootstrap of the
    first seed, and the seed share (see `MixtureFit.seed_variance`)."""
    seeds = data.seed_values[data.seed_values.sum(1) > 0]
    distinct, which = np.unique(seeds, axis=0, return_inverse=True)  # seeds with equal counts get the same fit
    fits = fit_batch(data, distinct.astype(float), config.components, config, fit_seed, start=start).mixtures
    by_seed = [fits[i] for i in np.ravel(which)]
    rows = resample(data, config.bootstrap, rng, seeds=False)
    by_feature = fit_batch(data, rows, config.components, config, fit_seed, start=start).mixtures
    out = []
    for i in range(config.components):
        row = {}
        for name in PARAMETERS:
            seed_var = _variance([getattr(m, f"{name}s")[i] for m in by_seed])
            feature_var = _variance([getattr(m, f"{name}s")[i] for m in by_feature])
            total = seed_var + feature_var
            row[name] = {"seed": seed_var, "features": feature_var, "seed_share": seed_var / total if total else 0.0}
        out.append(row)
    return out


def percentile_ci(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def align(
    counts: MixtureFit, scores: MixtureFit, config: LayerConfig, perm_seed: int, fit_seed: int, progress
) -> Alignment:
    a, b = counts.mixture, scores.mixture
    cost = np.sqrt((a.means[:, None] - b.means[None, :]) ** 2 + (a.stds[:, None] - b.stds[None, :]) ** 2)
    rows, cols = linear_sum_assignment(cost)
    pairs = [
        MatchedPair(int(i), int(j), float(abs(a.means[i] - b.means[j])), float(abs(a.weights[i] - b.weights[j])))
        for i, j in zip(rows, cols)
    ]
    observed = hellinger(a, b)
    null, statistic = np.array([]), None
    if config.permutations:
        rng = np.random.default_rng(perm_seed)
        rows = [scores.data.weights] + [rng.permutation(scores.data.weights) for _ in range(config.permutations)]
        fits = fit_batch(scores.data, np.stack(rows), config.components, config, fit_seed, progress).mixtures
        statistic, null = hellinger(a, fits[0]), np.array([hellinger(a, m) for m in fits[1:]])
    return Alignment(
        pairs=pairs,
        weight_l1=sum(p.abs_weight_diff for p in pairs),
        entropy_difference=scores.entropy - counts.entropy,
        weight_entropy_difference=scores.weight_entropy - counts.weight_entropy,
        hellinger=observed,
        statistic=statistic,
        p_value=float((1 + (null <= statistic).sum()) / (1 + null.size)) if null.size else None,
        null=null,
    )
