"""What a features run writes: features.json, counts.csv (the input of select-layers) and the figure of counts
per layer (paper Figure 3), with a multi-seed run's matching and per-seed columns; by ReasonScore, the same files
(its definition, settings and the features' scores in features.json) and every latent's score
(reasonscore.safetensors)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save

from resa_interp.features.boundary import BOUNDARY
from resa_interp.features.config import FeatureConfig
from resa_interp.features.extract import DEFINITION, LayerFeatures
from resa_interp.features.prompts import PromptInfo
from resa_interp.features.reasonscore import SCORE_DEFINITION, LayerScores
from resa_interp.features.stability import STABILITY_RULE, LayerStability
from resa_interp.figures import save_figure
from resa_interp.model import Subject
from resa_interp.runs import SEED_COLUMN, atomic_write_bytes, atomic_write_json, atomic_write_text

MARKER_AXIS = "features active only at <think> and </think>"
SCORES_FILE = "reasonscore.safetensors"
"""Every latent's ReasonScore per layer (key: the hook name, blocks.L.hook_...), of the primary seed."""


def counts_figure(layers: list[LayerFeatures], title: str, seed_counts: dict[int, list[int]] | None = None,
                  stable: list[int] | None = None, axis: str = MARKER_AXIS):
    """Bar chart of reasoning-feature counts over layers (paper Figure 3) with each SAE's explained variance;
    with `seed_counts` (seed -> count per layer of a multi-seed run) every seed's count as a dot, and with `stable`
    (the stable count per layer, the headline of a multi-seed run) those as the first, dark bars; `axis` names
    what is counted."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    xs = [r.layer for r in layers]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if stable is not None:
        fig.add_trace(go.Bar(x=xs, y=stable, name="stable across seeds", marker_color="#1B2A49"))
    name = f"reasoning features (seed {next(iter(seed_counts))})" if seed_counts else "reasoning features"
    fig.add_trace(go.Bar(x=xs, y=[r.count for r in layers], name=name, marker_color="#4C72B0"))
    for seed, counts in (seed_counts or {}).items():
        fig.add_trace(go.Scatter(x=xs, y=counts, mode="markers", name=f"seed {seed}",
                                 marker={"size": 7, "line": {"width": 1, "color": "white"}}))
    ev = [r.sae_quality.get("explained_variance_qa") for r in layers]
    if any(v is not None for v in ev):
        fig.add_trace(
            go.Scatter(x=xs, y=ev, name="SAE explained variance (q/a tokens)", mode="lines+markers",
                       line={"color": "#DD8452"}),
            secondary_y=True,
        )
    fig.update_layout(title=title, xaxis_title="layer (hook index, blocks.N; the paper's N-th layer is blocks.N-1)",
                      template="plotly_white", bargap=0.15)
    fig.update_yaxes(title_text=axis, secondary_y=False)
    fig.update_yaxes(title_text="explained variance", range=[0, 1.02], secondary_y=True)
    return fig


def write_outputs(
    out: Path,
    subject: Subject,
    hook: str,
    cfg: FeatureConfig,
    infos: list[PromptInfo],
    layers: list[LayerFeatures],
    stability: list[LayerStability] = (),
    min_seeds: int = 1,
    *,
    scores: dict[int, LayerScores] | None = None,
    word_counts: dict[str, int] | None = None,
    n_texts: int = 0,
) -> dict[str, Path]:
    """features.json, counts.csv and figures/feature_counts.html/.png in `out`; with `stability` (a multi-seed
    run) features.json records the matching and counts.csv gains per-seed columns; with `scores` (ReasonScore)
    features.json records its definition, settings and features' scores, and reasonscore.safetensors every
    latent's score."""
    doc = {
        "definition": SCORE_DEFINITION if scores else DEFINITION,
        "model": subject.spec,
        "model_path": str(subject.path),
        "n_layers": subject.facts.n_layers,
        "hook": hook,
        "threshold": cfg.threshold,
        "relative_threshold": cfg.relative_threshold,
        "boundary": BOUNDARY if cfg.noise else None,
        "marker_rule": cfg.marker_rule,
        "occurrences": cfg.occurrences,
        "spliced": cfg.spliced,
        "exclude_first": cfg.exclude_first,
        "prompts": [asdict(info) for info in infos],
        "layers": [asdict(layer) for layer in layers],
    }
    if scores:
        doc["reasonscore"] = reasonscore_doc(cfg, layers, scores, word_counts or {}, n_texts)
    if stability:
        doc["seeds"] = stability_doc(stability, cfg, min_seeds)
    paths = {"features": atomic_write_json(out / "features.json", doc)}
    if scores:
        paths["scores"] = write_scores(out / SCORES_FILE, {r.hook_name: scores[r.layer].scores for r in layers})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    seeds = list(stability[0].counts) if stability else []
    writer.writerow(["layer", *(("stable",) if seeds else ()), "count", *(f"{SEED_COLUMN}{s}" for s in seeds),
                     *(("count_mean", "count_std") if seeds else ())])
    for i, r in enumerate(layers):
        if seeds:
            st = stability[i]
            writer.writerow([r.layer, st.stable_count, r.count, *st.counts.values(), round(st.mean, 6),
                             round(st.std, 6)])
        else:
            writer.writerow([r.layer, r.count])
    paths["counts"] = atomic_write_text(out / "counts.csv", buffer.getvalue())
    kind = "ReasonScore" if scores else ("spliced" if cfg.spliced else "clean") + " activations"
    title = f"Reasoning features per layer — {subject.spec} ({kind})"
    seed_counts = {s: [st.counts[s] for st in stability] for s in seeds} if seeds else None
    stable = [st.stable_count for st in stability] if seeds else None
    axis = f"features above ReasonScore's cutoff ({selection_rule(cfg)})" if scores else MARKER_AXIS
    written = save_figure(counts_figure(layers, title, seed_counts, stable, axis), out / "figures" / "feature_counts")
    paths["figure"] = written[0]
    return paths


def stability_doc(stability: list[LayerStability], cfg: FeatureConfig, min_seeds: int) -> dict:
    """What features.json records of a multi-seed run: the seeds, the matching rule, and per layer the count in
    each seed, its mean and spread, the stable groups with their per-seed ids, and every above-threshold match."""
    return {
        "seeds": list(stability[0].counts),
        "primary": next(iter(stability[0].counts)),
        "match_threshold": cfg.match_threshold,
        "min_seeds": min_seeds,
        "matching": STABILITY_RULE,
        "layers": [
            {
                "layer": st.layer,
                "counts": {str(s): c for s, c in st.counts.items()},
                "count_mean": round(st.mean, 6),
                "count_std": round(st.std, 6),
                "stable": st.stable_count,
                "groups": [{"ids": {str(s): ids for s, ids in g.ids.items()}, "seeds": g.n_seeds, "stable": g.stable}
                           for g in st.groups],
                "matches": [asdict(m) for m in st.matches],
            }
            for st in stability
        ],
    }


def selection_rule(cfg: FeatureConfig) -> str:
    """ReasonScore's selection as words: 'top 100' or 'above the 0.997 quantile'."""
    return f"top {cfg.top_k}" if cfg.top_k is not None else f"above the {cfg.quantile} quantile"


def reasonscore_doc(cfg: FeatureConfig, layers: list[LayerFeatures], scores: dict[int, LayerScores],
                    word_counts: dict[str, int], n_texts: int) -> dict:
    """What features.json records of a ReasonScore run: the texts, words and settings, each word's windows in the
    texts, and per layer the cutoff and every feature's score and share of its activation mass per word."""
    return {
        "texts": cfg.texts,
        "n_texts": n_texts,
        "reason_words": cfg.reason_words or "the authors' list (features.config.REASON_WORDS)",
        "window": [cfg.window_before, cfg.window_after],
        "alpha": cfg.alpha,
        "selection": selection_rule(cfg),
        "word_windows": word_counts,
        "scores_file": SCORES_FILE,
        "layers": [
            {"layer": r.layer, "cutoff": round(scores[r.layer].cutoff, 9),
             "scores": {str(i): round(float(scores[r.layer].scores[i]), 9) for i in r.features},
             "word_share": scores[r.layer].word_share}
            for r in layers
        ],
    }


def write_scores(path: Path, scores: dict) -> Path:
    """Every latent's score per hook name, as safetensors, written atomically."""
    return atomic_write_bytes(path, save({name: s.contiguous().float() for name, s in scores.items()}))
