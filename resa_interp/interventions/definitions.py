"""Two definitions of a reasoning feature on the same SAEs, side by side: the paper's marker rule (a features
run's features.json) and ReasonScore (Galichin et al. 2025) over reasoning texts. Per layer: each set's features
and counts, their overlap, and at a few layers where both sets are non-empty, `steer`'s ablation of each set
against a frequency-matched control of its own size, on the same trigger texts (`compare_definitions`;
analysis/reasonscore_comparison.py writes the report)."""

from __future__ import annotations

import json
from pathlib import Path

from resa_interp.errors import ResaError
from resa_interp.features import (
    REASON_WORDS,
    FeatureConfig,
    read_reason_texts,
    require_reason_words,
    run_features,
    words_in_texts,
)
from resa_interp.interventions.config import SteerConfig
from resa_interp.interventions.steer import METRICS, run_steer
from resa_interp.model import Subject, load_subject

SETS = ("markers", "reasonscore")
"""The two feature sets, by their keys in each layer row of the comparison."""


def marker_sets(run: str | Path) -> tuple[dict[int, list[int]], dict[int, dict[str, int]]]:
    """The marker rule's features per layer (primary seed) and its count per seed, from RUN/features.json."""
    doc = json.loads((Path(run) / "features.json").read_text())
    primary = {row["layer"]: row["features"] for row in doc["layers"]}
    seeds = {row["layer"]: row["counts"] for row in doc.get("seeds", {}).get("layers", [])}
    return primary, seeds or {layer: {"0": len(ids)} for layer, ids in primary.items()}


def overlap(a: list[int], b: list[int]) -> dict:
    """The latents in both sets and their Jaccard index (None when both are empty)."""
    both, union = sorted(set(a) & set(b)), set(a) | set(b)
    return {"intersection": both, "jaccard": len(both) / len(union) if union else None}


def steer_set(run: str | Path, layer: int, ids: list[int], out: str | Path, n_texts: int, subject: Subject,
              control_draws: int = 2, bootstrap: int = 500) -> dict:
    """Ablate `ids` at `layer` against frequency-matched controls on trigger texts: the edited latents (the set's
    and each control draw's), and each metric's mean [95% CI] for the set, the control and their paired
    difference."""
    cfg = SteerConfig(run=str(run), latents=",".join(f"{layer}:{i}" for i in ids), n_texts=n_texts,
                      control_draws=control_draws, bootstrap=bootstrap)
    result = run_steer(cfg, out, subject, progress=False)
    by_kind = {e.kind: e for e in result.effects}
    diff = result.differences[0]
    est = lambda e: {"mean": e.mean, "ci": [e.lo, e.hi]}  # noqa: E731
    return {"latents": by_kind["reasoning"].latents[layer][0], "control_latents": by_kind["control"].latents[layer],
            "n_texts": result.n_texts} | {
        kind: {m: est(getattr(by_kind[kind], m)) for m in METRICS} for kind in ("reasoning", "control")} | {
        "difference": {m: est(getattr(diff, m)) for m in METRICS}}


def compare_definitions(run: str | Path, texts: str | Path, out: str | Path, quantile: float,
                        steer_layers: int = 3, steer_texts: int = 16, subject: Subject | None = None,
                        control_draws: int = 2, bootstrap: int = 500) -> dict:
    """Everything the comparison reports (see the module docstring), JSON-ready: ReasonScore over `texts` on the
    SAEs of `run` (into OUT/features), beside RUN/features.json's marker-rule features; `steer` runs go into
    OUT/steer-<set>-l<layer>. Texts in which no reasoning word occurs are recorded as refused, with no
    ReasonScore set and no steer comparison."""
    run, out = Path(run), Path(out)
    rows = read_reason_texts(texts)
    doc = {"run": str(run), "texts": str(texts), "n_texts": len(rows),
           "word_occurrences": words_in_texts(rows, REASON_WORDS), "quantile": quantile}
    markers, marker_counts = marker_sets(run)
    try:  # texts without any reasoning word: what ReasonScore says of them is the finding
        require_reason_words(rows, REASON_WORDS, str(texts))
    except ResaError as exc:
        doc["reasonscore_refused"] = str(exc)
    per_layer = [{"layer": layer, "markers": markers[layer], "marker_counts": marker_counts.get(layer, {})}
                 for layer in sorted(markers)]
    doc["layers"] = per_layer
    if "reasonscore_refused" in doc:
        return doc
    model = json.loads((run / "features.json").read_text())["model_path"]  # the model the run's SAEs read
    cfg = FeatureConfig(definition="reasonscore", texts=str(texts), saes=str(run), quantile=quantile,
                        layers=",".join(map(str, sorted(markers))), model=model)
    subject = subject or load_subject(model, dtype=cfg.dtype, device=cfg.device)
    result = run_features(cfg, out / "features", subject)
    for row in per_layer:
        found = next(r for r in result.layers if r.layer == row["layer"]).features
        st = next((s for s in result.stability if s.layer == row["layer"]), None)
        row |= {"reasonscore": found,
                "reasonscore_counts": {str(s): c for s, c in st.counts.items()} if st else {"0": len(found)},
                **overlap(found, row["markers"])}
    doc["word_windows"] = result.word_counts
    chosen = [r for r in per_layer if r["markers"] and r["reasonscore"]][:steer_layers]
    doc["steer"] = {str(r["layer"]): {name: steer_set(run, r["layer"], r[name], out / f"steer-{name}-l{r['layer']}",
                                                      steer_texts, subject, control_draws, bootstrap)
                                      for name in SETS} for r in chosen}
    return doc
