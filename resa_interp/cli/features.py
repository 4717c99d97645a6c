"""`features` (prompt-only reasoning features) and `dashboard` (what a feature does)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from resa_interp.cli.fields import field_option, given
from resa_interp.cli.options import (
    Dataset,
    Device,
    Hook,
    Model,
    NSeeds,
    Out,
    Seeds,
    Threshold,
)

COMMAND_CONFIGS = {"features": [("features.extract", "FeatureConfig")]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _feature(name: str, *flags: str) -> Any:
    return field_option("features.extract", "FeatureConfig", name, *flags)


def features(
    out: Out = "runs/default",
    model: _feature("model", "--model", "-m") = None,
    saes: _feature("saes") = None,
    source: _feature("source", "--from") = None,
    layers: _feature("layers") = None,
    prompt: Annotated[
        str | None,
        typer.Option(help="Prompt text [default: the R1 system prompt, with <think> and </think> twice each]."),
    ] = None,
    prompt_style: Annotated[
        str,
        typer.Option(help="The default prompt's form: r1 (the authors' code, with its line breaks) | r1-paper (the "
                     "printed one-line form)."),
    ] = "r1",
    prompt_file: Annotated[
        str | None,
        typer.Option(help="Several prompts (one per line, or JSONL with 'prompt'); a feature must qualify in every "
                     "one."),
    ] = None,
    threshold: _feature("threshold") = None,
    relative_threshold: _feature("relative_threshold") = None,
    noise: _feature("noise", "--noise/--no-noise") = None,
    marker_rule: _feature("marker_rule") = None,
    occurrences: _feature("occurrences") = None,
    spliced: _feature("spliced", "--spliced") = None,
    exclude_first: _feature("exclude_first", "--exclude-first") = None,
    hook: _feature("hook") = None,
    allow_model_mismatch: _feature("allow_model_mismatch", "--allow-model-mismatch") = None,
    device: _feature("device") = None,
    dtype: _feature("dtype") = None,
    seeds: Seeds = None,
    n_seeds: NSeeds = None,
    min_seeds: _feature("min_seeds") = None,
    match_threshold: _feature("match_threshold") = None,
) -> None:
    """Prompt-only reasoning features: SAE latents active only at <think> and </think>, counted per layer.

    A latent is a reasoning feature at layer l when its activation exceeds --threshold at every <think>
    and every </think> of the prompt (--occurrences any: at least one of each) and at no other position.
    A multi-token marker counts as active when any token of its span is (--marker-rule last: its last
    token; all: every token). A BOS the tokenizer prepends is excluded. Every feature records its margin
    (smallest marker activation minus largest activation elsewhere); with --noise (the default) the latents are
    recomputed through TransformerLens, SAELens' hooked model and the other precision, and the table counts
    the features within that numerical noise of the boundary. With no options this runs on the
    embedded model and, when OUT has no SAEs, trains them first (Stage I defaults, layers 1..L-2).
    Writes OUT/features.json, OUT/counts.csv and OUT/figures/feature_counts.html/.png.

    On a multi-seed run (train-saes --seeds/--n-seeds; here --seeds/--n-seeds go to the Stage I run made when
    OUT has no SAEs, 3 seeds by default) every seed's SAEs are read, their latents matched across seeds by
    decoder direction (one-to-one, cosine >= --match-threshold), and each layer gets its count per seed, mean
    and spread, and the stable reasoning features (matched in at least --min-seeds seeds), printed first: the
    stable count is the headline. counts.csv gains a stable column (second) and count_seed_<s>, count_mean,
    count_std (count stays the first seed's), features.json a "seeds" section.

    Example: resa-interp features --out runs/default
    """
    from resa_interp.errors import ResaError
    from resa_interp.features import FeatureConfig, default_layers, read_prompts, run_features
    from resa_interp.features.extract import format_headline, format_paths, format_seed_table, format_table
    from resa_interp.features.stability import MAIN_SEEDS, check_min_seeds
    from resa_interp.model import load_subject
    from resa_interp.sae import SAETrainConfig, parse_seeds, run_sae_dirs, run_seeds, train_saes

    cfg = FeatureConfig(**given(
        threshold=threshold, relative_threshold=relative_threshold, noise=noise, marker_rule=marker_rule,
        occurrences=occurrences, spliced=spliced, exclude_first=exclude_first, model=model,
        prompts=tuple(read_prompts(prompt, prompt_file, prompt_style)), saes=saes, source=source, layers=layers,
        hook=hook, allow_model_mismatch=allow_model_mismatch, device=device, dtype=dtype,
        match_threshold=match_threshold, min_seeds=min_seeds,
    ))
    cfg.check()  # prompts and options first: nothing below is cheap
    seed, more_seeds = parse_seeds(None, seeds, n_seeds)
    train_cfg = None
    if source is None and saes is None and not run_sae_dirs(out, cfg.hook):
        if more_seeds is None:
            seed, more_seeds = parse_seeds(seed, None, MAIN_SEEDS)
        train_cfg = SAETrainConfig(model=model, layers=layers or "", hook=cfg.hook, device=cfg.device,
                                   model_dtype=cfg.dtype, seed=seed or 0, seeds=more_seeds or ())
        train_cfg.check()
        if min_seeds is not None:
            check_min_seeds(min_seeds, len(train_cfg.all_seeds))
    elif more_seeds is not None and (source is not None or run_seeds(saes or out) != list(more_seeds)):
        raise ResaError(f"--seeds/--n-seeds {','.join(map(str, (seed, *more_seeds)))}: {source or saes or out} "
                        "already has SAEs of other seeds; these options only choose the seeds of the Stage I run "
                        "made when OUT has none")
    subject = load_subject(model, dtype=cfg.dtype, device=cfg.device)
    if train_cfg is not None:
        train_cfg.layers = layers or default_layers(subject.facts.n_layers)
        typer.echo(f"{out} has no SAEs: training them first (Stage I defaults, layers {train_cfg.layers}, "
                   f"seeds {','.join(map(str, train_cfg.all_seeds))})")
        train_saes(train_cfg, out, subject=subject)
    result = run_features(cfg, out, subject=subject)
    if result.stability:
        typer.echo(format_headline(result.stability))
        typer.echo(format_seed_table(result.stability))
    typer.echo(format_table(result.layers))
    if cfg.noise:
        typer.echo(format_paths(result.layers))
    typer.echo(f"features: {Path(out) / 'features.json'}  counts: {result.paths['counts']}  "
               f"figure: {result.paths['figure']}")


def dashboard(
    run: Annotated[str, typer.Option("--run", help="Run directory with saes/ (and features.json for 'reasoning').")],
    out: Out,
    layer: Annotated[int | None, typer.Option("--layer", help="Only this layer (needed for latent ids).")] = None,
    features: Annotated[
        str,
        typer.Option("--features", help="'reasoning' (every reasoning feature in RUN/features.json) or latent ids "
                     "like 3,17,200."),
    ] = "reasoning",
    dataset: Dataset = None,
    texts: Annotated[int, typer.Option("--texts", help="Trigger texts to harvest.")] = 128,
    top: Annotated[int, typer.Option("--top", help="Top-activating contexts per latent.")] = 12,
    include_sinks: Annotated[
        bool, typer.Option("--include-sinks", help="Keep position 0 and high-norm sink positions.")
    ] = False,
    sink_ratio: Annotated[
        float,
        typer.Option("--sink-ratio", help="A position whose activation norm exceeds this times the layer's median is "
                     "a sink."),
    ] = 4.0,
    threshold: Threshold = None,
    model: Model = None,
    hook: Hook = None,
    plotlyjs: Annotated[
        str,
        typer.Option("--plotlyjs", help="inline (the page works offline) | cdn (small page, loads plotly.js from its "
                     "CDN)."),
    ] = "inline",
    device: Device = "cpu",
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
    from resa_interp.model.loading import quiet_transformers

    quiet_transformers()
    cfg = DashboardConfig(texts=texts, dataset=dataset, top=top, include_sinks=include_sinks, sink_ratio=sink_ratio,
                          threshold=threshold, run=run, layer=layer, features=features, model=model, hook=hook,
                          device=device, plotlyjs=plotlyjs)
    result = run_dashboard(cfg, out)
    for f in result.dashboards.features:
        tokens = " ".join(repr(t) for t, _ in f.logits_positive[:3])
        at_marker = sum(c.at_marker for c in f.contexts)
        ablated = f"{f.ablation.dlogp_marker:+.4f}" if f.ablation else "-"
        typer.echo(f"layer {f.layer:>3} latent {f.feature:>6}  fires {100 * f.frequency:7.3f}%  "
                   f"max {f.max_activation:8.3f}  top contexts at a marker {at_marker:>2}/{len(f.contexts)}  "
                   f"ablated: Δlogp markers {ablated}  logits+ {tokens}")
    typer.echo(f"dashboard: {result.page}")
