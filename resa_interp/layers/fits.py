"""One mixture fitted to one kind of layer data: the EM call every fit and refit goes through, the fit's result
types, and the scikit-learn GaussianMixture cross-check of a continuous-likelihood fit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resa_interp.layers.config import LayerConfig
from resa_interp.layers.inputs import LayerData
from resa_interp.layers.mixture import BatchFit, Mixture, fit_weighted


@dataclass(frozen=True)
class ComponentFit:
    """One mixture component with 95% bootstrap percentile intervals."""

    mean: float
    std: float
    weight: float
    mean_ci: tuple[float, float] | None
    std_ci: tuple[float, float] | None
    weight_ci: tuple[float, float] | None


@dataclass(frozen=True)
class MixtureFit:
    """A fitted mixture over layers with its uncertainty and model-size check."""

    data: LayerData
    mixture: Mixture
    components: list[ComponentFit]
    mean_loglik: float
    """Mean log-likelihood per unit of mass (per feature for counts)."""
    entropy: float
    entropy_ci: tuple[float, float] | None
    entropy_bootstrap_bias: float | None
    """Mean of the replicates' entropies minus `entropy`: resampled data are more concentrated, so it is < 0."""
    weight_entropy: float
    weight_entropy_ci: tuple[float, float] | None
    bic: dict[int, float]
    """BIC = -2 n mean_loglik + (3K - 1) ln n for each K fitted (K ≤ layers with mass); for scores a
    pseudo-likelihood BIC (a score profile is not a count distribution)."""
    replicates: list[Mixture] = field(repr=False)
    """The bootstrap fits (components sorted by mean)."""
    seed_variance: list[dict[str, dict[str, float]]] | None
    """Counts of a multi-seed run: per component and parameter (mean, std, weight), the variance over the seeds'
    own fits (`seed`), over a features-only bootstrap of the first seed (`features`), and the seed share
    seed / (seed + features): how much of the uncertainty comes from SAE training. None: one seed."""
    sklearn_check: dict[str, Any] | None
    """Continuous likelihood: scikit-learn GaussianMixture on the data expanded into observations, against this
    fit (same objective). None for the binned likelihood, which GaussianMixture does not have."""

    @property
    def bic_best(self) -> int:
        """The number of components with the lowest BIC."""
        return min(self.bic, key=self.bic.get)


def fit_batch(
    data: LayerData, weights: np.ndarray, k: int, config: LayerConfig, seed: int, progress=None, start=None
) -> BatchFit:
    """Fit the data's own weights with `restarts` starts, resampled weight rows with `resample_restarts`."""
    return fit_weighted(
        data.layers,
        weights,
        k,
        restarts=config.restarts if np.ndim(weights) == 1 else config.resample_restarts,
        seed=int(seed),
        likelihood=config.likelihood,
        reg_covar=config.reg_covar,
        min_std=config.min_std,
        tol=config.tol,
        start=start,
        progress=progress,
    )


SKLEARN_CHECK_OBSERVATIONS = 1000
"""Score weights are expanded into this many observations (largest remainder) for the scikit-learn check."""
SKLEARN_CHECK_INITS = 5
"""GaussianMixture n_init in the check (k-means++ starts)."""
SKLEARN_CHECK_SLACK = 1e-3
"""The check passes when this EM's mean log-likelihood is at most this much below GaussianMixture's."""


def expand(layers: np.ndarray, weights: np.ndarray, total: int) -> np.ndarray:
    """Layer observations in proportion to `weights`: `total` of them, rounded by largest remainder."""
    share = weights / weights.sum() * total
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return np.repeat(layers, counts).astype(float)


def sklearn_check(data: LayerData, mixture: Mixture, config: LayerConfig, seed: int) -> dict[str, Any]:
    """Fit scikit-learn's GaussianMixture to the data as observations and compare likelihoods with this fit."""
    from sklearn.mixture import GaussianMixture

    if data.kind == "counts":
        x, how = np.repeat(data.layers, data.values.astype(int)).astype(float), "one per feature"
    else:
        x = expand(data.layers, data.weights, SKLEARN_CHECK_OBSERVATIONS)
        how = f"{SKLEARN_CHECK_OBSERVATIONS} observations in proportion to the weights (largest remainder)"
    gm = GaussianMixture(
        config.components,
        n_init=SKLEARN_CHECK_INITS,
        init_params="k-means++",
        reg_covar=config.reg_covar,
        tol=1e-6,
        max_iter=1000,
        random_state=seed,
    ).fit(x[:, None])
    order = np.argsort(gm.means_.ravel())
    sk, em = float(gm.score(x[:, None])), float(np.log(mixture.pdf(x)).mean())
    return {
        "observations": how,
        "sklearn_mean_loglik": sk,
        "em_mean_loglik": em,
        "em_at_least_as_good": em >= sk - SKLEARN_CHECK_SLACK,
        "sklearn_means": gm.means_.ravel()[order].tolist(),
        "sklearn_weights": gm.weights_[order].tolist(),
    }
