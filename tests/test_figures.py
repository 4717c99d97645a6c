"""Figures are outputs like any other: the same figure written twice gives the same bytes."""

from __future__ import annotations

import plotly.graph_objects as go

from resa_interp.figures import save_figure


def test_the_same_figure_writes_the_same_html(tmp_path):
    fig = go.Figure(go.Bar(x=[1, 2, 3], y=[4, 1, 2]))
    first, second = tmp_path / "a" / "counts", tmp_path / "b" / "counts"
    save_figure(fig, first, png=False, plotlyjs="cdn")
    save_figure(fig, second, png=False, plotlyjs="cdn")
    html = first.with_suffix(".html").read_bytes()
    assert html == second.with_suffix(".html").read_bytes()  # plotly names its div with a random uuid by default
    assert b'id="counts"' in html
