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

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from resa_interp.errors import ResaError
from resa_interp.layers.mixture import LIKELIHOODS, BatchFit, Mixture, fit_weighted, hellinger
from resa_interp.numbering import NUMBERING, paper_label
from resa_interp.runs import SEED_COLUMN

SCORE_TRANSFORMS = {
    "shift-min": "w_l = s_l - min(s): the worst layer gets weight 0 (min-max scaling gives the same distribution)",
    "softmax": "w_l = exp((s_l - max(s)) / T), T = --temperature in score units",
    "raw": "w_l = s_l (scores must be non-negative)",
}
ENTROPY_DEFINITION = (
    "entropy: differential entropy -∫ f(x) log f(x) dx of the fitted mixture density over the layer axis, in nats "
    "(numerical integration); weight_entropy: Shannon entropy -Σ_k w_k log w_k of the mixing weights, in nats"
)


@dataclass(frozen=True)
class LayerConfig:
    """How select-layers fits, resamples and recommends."""

    components: int = 3
    """Mixture components (the paper fits 3)."""
    score_transform: str = "shift-min"
    """How per-layer scores become non-negative weights: one of SCORE_TRANSFORMS."""
    temperature: float = 1.0
    """Softmax temperature, in the scores' own units (score_transform 'softmax' only)."""
    likelihood: str = "binned"
    """'binned' (each layer is a unit-width bin, components truncated to the observed layers: exact for layer
    data, BIC meaningful for counts) or 'continuous' (scikit-learn GaussianMixture's density objective, the
    paper's kind of fit)."""
    restarts: int = 200
    """EM starts for each fit to the data (the reported fits and the BIC fits); the best likelihood wins."""
    resample_restarts: int = 20
    """EM starts for each bootstrap or permutation refit (bootstrap refits also start once from the data's fit)."""
    bootstrap: int = 1000
    """Bootstrap replicates for the 95% intervals (0: no intervals)."""
    permutations: int = 1000
    """Score-over-layer shuffles for the alignment p-value (0: no p-value)."""
    max_components: int = 5
    """BIC is reported for 1..max_components components."""
    top: int = 3
    """Hookpoints to recommend."""
    seed: int = 0
    """Seed for every random draw (EM starts, bootstrap, permutations)."""
    min_std: float = 0.5
    """Binned likelihood only: smallest component σ, in layers. A component is a cluster of layers; narrower
    ones fit a single layer's count (and below about 0.3 the likelihood cannot tell widths apart)."""
    reg_covar: float = 1.0 / 12.0
    """Continuous likelihood only: added to each component variance (sklearn's reg_covar); the default is the
    variance of a unit-width layer bin, which also keeps a component from collapsing onto one layer."""
    tol: float = 1e-9
    """EM stops when the mean log-likelihood changes by less than this over one SQUAREM cycle."""
    counts: str | None = None
    """Per-layer reasoning-feature counts: a counts.csv (`layer,count`) or a features.json; select_layers needs it."""
    scores: str | None = None
    """Per-layer scores: a CSV with a `layer` column (a sweep's scores.csv); None: counts only."""
    score_column: str | None = None
    """Column of `scores` to use; None: `avg`, else the only column besides `layer`."""


INPUT_FIELDS = ("counts", "scores", "score_column")
"""LayerConfig fields that name the inputs rather than how they are fitted; layers.json records the inputs under
"inputs", so its "config" leaves them out."""


def fit_settings(config: LayerConfig) -> dict[str, Any]:
    """The config as layers.json records it: every fitting setting, without the input fields."""
    return {k: v for k, v in asdict(config).items() if k not in INPUT_FIELDS}


@dataclass(frozen=True)
class LayerData:
    """One non-negative mass per layer, and how it was read."""

    kind: str
    """'counts' or 'scores'."""
    layers: np.ndarray
    """Layer indices, ascending."""
    values: np.ndarray
    """As read: feature counts, or scores."""
    weights: np.ndarray
    """Mass per layer that the mixture is fitted to (counts as they are; scores transformed)."""
    sample_size: float
    """n for BIC and the bootstrap unit count: features for counts, layers for scores."""
    source: str
    """File (and column) the values came from."""
    seed_values: np.ndarray | None = None
    """Counts of a multi-seed run: [seeds, layers], one row per SAE seed, the first the seed `values` come from;
    None: one seed."""

    @property
    def support(self) -> int:
        """Layers with positive mass."""
        return int((self.weights > 0).sum())


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


# ---------------------------------------------------------------- reading inputs


def read_counts(path: str | Path) -> LayerData:
    """Per-layer reasoning-feature counts from `counts.csv` (`layer,count`) or `features.json` (`layers` list)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        rows = _json_layer_rows(path)
    else:
        rows = _csv_rows(path, required=("layer", "count"))
    seed_columns = [c for c in rows[0] if c.startswith(SEED_COLUMN)]
    counts, per_seed = {}, {}
    for row in rows:
        layer = _layer(row["layer"], path)
        if layer in counts:
            raise ResaError(f"{path}: layer {layer} appears twice; give one count per layer")
        counts[layer] = _count(row["count"], layer, path)
        per_seed[layer] = [_count(row.get(c), layer, path) for c in seed_columns]
    layers = np.array(sorted(counts), dtype=int)
    values = np.array([counts[layer] for layer in layers], dtype=float)
    if values.sum() == 0:
        raise ResaError(f"{path}: every count is 0, so there is no distribution over layers to fit")
    seeds = np.array([per_seed[layer] for layer in layers], dtype=float).T if len(seed_columns) > 1 else None
    if seeds is not None and not np.array_equal(seeds[0], values):
        raise ResaError(f"{path}: column count differs from {seed_columns[0]}; count is the first seed's count")
    return LayerData("counts", layers, values, values, float(values.sum()), str(path), seeds)


def read_scores(
    path: str | Path, column: str | None = None, transform: str = "shift-min", temperature: float = 1.0
) -> LayerData:
    """Per-layer scores from a CSV with a `layer` column: `column`, else `avg`, else the only other column."""
    path = Path(path)
    rows = _csv_rows(path, required=("layer",))
    others = [c for c in rows[0] if c != "layer"]
    if column is None:
        if "avg" in others:
            column = "avg"
        elif len(others) == 1:
            column = others[0]
        else:
            raise ResaError(
                f"{path}: several score columns ({', '.join(others) or 'none'}) and no 'avg'; "
                "pick one with --score-column"
            )
    if column not in others:
        raise ResaError(f"{path}: no column {column!r} (columns: {', '.join(rows[0])}); pick one with --score-column")
    scores = {}
    for row in rows:
        layer = _layer(row["layer"], path)
        if layer in scores:
            raise ResaError(f"{path}: layer {layer} appears twice; give one score per layer")
        scores[layer] = _score(row[column], layer, column, path)
    layers = np.array(sorted(scores), dtype=int)
    values = np.array([scores[layer] for layer in layers])
    if len(values) > 1 and np.ptp(values) == 0:
        raise ResaError(f"{path}: every layer's {column} is {values[0]:g}, so it cannot tell layers apart"
                        f"{_varying_columns(rows, column)}")
    weights = transform_scores(values, transform, temperature)
    return LayerData("scores", layers, values, weights, float(len(layers)), f"{path} [{column}]")


def _varying_columns(rows: list[dict[str, str]], column: str) -> str:
    """The refusal's pointer to the file's columns that do differ between layers (a sweep's gold_logprob, the
    continuous score, where every Pass@1 is 0)."""
    varying = [c for c in rows[0] if c not in ("layer", column) and len({row[c] for row in rows}) > 1]
    if not varying:
        return "; no other column varies either"
    return f"; pick one that varies with --score-column: {', '.join(varying)} (e.g. --score-column {varying[0]})"


def transform_scores(scores: np.ndarray, transform: str, temperature: float = 1.0) -> np.ndarray:
    """Scores -> non-negative per-layer weights (see SCORE_TRANSFORMS)."""
    check_transform(transform)
    scores = np.asarray(scores, dtype=float)
    if transform == "shift-min":
        weights = scores - scores.min()
    elif transform == "softmax":
        if not temperature > 0:
            raise ResaError(f"--temperature {temperature} must be > 0 (it is in the scores' units)")
        weights = np.exp((scores - scores.max()) / temperature)
    else:  # raw
        if (scores < 0).any():
            raise ResaError("--score-transform raw needs non-negative scores; use shift-min or softmax")
        weights = scores.copy()
    if not weights.sum() > 0:
        raise ResaError(f"every layer gets weight 0 under --score-transform {transform} (are all scores equal?)")
    return weights


def check_transform(transform: str) -> None:
    """Refuse a score transform that is not one of SCORE_TRANSFORMS."""
    if transform not in SCORE_TRANSFORMS:
        raise ResaError(f"--score-transform {transform!r} is not one of: {', '.join(SCORE_TRANSFORMS)}")


def _csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV with a header; lines starting with '#' and blank lines are skipped."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:
        raise ResaError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not lines:
        raise ResaError(f"{path}: empty; expected a CSV with header {','.join(required)}")
    reader = csv.DictReader(lines)
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
        raise ResaError(f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise ResaError(f"{path}: a header but no rows")
    return rows


def _json_layer_rows(path: Path) -> list[dict[str, Any]]:
    """The `layers` list of a features.json: objects with at least `layer` and `count`."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ResaError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ResaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    rows = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ResaError(f"{path}: expected a non-empty 'layers' list of {{'layer': int, 'count': int}} objects")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "layer" not in row or "count" not in row:
            raise ResaError(f"{path}: layers[{i}] is missing 'layer' or 'count'")
    seeds = data.get("seeds")
    if isinstance(seeds, dict) and isinstance(seeds.get("layers"), list):  # a multi-seed run's per-seed counts
        per_layer = {row.get("layer"): row.get("counts", {}) for row in seeds["layers"] if isinstance(row, dict)}
        rows = [{**row, **{f"{SEED_COLUMN}{s}": c for s, c in per_layer.get(row["layer"], {}).items()}}
                for row in rows]
    return rows


def _number(text: Any) -> float:
    if isinstance(text, bool):
        return math.nan
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _layer(text: Any, path: Path) -> int:
    value = _number(text)
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise ResaError(f"{path}: layer {text!r} is not a non-negative integer")
    return int(value)


def _count(text: Any, layer: int, path: Path) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value == int(value)):
        raise ResaError(f"{path}: count {text!r} at layer {layer} is not an integer; counts are numbers of features")
    if value < 0:
        raise ResaError(f"{path}: count {text!r} at layer {layer} is negative; counts are numbers of features")
    return value


def _score(text: str, layer: int, column: str, path: Path) -> float:
    value = _number(text)
    if not math.isfinite(value):
        raise ResaError(
            f"{path}: {column} at layer {layer} is {text!r}, not a finite number (NaN/empty scores are refused)"
        )
    return value


# ---------------------------------------------------------------- analysis


def analyze_layers(counts: LayerData, scores: LayerData | None, config: LayerConfig = LayerConfig()) -> LayerAnalysis:
    """Fit, resample and compare the mixtures; recommend hookpoints (see the module docstring)."""
    from tqdm.auto import tqdm

    _check(counts, scores, config)
    seeds = np.random.SeedSequence(config.seed).generate_state(6)
    total = (config.bootstrap + (config.bootstrap + config.permutations if scores is not None else 0)) or 1
    with tqdm(total=total, desc="select-layers: refits", unit="fit", disable=None) as bar:
        counts_fit = _fit(counts, config, seeds[0], seeds[1], bar.update)
        scores_fit = _fit(scores, config, seeds[2], seeds[3], bar.update) if scores is not None else None
        alignment = _align(counts_fit, scores_fit, config, seeds[4], seeds[5], bar.update) if scores_fit else None
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


def _fit_batch(
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


def _resample(data: LayerData, n: int, rng: np.random.Generator, seeds: bool = True) -> np.ndarray:
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


def _fit(data: LayerData, config: LayerConfig, resample_seed: int, fit_seed: int, progress) -> MixtureFit:
    k = config.components
    point = _fit_batch(data, data.weights, k, config, fit_seed)
    mixture, mean_loglik = point.mixtures[0], float(point.mean_loglik[0])
    n = data.sample_size
    bic = {k: -2 * n * mean_loglik + (3 * k - 1) * math.log(n)}
    for j in range(1, max(config.max_components, k) + 1):
        if j != k and j <= data.support:
            ll = float(_fit_batch(data, data.weights, j, config, fit_seed).mean_loglik[0])
            bic[j] = -2 * n * ll + (3 * j - 1) * math.log(n)
    replicates: list[Mixture] = []
    seed_variance = None
    if config.bootstrap:
        rng = np.random.default_rng(resample_seed)
        rows = _resample(data, config.bootstrap, rng)
        replicates = _fit_batch(data, rows, k, config, fit_seed, progress, start=mixture).mixtures
        if data.seed_values is not None:
            seed_variance = _seed_variance(data, config, rng, fit_seed, mixture)
    entropies = [r.entropy() for r in replicates]
    components = [
        ComponentFit(
            float(mixture.means[i]),
            float(mixture.stds[i]),
            float(mixture.weights[i]),
            _ci([r.means[i] for r in replicates]),
            _ci([r.stds[i] for r in replicates]),
            _ci([r.weights[i] for r in replicates]),
        )
        for i in range(k)
    ]
    return MixtureFit(
        data,
        mixture,
        components,
        mean_loglik,
        mixture.entropy(),
        _ci(entropies),
        float(np.mean(entropies)) - mixture.entropy() if entropies else None,
        mixture.weight_entropy(),
        _ci([r.weight_entropy() for r in replicates]),
        dict(sorted(bic.items())),
        replicates,
        seed_variance,
        _sklearn_check(data, mixture, config, fit_seed) if config.likelihood == "continuous" else None,
    )


PARAMETERS = ("mean", "std", "weight")


def _variance(values: list[float]) -> float:
    """Population variance as the mean squared pairwise difference / 2: exactly 0 for equal values."""
    x = np.asarray(values, dtype=float)
    return float(((x[:, None] - x[None, :]) ** 2).mean() / 2)


def _seed_variance(data: LayerData, config: LayerConfig, rng: np.random.Generator, fit_seed: int,
                   start: Mixture) -> list[dict[str, dict[str, float]]]:
    """Per component and parameter: variance over the seeds' own fits, over a features-only bootstrap of the
    first seed, and the seed share (see `MixtureFit.seed_variance`)."""
    seeds = data.seed_values[data.seed_values.sum(1) > 0]
    distinct, which = np.unique(seeds, axis=0, return_inverse=True)  # seeds with equal counts get the same fit
    fits = _fit_batch(data, distinct.astype(float), config.components, config, fit_seed, start=start).mixtures
    by_seed = [fits[i] for i in np.ravel(which)]
    rows = _resample(data, config.bootstrap, rng, seeds=False)
    by_feature = _fit_batch(data, rows, config.components, config, fit_seed, start=start).mixtures
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


def _ci(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


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


def _sklearn_check(data: LayerData, mixture: Mixture, config: LayerConfig, seed: int) -> dict[str, Any]:
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


def _align(
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
        fits = _fit_batch(scores.data, np.stack(rows), config.components, config, fit_seed, progress).mixtures
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
