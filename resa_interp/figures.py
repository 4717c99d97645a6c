"""Figures: every plotly figure is written as self-contained HTML and, where Kaleido finds a Chrome, as PNG."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from resa_interp.errors import first_line
from resa_interp.runs import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

log = logging.getLogger(__name__)


def save_figure(
    fig: go.Figure, stem: str | Path, png: bool = True, scale: float = 2.0, plotlyjs: bool | str = True
) -> list[Path]:
    """Write `stem`.html (plotly.js inlined, opens without a server; `plotlyjs='cdn'` loads it from plotly's CDN
    instead, for small committed files) and `stem`.png; returns what was written. The plot's div is named after
    the stem (plotly's default is a random uuid), so the same figure gives the same bytes.

    PNG export needs Kaleido and a Chrome/Chromium (scripts/setup.sh installs one where it can); without one
    the PNG is skipped with a one-line warning rather than failing the stage.
    """
    stem = Path(stem)
    page = fig.to_html(include_plotlyjs=plotlyjs, full_html=True, div_id=stem.name)
    written = [atomic_write_text(stem.with_suffix(".html"), page)]
    if png:
        try:
            written.append(atomic_write_bytes(stem.with_suffix(".png"), fig.to_image(format="png", scale=scale)))
        except Exception as exc:  # Kaleido raises its own types when no browser is found
            log.warning("PNG not written for %s (%s); PNG export needs Kaleido and a Chrome/Chromium",
                        stem.name, first_line(exc))
    return written
