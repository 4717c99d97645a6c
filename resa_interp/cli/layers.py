"""`select-layers`: Gaussian mixtures over layers, compared, and the hookpoints they recommend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from resa_interp.cli.fields import field_option, given
from resa_interp.cli.options import Out

COMMAND_CONFIGS = {"select-layers": [("layers.config", "LayerConfig")]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _layer(name: str, *flags: str, **kw: Any) -> Any:
    return field_option("layers.config", "LayerConfig", name, *flags, **kw)


def select_layers(
    counts: _layer("counts", kind=Path, default=""),
    out: Out,
    scores: _layer("scores", kind=Path) = None,
    score_column: _layer("score_column") = None,
    components: _layer("components") = None,
    score_transform: _layer("score_transform") = None,
    temperature: _layer("temperature") = None,
    top: _layer("top") = None,
    max_components: _layer("max_components") = None,
    bootstrap: _layer("bootstrap") = None,
    permutations: _layer("permutations") = None,
    likelihood: _layer("likelihood") = None,
    min_std: _layer("min_std") = None,
    restarts: _layer("restarts") = None,
    resample_restarts: _layer("resample_restarts") = None,
    seed: _layer("seed") = None,
) -> None:
    """Fit Gaussian mixtures over layers to feature counts (and per-layer scores), compare them, pick hookpoints.

    Prints a Markdown summary; writes OUT/layers.json, OUT/layers.md, OUT/layer_report.html and the figures
    OUT/layers_{gmm,bic,null}.html/.png. The seed drives EM starts, bootstrap and permutations.

    Example: resa-interp select-layers --counts analysis/paper_table6.csv --scores analysis/paper_table6.csv --out t6
    """
    from resa_interp.layers import LayerConfig, markdown_summary
    from resa_interp.layers import select_layers as run_select_layers

    config = LayerConfig(**given(
        components=components, score_transform=score_transform, temperature=temperature, likelihood=likelihood,
        min_std=min_std, restarts=restarts, resample_restarts=resample_restarts, bootstrap=bootstrap,
        permutations=permutations, max_components=max_components, top=top, seed=seed, counts=str(counts),
        scores=str(scores) if scores is not None else None, score_column=score_column,
    ))
    typer.echo(markdown_summary(run_select_layers(config, out)))
