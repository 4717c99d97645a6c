"""The select-layers stage's options: how the mixtures are fitted, resampled and turned into hookpoints, and
which files they are fitted to."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from resa_interp.errors import ResaError

SCORE_TRANSFORMS = {
    "shift-min": "w_l = s_l - min(s): the worst layer gets weight 0 (min-max scaling gives the same distribution)",
    "softmax": "w_l = exp((s_l - max(s)) / T), T = --temperature in score units",
    "raw": "w_l = s_l (scores must be non-negative)",
}


@dataclass(frozen=True)
class LayerConfig:
    """How select-layers fits, resamples and recommends."""

    components: int = 3
    """Mixture components (the paper fits 3)."""
    score_transform: str = "shift-min"
    """How per-layer scores become non-negative weights: shift-min (minus the lowest score), softmax (at
    `temperature`) or raw (the scores as they are, which must be non-negative)."""
    temperature: float = 1.0
    """Softmax temperature, in the scores' own units (score transform softmax only)."""
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
    """BIC is reported for 1 up to this many components."""
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
    """Per-layer reasoning-feature counts: a counts.csv (`layer,count`) or a features.json (required)."""
    scores: str | None = None
    """Per-layer scores: a CSV with a `layer` column and score columns (a sweep's scores.csv); unset: the counts
    are fitted alone."""
    score_column: str | None = None
    """Score column to use; unset: `avg`, else the only column besides `layer`."""


INPUT_FIELDS = ("counts", "scores", "score_column")
"""LayerConfig fields that name the inputs rather than how they are fitted; layers.json records the inputs under
"inputs", so its "config" leaves them out."""


def fit_settings(config: LayerConfig) -> dict[str, Any]:
    """The config as layers.json records it: every fitting setting, without the input fields."""
    return {k: v for k, v in asdict(config).items() if k not in INPUT_FIELDS}


def check_transform(transform: str) -> None:
    """Refuse a score transform that is not one of SCORE_TRANSFORMS."""
    if transform not in SCORE_TRANSFORMS:
        raise ResaError(f"--score-transform {transform!r} is not one of: {', '.join(SCORE_TRANSFORMS)}")
