"""The select-layers stage: read counts (and scores), analyse them, write the report, record the stage."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from resa_interp.errors import ResaError
from resa_interp.layers.analysis import LayerAnalysis, analyze_layers
from resa_interp.layers.config import LayerConfig, check_transform
from resa_interp.layers.inputs import read_counts, read_scores
from resa_interp.layers.report import write_outputs
from resa_interp.runs import record_stage


def select_layers(config: LayerConfig, out: str | Path) -> LayerAnalysis:
    """Read `config.counts` (and `config.scores`), analyse, and write `out`/layers.json, `out`/layer_report.html
    and the figures (HTML + PNG)."""
    if config.counts is None:
        raise ResaError("no counts to fit; give --counts (a counts.csv or features.json)")
    check_transform(config.score_transform)
    counts = read_counts(config.counts)
    scores = (
        read_scores(config.scores, config.score_column, config.score_transform, config.temperature)
        if config.scores
        else None
    )
    analysis = analyze_layers(counts, scores, config)
    written = write_outputs(analysis, out)
    record_stage(
        out,
        "select-layers",
        {
            "counts": str(config.counts),
            "scores": str(config.scores) if config.scores else None,
            "config": asdict(config),
            "recommended_layers": analysis.recommendation.layers,
            "outputs": [p.name for p in written],
        },
    )
    return analysis
