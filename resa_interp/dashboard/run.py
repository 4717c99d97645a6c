"""The dashboard stage as a run: build the dashboards a `DashboardConfig` names and write them with a manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from resa_interp.dashboard.build import build_dashboards
from resa_interp.dashboard.config import DashboardConfig, check_plotlyjs
from resa_interp.dashboard.html import DashboardSet, write_dashboard
from resa_interp.errors import ResaError
from resa_interp.runs import record_stage


@dataclass(frozen=True)
class DashboardRun:
    """What `run_dashboard` produced."""

    dashboards: DashboardSet
    page: Path
    """OUT/dashboard.html; OUT/dashboard.json is beside it."""


def run_dashboard(config: DashboardConfig, out: str | Path) -> DashboardRun:
    """Build the dashboards of `config.run` and write OUT/dashboard.html (self-contained), OUT/dashboard.json and
    a manifest."""
    if config.run is None:
        raise ResaError("no run to build dashboards from; give --run (a folder with saes/)")
    check_plotlyjs(config.plotlyjs)
    dashboards = build_dashboards(config.run, config.layer, config.features, config, model=config.model,
                                  hook=config.hook, device=config.device)
    page = write_dashboard(dashboards, out, plotlyjs=config.plotlyjs)
    record_stage(out, "dashboard", {"run": str(config.run), "layer": config.layer, "features": config.features,
                                    "config": asdict(config), "latents": len(dashboards.features), "page": page.name})
    return DashboardRun(dashboards, page)
