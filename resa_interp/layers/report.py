"""select-layers outputs: layers.json, a Markdown summary, plotly figures (HTML + PNG) and one self-contained
HTML report, all from a `LayerAnalysis`. Every table is built once and rendered both as Markdown and HTML."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from resa_interp.figures import save_figure
from resa_interp.layers.analysis import LayerAnalysis
from resa_interp.layers.fits import MixtureFit
from resa_interp.numbering import NUMBERING, layer_title, paper_label
from resa_interp.runs import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

Table = tuple[str, list[str], list[list[str]]]  # title, header, rows


def write_outputs(analysis: LayerAnalysis, directory: str | Path, prefix: str = "") -> list[Path]:
    """Write `prefix`layers.json, `prefix`layers.md, `prefix`layer_report.html and `prefix`layers_<figure>.html/.png."""
    directory = Path(directory)
    written = [
        atomic_write_json(directory / f"{prefix}layers.json", analysis.to_dict()),
        atomic_write_text(directory / f"{prefix}layers.md", markdown_summary(analysis)),
    ]
    figs = figures(analysis)
    for name, fig in figs.items():
        written += save_figure(fig, directory / f"{prefix}layers_{name}")
    written.append(atomic_write_text(directory / f"{prefix}layer_report.html", html_report(analysis, figs)))
    return written


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(ci: tuple[float, float] | None, digits: int = 2) -> str:
    return "–" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _fits(analysis: LayerAnalysis) -> list[tuple[str, MixtureFit]]:
    return [(name, fit) for name, fit in (("counts", analysis.counts), ("scores", analysis.scores)) if fit is not None]


PSEUDO = "scores (pseudo-likelihood)"
"""How likelihood-based columns name the score fit: a score profile is fitted as if it were a count distribution."""
LAYER_AXIS = "layer: hook index N = blocks.N (the paper's (N+1)-th layer)"
"""The layer axis title of every figure."""


def _likelihood_name(name: str) -> str:
    return PSEUDO if name == "scores" else name


def _compact(layers: list[int]) -> str:
    """'blocks 18, 6, 26 (paper: 19th, 7th, 27th)': a short form of several layers for figure titles. Not
    `numbering.describe_layers`: the layers keep their order (the recommendation's, best first) and are never
    joined into a range, and 'blocks' is said once, to keep the title short."""
    return f"blocks {', '.join(map(str, layers))} (paper: {', '.join(map(paper_label, layers))})"


def recommended(analysis: LayerAnalysis) -> str:
    """'blocks.12 (paper: 13th), blocks.5 (paper: 6th)': the recommended layers in both numberings."""
    return ", ".join(layer_title(layer) for layer in analysis.recommendation.layers)


def tables(analysis: LayerAnalysis) -> list[Table]:
    """The summary tables: components, spread, BIC, alignment, recommendation."""
    fits = _fits(analysis)
    boot = analysis.counts.replicates and len(analysis.counts.replicates)
    components = [
        [name, str(i + 1), _fmt(c.mean), _ci(c.mean_ci), _fmt(c.std), _fmt(c.weight), _ci(c.weight_ci)]
        for name, fit in fits
        for i, c in enumerate(fit.components)
    ]
    spread = [
        [
            name,
            _fmt(f.entropy, 3),
            _ci(f.entropy_ci, 3),
            _fmt(f.entropy_bootstrap_bias, 3),
            _fmt(f.weight_entropy, 3),
            _ci(f.weight_entropy_ci, 3),
            _fmt(f.mean_loglik, 4),
            str(f.bic_best),
        ]
        for name, f in ((_likelihood_name(n), f) for n, f in fits)
    ]
    ks = sorted(set().union(*(f.bic for _, f in fits)))
    bic = [[str(k)] + [_fmt(f.bic.get(k), 1) if k in f.bic else "–" for _, f in fits] for k in ks]
    out: list[Table] = [
        (
            f"Mixture components (95% bootstrap intervals, {boot or 0} replicates)",
            ["fit", "component", "mean (hook index)", "95% CI", "std (layers)", "weight", "95% CI"],
            components,
        ),
        (
            "Spread and model size",
            [
                "fit",
                "entropy (nats)",
                "95% CI",
                "bootstrap bias",
                "weight entropy (nats)",
                "95% CI",
                "mean log-lik",
                "BIC-best K",
            ],
            spread,
        ),
        ("BIC by number of components (lower is better)", ["K"] + [_likelihood_name(n) for n, _ in fits], bic),
    ]
    seed_variance = analysis.counts.seed_variance
    if seed_variance is not None:
        out.append(
            (
                f"Uncertainty from SAE training ({len(analysis.counts.data.seed_values)} seeds; intervals above draw a "
                "seed, then its features)",
                ["component", "parameter", "variance over seeds", "variance over features", "seed share"],
                [
                    [str(i + 1), name, _fmt(v["seed"], 4), _fmt(v["features"], 4), f"{100 * v['seed_share']:.0f}%"]
                    for i, row in enumerate(seed_variance)
                    for name, v in row.items()
                ],
            )
        )
    al = analysis.alignment
    if al is not None:
        out.append(
            (
                "Matched components (optimal assignment)",
                ["counts component", "scores component", "|Δ mean| (layers)", "|Δ weight|"],
                [
                    [
                        str(p.counts_component + 1),
                        str(p.scores_component + 1),
                        _fmt(p.abs_mean_diff),
                        _fmt(p.abs_weight_diff, 3),
                    ]
                    for p in al.pairs
                ],
            )
        )
        out.append(
            (
                "Alignment",
                ["statistic", "value"],
                [
                    ["Hellinger distance between the mixtures", _fmt(al.hellinger, 3)],
                    [
                        f"permutation p-value ({al.null.size} shuffles of scores over layers, statistic "
                        f"{_fmt(al.statistic, 3)})",
                        _fmt(al.p_value, 4),
                    ],
                    ["weight L1 over matched components", _fmt(al.weight_l1, 3)],
                    ["entropy difference, scores − counts (nats)", _fmt(al.entropy_difference, 3)],
                    ["weight-entropy difference, scores − counts (nats)", _fmt(al.weight_entropy_difference, 3)],
                ],
            )
        )
    rec = analysis.recommendation
    header = ["rank", "hook", "paper's layer", "mode", "count mass"]
    header += ["score mass", "joint mass"] if analysis.scores else []
    rows = [
        [str(d["rank"]), f"blocks.{d['layer']}", d["paper_label"], "yes" if d["mode"] else "no"]
        + [_fmt(d["count_mass"], 4)]
        + ([_fmt(d["score_mass"], 4), _fmt(d["joint_mass"], 4)] if analysis.scores else [])
        for d in rec.details
    ]
    out.append((f"Recommended layers: {recommended(analysis)}", header, rows))
    return out


def _inputs_line(analysis: LayerAnalysis) -> str:
    counts = analysis.counts.data
    first, last = int(counts.layers.min()), int(counts.layers.max())
    line = (
        f"counts: {counts.source} ({int(counts.values.sum())} features over {len(counts.layers)} layers, "
        f"blocks.{first}–blocks.{last}, the paper's {paper_label(first)}–{paper_label(last)})"
    )
    if analysis.scores is not None:
        line += f"; scores: {analysis.scores.data.source}, transform {analysis.config.score_transform}"
    return line


def markdown_summary(analysis: LayerAnalysis) -> str:
    """The summary printed by select-layers (and written as layers.md)."""
    method = analysis.to_dict()["method"]
    parts = [
        f"# Layer alignment ({analysis.config.components}-component Gaussian mixtures over layers)",
        "",
        _inputs_line(analysis),
        "",
        f"Numbering: {NUMBERING}.",
        "",
    ]
    for title, header, rows in tables(analysis):
        parts += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("")
    rec = analysis.recommendation
    parts.append(f"Rule: {rec.rule}.")
    if rec.note:
        parts.append(f"Note: {rec.note}.")
    parts += ["", "## Method", ""] + [f"- {key}: {text}" for key, text in method.items()]
    return "\n".join(parts) + "\n"


def figures(analysis: LayerAnalysis) -> dict[str, go.Figure]:
    """'gmm' (data and the mass both fitted mixtures put on each layer), 'bic', and 'null' (permutation test)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fits = _fits(analysis)
    layers = analysis.counts.data.layers
    colours = {"counts": "#1f77b4", "scores": "#d62728"}
    titles = {
        "counts": "reasoning-feature counts: share of features per layer",
        "scores": f"scores ({analysis.config.score_transform}): share of weight per layer",
    }
    gmm = make_subplots(rows=len(fits), cols=1, shared_xaxes=True, subplot_titles=[titles[n] for n, _ in fits])
    for row, (name, fit) in enumerate(fits, 1):
        gmm.add_bar(
            x=layers,
            y=fit.data.weights / fit.data.weights.sum(),
            name=f"{name} data",
            marker_color=colours[name],
            opacity=0.45,
            row=row,
            col=1,
        )
        for other, other_fit in fits:
            gmm.add_scatter(
                x=layers,
                y=other_fit.mixture.bin_probs(layers),
                mode="lines+markers",
                name=f"{other} mixture",
                line={"color": colours[other], "dash": "solid" if other == name else "dash"},
                showlegend=row == 1,
                row=row,
                col=1,
            )
        gmm.update_yaxes(title_text="share / fitted mass", row=row, col=1)
    for layer in analysis.recommendation.layers:
        gmm.add_vline(x=layer, line_dash="dot", line_color="green")
    gmm.update_xaxes(title_text=LAYER_AXIS, dtick=1, row=len(fits), col=1)
    gmm.update_layout(
        title=f"{analysis.config.components}-component mixtures: fitted mass per layer "
        f"(dotted: recommended {_compact(analysis.recommendation.layers)})",
        height=330 * len(fits) + 120,
        width=1000,
        template="plotly_white",
        bargap=0.1,
    )
    out = {"gmm": gmm}

    bic = go.Figure()
    for name, fit in fits:
        ks = sorted(fit.bic)
        best = min(fit.bic.values())
        bic.add_scatter(
            x=ks,
            y=[fit.bic[k] - best for k in ks],
            mode="lines+markers",
            name=_likelihood_name(name),
            line={"color": colours[name]},
        )
    bic.update_layout(
        title="BIC relative to each fit's best (0 = preferred number of components)",
        xaxis_title="components K",
        yaxis_title="BIC − min BIC",
        xaxis_dtick=1,
        template="plotly_white",
        width=700,
        height=420,
    )
    out["bic"] = bic

    al = analysis.alignment
    if al is not None and al.null.size:
        null = go.Figure(go.Histogram(x=al.null, nbinsx=40, name="shuffled scores", marker_color="#7f7f7f"))
        null.add_vline(
            x=al.statistic,
            line_color=colours["scores"],
            line_width=3,
            annotation_text=f"observed {al.statistic:.3f}, p = {al.p_value:.3g}",
        )
        null.update_layout(
            title="Hellinger distance to the count mixture: observed vs scores shuffled over layers",
            xaxis_title="Hellinger distance",
            yaxis_title="shuffles",
            template="plotly_white",
            width=800,
            height=420,
            showlegend=False,
        )
        out["null"] = null
    return out


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1080px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 9px;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code{background:#f3f3f3}"
)


def html_report(analysis: LayerAnalysis, figs: dict[str, go.Figure]) -> str:
    """One HTML page (plotly.js inlined once) with the figures, tables, recommendation and method."""
    esc = html.escape
    body = [
        f"<h1>Layer alignment: {analysis.config.components}-component Gaussian mixtures over layers</h1>",
        f"<p>{esc(_inputs_line(analysis))}</p>",
        f"<p>Numbering: {esc(NUMBERING)}.</p>",
    ]
    first = True
    for name in ("gmm", "bic", "null"):
        if name in figs:
            body.append(figs[name].to_html(full_html=False, include_plotlyjs=first, div_id=f"layers-{name}"))
            first = False
    for title, header, rows in tables(analysis):
        body.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        body.append("</table>")
    rec = analysis.recommendation
    body.append(f"<p><b>Rule:</b> {esc(rec.rule)}.</p>")
    if rec.note:
        body.append(f"<p><b>Note:</b> {esc(rec.note)}.</p>")
    body.append("<h2>Method</h2><ul>")
    body += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in analysis.to_dict()["method"].items()]
    body.append("</ul>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Layer alignment</title>"
        f"<style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
