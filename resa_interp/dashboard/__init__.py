"""Feature dashboards: per SAE latent, its top-activating contexts, activation histogram, logit effects, firing
frequency and activation at the prompt's markers, as SAEDashboard and Neuronpedia show them.

Takes a `DashboardConfig` and a run with SAEs (and features.json); gives one offline HTML page and
`dashboard.json` in the output folder, and a `DashboardRun` (its `DashboardSet` also displays inline in
Jupyter).
"""

from resa_interp.dashboard.build import (
    DashboardConfig,
    DashboardRun,
    DashboardSet,
    FeatureDashboard,
    build_dashboards,
    run_dashboard,
)
from resa_interp.dashboard.html import page_html, write_dashboard

__all__ = [
    "DashboardConfig",
    "DashboardRun",
    "DashboardSet",
    "FeatureDashboard",
    "build_dashboards",
    "page_html",
    "run_dashboard",
    "write_dashboard",
]
