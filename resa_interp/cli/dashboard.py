"""`dashboard`: what a feature does (top-activating contexts, histogram, logit effects, prompt markers)."""

from __future__ import annotations

from typing import Any

import typer

from resa_interp.cli.fields import field_option, given
from resa_interp.cli.options import Out

COMMAND_CONFIGS = {"dashboard": [("dashboard.config", "DashboardConfig")]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _dashboard(name: str, *flags: str, **kwargs: Any) -> Any:
    return field_option("dashboard.config", "DashboardConfig", name, *flags, **kwargs)


def dashboard(
    run: _dashboard("run", "--run", default=""),  # required: no default to show
    out: Out,
    layer: _dashboard("layer") = None,
    features: _dashboard("features", default="reasoning") = None,
    dataset: _dashboard("dataset", "--dataset", "-d") = None,
    texts: _dashboard("texts") = None,
    top: _dashboard("top") = None,
    include_sinks: _dashboard("include_sinks", "--include-sinks") = None,
    sink_ratio: _dashboard("sink_ratio") = None,
    threshold: _dashboard("threshold") = None,
    model: _dashboard("model", "--model", "-m") = None,
    hook: _dashboard("hook") = None,
    plotlyjs: _dashboard("plotlyjs") = None,
    device: _dashboard("device") = None,
) -> None:
    """Feature dashboards: top-activating contexts, activation histogram, logit effects, prompt markers, frequency.

    One self-contained page OUT/dashboard.html (index, then one section per latent) and OUT/dashboard.json.
    By default every reasoning feature found by `features`; sink positions (position 0 and high-norm ones) are
    left out unless --include-sinks. The model is the one the SAEs were trained on unless --model is given;
    --dataset defaults to the SAEs' training data, --threshold to the features run's (else 0), --hook to
    features.json's (else resid_post).

    Example: resa-interp dashboard --run runs/default --layer 12 --out runs/default/dashboard
    """
    from resa_interp.dashboard import DashboardConfig, run_dashboard
    from resa_interp.model import quiet_transformers

    quiet_transformers()
    cfg = DashboardConfig(**given(
        texts=texts, dataset=dataset, top=top, include_sinks=include_sinks, sink_ratio=sink_ratio,
        threshold=threshold, run=run, layer=layer, features=features, model=model, hook=hook, device=device,
        plotlyjs=plotlyjs,
    ))
    result = run_dashboard(cfg, out)
    for f in result.dashboards.features:
        tokens = " ".join(repr(t) for t, _ in f.logits_positive[:3])
        at_marker = sum(c.at_marker for c in f.contexts)
        ablated = f"{f.ablation.dlogp_marker:+.4f}" if f.ablation else "-"
        typer.echo(f"layer {f.layer:>3} latent {f.feature:>6}  fires {100 * f.frequency:7.3f}%  "
                   f"max {f.max_activation:8.3f}  top contexts at a marker {at_marker:>2}/{len(f.contexts)}  "
                   f"ablated: Δlogp markers {ablated}  logits+ {tokens}")
    typer.echo(f"dashboard: {result.page}")
