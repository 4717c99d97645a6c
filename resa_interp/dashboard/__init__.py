"""Feature dashboards: per SAE latent, its top-activating contexts, activation histogram, logit effects, firing
frequency and activation at the prompt's markers, as SAEDashboard and Neuronpedia show them.

Takes a `DashboardConfig` and a run with SAEs (and features.json); gives one offline HTML page and
`dashboard.json` in the output folder, and a `DashboardRun` (its `DashboardSet` also displays inline in
Jupyter). `export_neuronpedia` writes that dashboard data in Neuronpedia's bulk-import layout; `export_delphi` writes
delphi's latent cache of a run's SAEs over its trigger data, for delphi's explainers and scorers.

Modules: `config` (the configs), `harvest` (the data and its sinks), `stats` (statistics and contexts), `logits`
(logit effects), `results` (the dashboard data), `build` (assembling it), `html` (the page), `run` (the stage),
`export` (Neuronpedia), `delphi` (delphi's cache), `transparency` (one SAE read in several models: per-latent
agreement).
"""

from resa_interp.dashboard.build import build_dashboards
from resa_interp.dashboard.config import PLOTLYJS, DashboardConfig, DelphiConfig, NeuronpediaConfig, check_plotlyjs
from resa_interp.dashboard.delphi import DelphiExport, export_delphi, shard_arrays, shard_ranges
from resa_interp.dashboard.export import (
    NeuronpediaExport,
    activation_rows,
    export_neuronpedia,
    feature_row,
    read_dashboards,
)
from resa_interp.dashboard.harvest import Corpus, LayerLatents, harvest_latents, sink_mask
from resa_interp.dashboard.html import DashboardSet, fragment_html, histogram_figure, page_html, write_dashboard
from resa_interp.dashboard.logits import logit_effects, unembedding
from resa_interp.dashboard.results import Context, DashboardData, FeatureDashboard
from resa_interp.dashboard.run import DashboardRun, run_dashboard
from resa_interp.dashboard.transparency import Agreement, agreement, latent_patterns, pearson_columns

__all__ = [
    "Agreement",
    "Context",
    "Corpus",
    "DashboardConfig",
    "DashboardData",
    "DashboardRun",
    "DashboardSet",
    "DelphiConfig",
    "DelphiExport",
    "FeatureDashboard",
    "LayerLatents",
    "NeuronpediaConfig",
    "NeuronpediaExport",
    "PLOTLYJS",
    "activation_rows",
    "agreement",
    "build_dashboards",
    "check_plotlyjs",
    "export_delphi",
    "export_neuronpedia",
    "feature_row",
    "fragment_html",
    "harvest_latents",
    "histogram_figure",
    "latent_patterns",
    "logit_effects",
    "page_html",
    "pearson_columns",
    "read_dashboards",
    "run_dashboard",
    "shard_arrays",
    "shard_ranges",
    "sink_mask",
    "unembedding",
    "write_dashboard",
]
