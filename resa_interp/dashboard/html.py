"""Feature dashboards as HTML: one page (an index, then a section per latent) that opens from disk.

Activation histograms are plotly figures sharing one copy of plotly.js, inlined by default (the page works
offline and without a server) or loaded from plotly's CDN (`plotlyjs='cdn'`: a small file that needs the
network). Contexts and the prompt are plain HTML: each token's background shows the latent's activation there
relative to the latent's largest (non-sink) activation in the data; sinks are struck through.
"""

from __future__ import annotations

import html
from pathlib import Path

from resa_interp.dashboard.config import check_plotlyjs
from resa_interp.dashboard.results import Context, DashboardData, FeatureDashboard
from resa_interp.data import END_THINK, THINK
from resa_interp.runs import atomic_write_json, atomic_write_text

STYLE = """
.resa-dash{font-family:system-ui,sans-serif;color:#222;max-width:1180px}
.resa-dash table{border-collapse:collapse;margin:.4em 0 1em;font-size:13px}
.resa-dash td,.resa-dash th{border:1px solid #ddd;padding:2px 7px;text-align:right;vertical-align:top}
.resa-dash th{background:#f4f4f4}.resa-dash td.l,.resa-dash th.l{text-align:left}
.resa-dash section{border-top:2px solid #888;margin-top:1.6em;padding-top:.4em}
.resa-dash .row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
.resa-dash .tok{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12.5px;border-radius:2px;
  padding:0 1px}
.resa-dash .peak{outline:2px solid #c0392b}.resa-dash .sink{text-decoration:line-through;color:#999}
.resa-dash .marker{border-bottom:2px solid #2c3e50}
.resa-dash .ctx{margin:2px 0;line-height:1.9}.resa-dash .val{display:inline-block;width:5.5em;color:#555;
  font-size:12px}
.resa-dash .note{color:#555;font-size:13px}
"""


def _tok(text: str, value: float, scale: float, extra: str = "", title: str = "") -> str:
    alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, value / scale))
    style = f"background:rgba(255,130,0,{alpha:.3f})" if alpha > 0 else ""
    tip = html.escape(f"{title}{value:.3f}")
    return f'<span class="tok {extra}" style="{style}" title="{tip}">{html.escape(text)}</span>'


def _context(ctx: Context, scale: float) -> str:
    where = "shared prefix (system prompt)" if ctx.text < 0 else f"text {ctx.text}"
    tokens = "".join(
        _tok(t, v, scale, ("peak " if i == ctx.peak else "") + ("sink" if s else ""), "sink, excluded: " if s else "")
        for i, (t, v, s) in enumerate(zip(ctx.tokens, ctx.acts, ctx.sinks))
    )
    value = f'<span class="val">{ctx.value:.3f}</span>'
    return f'<div class="ctx" title="{where}, position {ctx.position}">{value}{tokens}</div>'


def _prompt(dset: DashboardData, f: FeatureDashboard, scale: float) -> str:
    marker_pos = {p for spans in dset.prompt_markers.values() for s, e in spans for p in range(s, e)}
    return "".join(
        _tok(t, v, scale, ("marker " if i in marker_pos else "") + ("sink" if i in dset.prompt_excluded else ""))
        for i, (t, v) in enumerate(zip(dset.prompt_tokens, f.prompt_acts))
    )


def _logit_table(f: FeatureDashboard) -> str:
    rows = "".join(
        f'<tr><td class="l"><span class="tok">{html.escape(p)}</span></td><td>{pv:+.3f}</td>'
        f'<td class="l"><span class="tok">{html.escape(n)}</span></td><td>{nv:+.3f}</td></tr>'
        for (p, pv), (n, nv) in zip(f.logits_positive, f.logits_negative)
    )
    return f'<table><tr><th class="l">top +</th><th></th><th class="l">top −</th><th></th></tr>{rows}</table>'


def _marker_table(f: FeatureDashboard) -> str:
    rows = "".join(
        f'<tr><td class="l">{html.escape(m)}</td>' + "".join(f"<td>{v:.3f}</td>" for v in f.marker_activations[m])
        + "</tr>"
        for m in (THINK, END_THINK)
    )
    n = max(len(v) for v in f.marker_activations.values())
    head = "".join(f"<th>#{i + 1}</th>" for i in range(n))
    return f'<table><tr><th class="l">marker</th>{head}</tr>{rows}</table>'


def _ablation_table(f: FeatureDashboard) -> str:
    if f.ablation is None:
        return ""
    a = f.ablation
    rows = (("Δ log p at markers", a.dlogp_marker), ("Δ log p elsewhere", a.dlogp_other), ("mean KL", a.kl),
            ("max KL", a.max_kl))
    cells = "".join(f'<tr><td class="l">{name}</td><td>{v:+.4f}</td></tr>' for name, v in rows)
    return f"<b>ablated alone, on the prompt</b><table>{cells}</table>"


def histogram_figure(f: FeatureDashboard):
    """Plotly bar chart of the latent's non-zero activations over the data."""
    import plotly.graph_objects as go

    edges = f.histogram_edges
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    fig = go.Figure(go.Bar(x=centres, y=f.histogram_counts, width=[b - a for a, b in zip(edges, edges[1:])],
                           marker_color="#e67e22"))
    fig.update_layout(
        title=f"layer {f.layer}, latent {f.feature}: activations where it fires",
        xaxis_title="activation", yaxis_title="positions", template="plotly_white",
        width=460, height=280, margin={"l": 55, "r": 10, "t": 40, "b": 45}, bargap=0,
    )
    return fig


def feature_html(dset: DashboardData, f: FeatureDashboard) -> str:
    """One latent's section (the histogram as a plotly div; plotly.js must be on the page)."""
    scale = max(f.max_activation, max(f.prompt_acts, default=0.0))
    hist = histogram_figure(f).to_html(full_html=False, include_plotlyjs=False, div_id=f"hist-{f.anchor}",
                                       config={"displayModeBar": False})
    kind = "reasoning feature" if f.reasoning else "latent"
    contexts = "".join(_context(c, scale) for c in f.contexts) or '<p class="note">never fires in the data</p>'
    return f"""<section id="{f.anchor}">
<h2>{kind} {f.feature} · layer {f.layer} <small>({html.escape(f.hook_name)})</small></h2>
<p>fires at <b>{100 * f.frequency:.3f}%</b> of positions · max {f.max_activation:.3f} ·
mean when firing {f.mean_when_firing:.3f} · <a href="#index">index</a></p>
<div class="row"><div>{hist}</div>
<div><b>logit effects</b>{_logit_table(f)}</div>
<div><b>activation at the prompt's markers</b> ({html.escape(dset.marker_rule)} rule){_marker_table(f)}
{_ablation_table(f)}</div></div>
<p><b>prompt</b> (markers underlined)</p><div class="ctx">{_prompt(dset, f, scale)}</div>
<p><b>top-activating contexts</b> (value, then the window; the peak token outlined)</p>{contexts}
</section>"""


def _index(dset: DashboardData) -> str:
    rows = []
    for f in dset.features:
        think = f.marker_activations[THINK]
        end = f.marker_activations[END_THINK]
        top = " ".join(f'<span class="tok">{html.escape(t)}</span>' for t, _ in f.logits_positive[:4])
        rows.append(
            f'<tr><td><a href="#{f.anchor}">{f.layer}</a></td><td><a href="#{f.anchor}">{f.feature}</a></td>'
            f'<td>{"yes" if f.reasoning else ""}</td><td>{100 * f.frequency:.3f}%</td><td>{f.max_activation:.2f}</td>'
            f"<td>{sum(think) / len(think):.2f}</td><td>{sum(end) / len(end):.2f}</td>"
            f"<td>{sum(c.at_marker for c in f.contexts)}/{len(f.contexts)}</td>"
            f'<td class="l">{top}</td></tr>'
        )
    return (
        '<table id="index"><tr><th>layer</th><th>latent</th><th>reasoning</th><th>fires</th><th>max</th>'
        f"<th>prompt: mean at {html.escape(THINK)}</th><th>prompt: mean at {html.escape(END_THINK)}</th>"
        "<th>top contexts at a marker</th>"
        f'<th class="l">top logit effects</th></tr>{"".join(rows)}</table>'
    )


def _header(dset: DashboardData) -> str:
    sinks = ", ".join(f"layer {k}: {v}" for k, v in dset.sinks.items())
    return f"""<h1>Feature dashboards</h1>
<p class="note">run <code>{html.escape(dset.run)}</code> · model <code>{html.escape(dset.model)}</code> ·
hook {html.escape(dset.hook)} · {len(dset.features)} latents<br>
data: {dset.n_texts} trigger texts from <code>{html.escape(dset.dataset)}</code> ({html.escape(dset.template)}
template), {dset.n_positions} positions (the shared system prompt counted once per text, ranked once among the
contexts) · a latent fires where its activation exceeds {dset.threshold:g}<br>
sinks: {html.escape(dset.sink_rule)}{f" (excluded positions: {sinks})" if sinks else ""}<br>
logit effects: {html.escape(dset.logit_rule)}</p>"""


def _plotly_script(plotlyjs: str) -> str:
    check_plotlyjs(plotlyjs)
    if plotlyjs == "cdn":
        from plotly.offline import get_plotlyjs_version

        return f'<script src="https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js" charset="utf-8"></script>'
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def fragment_html(dset: DashboardData, plotlyjs: str = "cdn") -> str:
    """The dashboards as an HTML fragment (style, plotly.js, index, sections): for notebooks."""
    body = "".join(feature_html(dset, f) for f in dset.features)
    head = f"<style>{STYLE}</style>{_plotly_script(plotlyjs)}"
    return f'{head}<div class="resa-dash">{_header(dset)}{_index(dset)}{body}</div>'


def page_html(dset: DashboardData, plotlyjs: str = "inline") -> str:
    """A whole HTML page that opens from disk."""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Feature dashboards</title></head><body>'
        f"{fragment_html(dset, plotlyjs)}</body></html>"
    )


def write_dashboard(dset: DashboardData, out: str | Path, plotlyjs: str = "inline") -> Path:
    """OUT/dashboard.html (the page) and OUT/dashboard.json (the numbers behind it); returns the page."""
    out = Path(out)
    page = atomic_write_text(out / "dashboard.html", page_html(dset, plotlyjs))
    atomic_write_json(out / "dashboard.json", dset.to_dict())
    return page


class DashboardSet(DashboardData):
    """The dashboards of a run (`DashboardData`), displayed inline in Jupyter as their HTML fragment (plotly.js
    from its CDN)."""

    def _repr_html_(self) -> str:
        return fragment_html(self, plotlyjs="cdn")
