"""Layer alignment: Gaussian mixtures over layer index fitted to reasoning-feature counts and to per-layer scores,
compared, with intervals, and turned into recommended SAE hookpoints.

Takes a `LayerConfig` (which names the counts, counts.csv or features.json, and optionally scores, a sweep's
scores.csv) and an output folder; gives `layers.json`, `layers.md`, `layer_report.html` and figures there, and a
`LayerAnalysis`.
"""

from resa_interp.layers.analysis import LayerAnalysis, Recommendation, analyze_layers
from resa_interp.layers.config import SCORE_TRANSFORMS, LayerConfig, check_transform, fit_settings
from resa_interp.layers.fits import ComponentFit, MixtureFit, expand
from resa_interp.layers.inputs import LayerData, read_counts, read_scores, transform_scores
from resa_interp.layers.mixture import Mixture, fit_weighted, hellinger
from resa_interp.layers.report import figures, markdown_summary, write_outputs
from resa_interp.layers.select import select_layers
from resa_interp.layers.statistics import Alignment, MatchedPair

__all__ = [
    "SCORE_TRANSFORMS",
    "Alignment",
    "ComponentFit",
    "LayerAnalysis",
    "LayerConfig",
    "LayerData",
    "MatchedPair",
    "Mixture",
    "MixtureFit",
    "Recommendation",
    "analyze_layers",
    "check_transform",
    "expand",
    "figures",
    "fit_settings",
    "fit_weighted",
    "hellinger",
    "markdown_summary",
    "read_counts",
    "read_scores",
    "select_layers",
    "transform_scores",
    "write_outputs",
]
