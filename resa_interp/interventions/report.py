"""What `steer` and `trace` write: effects JSON, samples side by side (JSON and HTML), plotly figures."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from resa_interp.figures import save_figure
from resa_interp.interventions.results import SteerResult
from resa_interp.runs import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

PAGE_STYLE = """<style>body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px}
.tok{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12.5px}
.marker{border-bottom:2px solid #2c3e50;font-weight:bold}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
pre{white-space:pre-wrap;margin:0;font-size:12.5px}.note{color:#555;font-size:13px}</style>"""


def token_row(tokens: Sequence[str], values: Sequence[float], markers: set[int], scale: float) -> str:
    """Tokens as HTML spans shaded by `values` (orange, relative to `scale`), markers underlined."""
    spans = []
    for i, (tok, v) in enumerate(zip(tokens, values)):
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, v / scale))
        style = f' style="background:rgba(255,130,0,{alpha:.3f})"' if alpha > 0 else ""
        cls = "tok marker" if i in markers else "tok"
        spans.append(f'<span class="{cls}"{style} title="{html.escape(f"{i}: {v:.4f}")}">{html.escape(tok)}</span>')
    return "".join(spans)


def effects_figure(result: SteerResult, title: str) -> go.Figure:
    """Per condition (layer, 'all'): change of marker log-prob, of other log-prob and KL, chosen vs control, with
    bootstrap intervals over texts."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = (("dlogp_marker", "Δ log p at <think>/</think> tokens"), ("dlogp_other", "Δ log p at other tokens"),
              ("kl", "KL(clean ‖ edited) per position"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in panels])
    for kind, color in (("reasoning", "#C44E52"), ("control", "#8C8C8C")):
        rows = [e for e in result.effects if e.kind == kind]
        for col, (metric, _) in enumerate(panels, 1):
            est = [getattr(e, metric) for e in rows]
            fig.add_trace(go.Bar(
                x=[e.name for e in rows], y=[x.mean for x in est], name=kind, legendgroup=kind, showlegend=col == 1,
                marker_color=color,
                error_y={"type": "data", "symmetric": False, "array": [x.hi - x.mean for x in est],
                         "arrayminus": [x.mean - x.lo for x in est]},
            ), row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", barmode="group", height=420)
    return fig


def samples_html(result: SteerResult, title: str) -> str:
    """Teacher-forced texts shaded by per-position KL for each edit, and greedy generations side by side."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{PAGE_STYLE}"
             f"</head><body><h1>{html.escape(title)}</h1>"]
    if result.generations:
        parts.append("<h2>Greedy generations (prompt ends in an open &lt;think&gt;)</h2><table><tr><th>question "
                     "(gold)</th><th>clean</th><th>chosen latents edited</th><th>control latents edited</th></tr>")
        for s in result.generations:
            cells = "".join(
                f"<td><div class='note'>reasoning tokens {g.reasoning_tokens}{'' if g.closed else ' (no </think>)'}"
                f"{'' if g.correct is None else ', correct' if g.correct else ', wrong'}</div>"
                f"<pre>{html.escape(g.text)}</pre></td>"
                for g in (s.clean, s.edited, s.control))
            parts.append(f"<tr><td>{html.escape(s.problem)} ({html.escape(s.gold)})</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("<h2>Teacher-forced texts: KL(clean ‖ edited) at each position</h2><p class='note'>Shading: KL of "
                 "the next-token distribution at that position (darkest = the text's largest KL over all edits shown);"
                 " markers are bold and underlined.</p>")
    for n, sample in enumerate(result.samples):
        markers = set(sample["markers"])
        scale = max((max(c["kl"]) for c in sample["conditions"]), default=0.0)
        parts.append(f"<h3>text {n}</h3>")
        for c in sample["conditions"]:
            parts.append(f"<p><b>{html.escape(c['condition'])}, {c['kind']}</b><br>"
                         f"{token_row(sample['tokens'], c['kl'], markers, scale)}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def write_steer(result: SteerResult, out: str | Path, header: dict) -> dict[str, Path]:
    """OUT/effects.json, OUT/samples.json, OUT/samples.html and OUT/figures/steer_effects.html/.png."""
    out = Path(out)
    doc = {**header, "effects": [asdict(e) for e in result.effects],
           "differences": [asdict(d) for d in result.differences],
           "generation": {k: asdict(v) for k, v in result.generation_summary.items()}}
    title = f"Edited latents vs frequency-matched control — {header.get('model', '')} ({header.get('mode', '')})"
    paths = {
        "effects": atomic_write_json(out / "effects.json", doc),
        "samples": atomic_write_json(out / "samples.json", {"teacher_forced": result.samples,
                                                            "generations": [asdict(g) for g in result.generations]}),
        "samples_html": atomic_write_text(out / "samples.html", samples_html(result, title)),
    }
    paths["figure"] = save_figure(effects_figure(result, title), out / "figures" / "steer_effects")[0]
    return paths
