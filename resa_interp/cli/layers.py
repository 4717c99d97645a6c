"""`select-layers`: Gaussian mixtures over layers, compared, and the hookpoints they recommend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resa_interp.cli.options import Out, Seed


def select_layers(
    counts: Annotated[
        Path, typer.Option("--counts", help="Per-layer reasoning-feature counts: counts.csv or features.json.")
    ],
    out: Out,
    scores: Annotated[
        Path | None, typer.Option("--scores", help="CSV with a 'layer' column and score columns (a sweep's output).")
    ] = None,
    score_column: Annotated[
        str | None, typer.Option("--score-column", help="Score column to use (default: 'avg', else the only one).")
    ] = None,
    components: Annotated[int, typer.Option("--components", help="Mixture components (the paper fits 3).")] = 3,
    score_transform: Annotated[
        str, typer.Option("--score-transform", help="Scores -> layer weights: shift-min, softmax or raw.")
    ] = "shift-min",
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature in score units.")] = 1.0,
    top: Annotated[int, typer.Option("--top", help="Hookpoints to recommend.")] = 3,
    max_components: Annotated[int, typer.Option("--max-components", help="BIC for 1..N components.")] = 5,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap replicates for 95% intervals.")] = 1000,
    permutations: Annotated[int, typer.Option("--permutations", help="Score shuffles for the p-value.")] = 1000,
    likelihood: Annotated[
        str, typer.Option("--likelihood", help="binned (layers as unit bins) or continuous (GaussianMixture's).")
    ] = "binned",
    min_std: Annotated[float, typer.Option("--min-std", help="Binned: smallest component std, in layers.")] = 0.5,
    restarts: Annotated[int, typer.Option("--restarts", help="EM starts for each fit to the data.")] = 200,
    resample_restarts: Annotated[
        int, typer.Option("--resample-restarts", help="EM starts for each bootstrap/permutation refit.")
    ] = 20,
    seed: Seed = 0,
) -> None:
    """Fit Gaussian mixtures over layers to feature counts (and per-layer scores), compare them, pick hookpoints.

    Prints a Markdown summary; writes OUT/layers.json, OUT/layers.md, OUT/layer_report.html and the figures
    OUT/layers_{gmm,bic,null}.html/.png. The seed drives EM starts, bootstrap and permutations.

    Example: resa-interp select-layers --counts analysis/paper_table6.csv --scores analysis/paper_table6.csv --out t6
    """
    from resa_interp.layers import LayerConfig, markdown_summary
    from resa_interp.layers import select_layers as run_select_layers

    config = LayerConfig(
        components=components, score_transform=score_transform, temperature=temperature, likelihood=likelihood,
        min_std=min_std, restarts=restarts, resample_restarts=resample_restarts, bootstrap=bootstrap,
        permutations=permutations, max_components=max_components, top=top, seed=seed, counts=str(counts),
        scores=str(scores) if scores is not None else None, score_column=score_column,
    )
    typer.echo(markdown_summary(run_select_layers(config, out)))
