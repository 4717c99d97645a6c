"""Layer alignment (paper section 5): Gaussian mixtures over layer index fitted to reasoning-feature counts and
to per-layer reasoning scores, with the uncertainty the paper does not report, and a hookpoint recommendation.

Counts are a distribution over layer index with one observation per feature at its layer. Scores become
non-negative per-layer weights by a chosen transform. Both are fitted by the weighted EM of
`resa_interp.layers.mixture`: by default with the binned likelihood (each layer gets the mass its unit-width bin
receives, the exact likelihood of integer-valued data); `likelihood="continuous"` is scikit-learn
GaussianMixture's objective on the expanded observations, and such fits are cross-checked against
GaussianMixture itself. Layers are sorted on reading, so row order never matters, and every random draw comes
from `LayerConfig.seed`.
"""

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from resa_interp.errors import ResaError
from resa_interp.layers.config import SCORE_TRANSFORMS, LayerConfig, fit_settings
from resa_interp.layers.fits import ComponentFit, MixtureFit, fit_batch, sklearn_check
from resa_interp.layers.inputs import LayerData
from resa_interp.layers.mixture import LIKELIHOODS, Mixture
from resa_interp.layers.statistics import Alignment, align, percentile_ci, resample, seed_feature_variance
from resa_interp.numbering import NUMBERING, paper_label

ENTROPY_DEFINITION = (
    "entropy: differential entropy -∫ f(x) log f(x) dx of the fitted mixture density over the layer axis, in nats "
    "(numerical integration); weight_entropy: Shannon entropy -Σ_k w_k log w_k of the mixing weights, in nats"
)
DEFAULTS = LayerConfig()
"""`analyze_layers`' config when none is given."""


@dataclass(frozen=True)
class Recommendation:
    """The chosen hookpoints and the rule that chose them."""

    layers: list[int]
    rule: str
    details: list[dict[str, Any]]
    """Per recommended layer: rank, hook index, the paper's label, and the fitted masses there."""
    note: str | None


@dataclass(frozen=True)
class LayerAnalysis:
    """Everything select-layers computes."""

    config: LayerConfig
    counts: MixtureFit
    scores: MixtureFit | None
    alignment: Alignment | None
    recommendation: Recommendation

    def to_dict(self) -> dict[str, Any]:
        """The JSON written as layers.json (floats rounded to 6 decimals)."""
        cfg = self.config
        method = {
            "fit": (
                "weighted EM for a 1-D Gaussian mixture over layer index "
                "(resa_interp.layers.mixture, SQUAREM-accelerated), "
                f"{cfg.restarts} k-means++ starts for fits to the data and {cfg.resample_restarts} for each "
                f"bootstrap/permutation refit, seed {cfg.seed}, tol {cfg.tol}; "
                + (
                    "binned likelihood: layer l has probability Σ_k π_k m_k(l) / M_k, "
                    "m_k(l) = Φ((l+½-μ_k)/σ_k) - Φ((l-½-μ_k)/σ_k), M_k = Σ_{observed l} m_k(l) (each component "
                    "truncated to the observed layers; grouped and truncated-data EM, McLachlan & Jones 1988), "
                    f"{cfg.min_std:g} <= σ_k <= span of the layers, μ_k within them"
                    if cfg.likelihood == "binned"
                    else f"continuous likelihood: scikit-learn GaussianMixture's objective on the expanded "
                    f"observations, reg_covar {cfg.reg_covar:.6g} added to every variance"
                )
            ),
            "counts": "one observation per reasoning feature at its layer",
            "scores": f"score_transform {cfg.score_transform}: {SCORE_TRANSFORMS[cfg.score_transform]}",
            "entropy": ENTROPY_DEFINITION,
            "bic": (
                "-2 n mean_loglik + (3K-1) ln n; n = features for counts, layers for scores. The scores' BIC is "
                "built on a pseudo-likelihood: their transformed profile is fitted as if it were a distribution of "
                "counts over layers, which it is not, so it is a heuristic for K, not a model comparison"
            ),
            "layers": NUMBERING,
            "bootstrap": (
                f"{cfg.bootstrap} replicates; counts resample features (multinomial over layers) — on a multi-seed "
                "run each replicate first draws one SAE seed at random, then that seed's features, so the "
                "intervals include SAE-training variation; scores resample "
                "layers with replacement; components sorted by mean in every replicate; 95% percentile intervals. "
                "Resampled data are more concentrated than the data, so replicate entropies are biased low "
                "(entropy_bootstrap_bias) and their interval can miss the estimate; the distance between the two "
                "mixtures gets no bootstrap interval (noise in both fits inflates it): its inference is the "
                "permutation p-value"
            ),
            "seed_variance": (
                "multi-seed counts: per parameter, the variance of the fits to each seed's own counts (seed-only "
                "resampling: SAE training), the variance of a features-only bootstrap of the first seed (feature "
                "sampling), and seed share = seed / (seed + features)"
            ),
            "alignment": (
                "components matched by linear_sum_assignment on the 2-Wasserstein distance between component "
                "Gaussians; distance: Hellinger between the two mixture densities"
            ),
            "p_value": (
                f"{cfg.permutations} permutations of the scores over layers, score mixture refitted each time; "
                "the statistic is the distance of the observed scores refitted the same way (same starts); "
                "p = (1 + #{null distance <= statistic}) / (1 + permutations): small means aligned beyond chance"
            ),
        }
        return _rounded(
            {
                "inputs": {
                    "counts": self.counts.data.source,
                    "scores": self.scores.data.source if self.scores else None,
                    "layers": self.counts.data.layers.tolist(),
                    "features": int(self.counts.data.values.sum()),
                },
                "config": fit_settings(cfg),
                "method": method,
                "counts": _fit_dict(self.counts),
                "scores": _fit_dict(self.scores) if self.scores else None,
                "alignment": _alignment_dict(self.alignment) if self.alignment else None,
                "recommended_layers": asdict(self.recommendation),
                "per_layer": self.per_layer(),
            }
        )

    def per_layer(self) -> list[dict[str, float]]:
        """Per layer: the input, its share of the total, and the mass each fitted mixture puts on the layer."""
        counts = self.counts.data
        count_mass = self.counts.mixture.bin_probs(counts.layers)
        score_mass = self.scores.mixture.bin_probs(counts.layers) if self.scores is not None else None
        rows = []
        for i, layer in enumerate(counts.layers):
            row = {
                "layer": int(layer),
                "paper_label": paper_label(int(layer)),
                "count": int(counts.values[i]),
                "count_share": float(counts.weights[i] / counts.weights.sum()),
                "count_fitted": float(count_mass[i]),
            }
            if self.scores is not None:
                row["score"] = float(self.scores.data.values[i])
                row["score_share"] = float(self.scores.data.weights[i] / self.scores.data.weights.sum())
                row["score_fitted"] = float(score_mass[i])
            rows.append(row)
        return rows


def analyze_layers(counts: LayerData, scores: LayerData | None, config: LayerConfig = DEFAULTS) -> LayerAnalysis:
    """Fit, resample and compare the mixtures; recommend hookpoints (see the module docstring)."""
    from tqdm.auto import tqdm

    _check(counts, scores, config)
    seeds = np.random.SeedSequence(config.seed).generate_state(6)
    total = (config.bootstrap + (config.bootstrap + config.permutations if scores is not None else 0)) or 1
    with tqdm(total=total, desc="select-layers: refits", unit="fit", disable=None) as bar:
        counts_fit = _fit(counts, config, seeds[0], seeds[1], bar.update)
        scores_fit = _fit(scores, config, seeds[2], seeds[3], bar.update) if scores is not None else None
        alignment = align(counts_fit, scores_fit, config, seeds[4], seeds[5], bar.update) if scores_fit else None
    return LayerAnalysis(
        config, counts_fit, scores_fit, alignment, _recommend(counts_fit, scores_fit, alignment, config)
    )


def _check(counts: LayerData, scores: LayerData | None, config: LayerConfig) -> None:
    if config.likelihood not in LIKELIHOODS:
        raise ResaError(f"--likelihood {config.likelihood!r} is not one of: {', '.join(LIKELIHOODS)}")
    if min(config.components, config.top, config.restarts, config.resample_restarts, config.max_components) < 1:
        raise ResaError("--components, --top, --max-components, --restarts and --resample-restarts must be >= 1")
    if not config.min_std > 0 or not config.reg_covar > 0:
        raise ResaError("--min-std and reg_covar must be > 0")
    if min(config.bootstrap, config.permutations) < 0:
        raise ResaError("--bootstrap and --permutations must be >= 0")
    for data in (counts, scores):
        if data is not None and data.support < config.components:
            raise ResaError(
                f"{data.source}: only {data.support} layer(s) with positive {data.kind} "
                f"({', '.join(map(str, data.layers[data.weights > 0]))}), fewer than --components {config.components}"
            )
    if scores is not None and not np.array_equal(counts.layers, scores.layers):
        only_scores = sorted(set(scores.layers.tolist()) - set(counts.layers.tolist()))
        only_counts = sorted(set(counts.layers.tolist()) - set(scores.layers.tolist()))
        raise ResaError(
            f"--scores layers do not match --counts layers: only in scores {only_scores or '[]'}, "
            f"only in counts {only_counts or '[]'}; give both for the same layers"
        )


def _fit(data: LayerData, config: LayerConfig, resample_seed: int, fit_seed: int, progress) -> MixtureFit:
    k = config.components
    point = fit_batch(data, data.weights, k, config, fit_seed)
    mixture, mean_loglik = point.mixtures[0], float(point.mean_loglik[0])
    n = data.sample_size
    bic = {k: -2 * n * mean_loglik + (3 * k - 1) * math.log(n)}
    for j in range(1, max(config.max_components, k) + 1):
        if j != k and j <= data.support:
            ll = float(fit_batch(data, data.weights, j, config, fit_seed).mean_loglik[0])
            bic[j] = -2 * n * ll + (3 * j - 1) * math.log(n)
    replicates: list[Mixture] = []
    seed_variance = None
    if config.bootstrap:
        rng = np.random.default_rng(resample_seed)
        rows = resample(data, config.bootstrap, rng)
        replicates = fit_batch(data, rows, k, config, fit_seed, progress, start=mixture).mixtures
        if data.seed_values is not None:
            seed_variance = seed_feature_variance(data, config, rng, fit_seed, mixture)
    entropies = [r.entropy() for r in replicates]
    components = [
        ComponentFit(
            float(mixture.means[i]),
            float(mixture.stds[i]),
            float(mixture.weights[i]),
            percentile_ci([r.means[i] for r in replicates]),
            percentile_ci([r.stds[i] for r in replicates]),
            percentile_ci([r.weights[i] for r in replicates]),
        )
        for i in range(k)
    ]
    return MixtureFit(
        data,
        mixture,
        components,
        mean_loglik,
        mixture.entropy(),
        percentile_ci(entropies),
        float(np.mean(entropies)) - mixture.entropy() if entropies else None,
        mixture.weight_entropy(),
        percentile_ci([r.weight_entropy() for r in replicates]),
        dict(sorted(bic.items())),
        replicates,
        seed_variance,
        sklearn_check(data, mixture, config, fit_seed) if config.likelihood == "continuous" else None,
    )


RULE_COUNTS = (
    "modes first: layers on which the fitted count mixture puts at least as much mass as on each neighbouring "
    "layer, most mass first; then the remaining layers by mass"
)
RULE_JOINT = (
    "modes first: layers whose joint fitted mass sqrt(p_counts(l) * p_scores(l)) (high only where both mixtures "
    "are high) is at least that of each neighbouring layer, highest first; then the remaining layers by joint mass"
)


def _recommend(
    counts: MixtureFit, scores: MixtureFit | None, alignment: Alignment | None, config: LayerConfig
) -> Recommendation:
    layers = counts.data.layers
    f_counts = counts.mixture.bin_probs(layers)
    f_scores = scores.mixture.bin_probs(layers) if scores is not None else None
    joint = np.sqrt(f_counts * f_scores) if f_scores is not None else f_counts
    left = np.concatenate([[-np.inf], joint[:-1]])
    right = np.concatenate([joint[1:], [-np.inf]])
    is_mode = (joint >= left) & (joint >= right)
    order = sorted(range(len(layers)), key=lambda i: (not is_mode[i], -joint[i], layers[i]))[: config.top]
    details = []
    for rank, i in enumerate(order, 1):
        row = {
            "rank": rank,
            "layer": int(layers[i]),
            "paper_label": paper_label(int(layers[i])),
            "mode": bool(is_mode[i]),
            "count_mass": float(f_counts[i]),
        }
        if f_scores is not None:
            row |= {"score_mass": float(f_scores[i]), "joint_mass": float(joint[i])}
        details.append(row)
    note = None
    if alignment is not None and alignment.p_value is not None and alignment.p_value >= 0.05:
        note = (
            "the score mixture is not closer to the count mixture than shuffled scores are "
            f"(p = {alignment.p_value:.3g}), so these data do not support choosing layers by their feature counts"
        )
    return Recommendation(
        [d["layer"] for d in details], RULE_JOINT if scores is not None else RULE_COUNTS, details, note
    )


def _fit_dict(fit: MixtureFit) -> dict[str, Any]:
    return {
        "source": fit.data.source,
        "components": [asdict(c) for c in fit.components],
        "entropy": fit.entropy,
        "entropy_ci": fit.entropy_ci,
        "entropy_bootstrap_bias": fit.entropy_bootstrap_bias,
        "weight_entropy": fit.weight_entropy,
        "weight_entropy_ci": fit.weight_entropy_ci,
        "mean_loglik": fit.mean_loglik,
        "bic": {str(k): v for k, v in fit.bic.items()},
        "bic_best_components": fit.bic_best,
        "bootstrap_replicates": len(fit.replicates),
        "seeds": None if fit.data.seed_values is None else len(fit.data.seed_values),
        "seed_variance": fit.seed_variance,
        "sklearn_check": fit.sklearn_check,
    }


def _alignment_dict(al: Alignment) -> dict[str, Any]:
    return {
        "pairs": [asdict(p) for p in al.pairs],
        "weight_l1": al.weight_l1,
        "entropy_difference": al.entropy_difference,
        "weight_entropy_difference": al.weight_entropy_difference,
        "hellinger": al.hellinger,
        "statistic": al.statistic,
        "p_value": al.p_value,
        "permutations": int(al.null.size),
        "null_hellinger_quantiles": (
            dict(zip(("q05", "q50", "q95"), np.percentile(al.null, [5, 50, 95]).tolist())) if al.null.size else None
        ),
    }


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    if isinstance(obj, np.generic):
        return _rounded(obj.item())
    return obj
