"""Layer alignment: Gaussian mixtures over layer index fitted to reasoning-feature counts and to per-layer scores,
compared, with intervals, and turned into recommended SAE hookpoints.

Takes a `LayerConfig` (which names the counts, counts.csv or features.json, and optionally scores, a sweep's
scores.csv) and an output folder; gives `layers.json`, `layers.md`, `layer_report.html` and figures there, and a
`LayerAnalysis`.
"""

from resa_interp.layers.analysis import LayerAnalysis, LayerConfig, LayerData, analyze_layers, read_counts, read_scores
from resa_interp.layers.mixture import Mixture, fit_weighted
from resa_interp.layers.report import figures, markdown_summary, write_outputs
from resa_interp.layers.select import select_layers

__all__ = [
    "LayerAnalysis",
    "LayerConfig",
    "LayerData",
    "Mixture",
    "analyze_layers",
    "figures",
    "fit_weighted",
    "markdown_summary",
    "read_counts",
    "read_scores",
    "select_layers",
    "write_outputs",
]
