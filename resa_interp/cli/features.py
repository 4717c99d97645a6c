"""`features`: prompt-only reasoning features, counted per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from resa_interp.cli.fields import field_option, given
from resa_interp.cli.options import NSeeds, Out, Seeds

COMMAND_CONFIGS = {"features": [("features.config", "FeatureConfig")]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _feature(name: str, *flags: str) -> Any:
    return field_option("features.config", "FeatureConfig", name, *flags)


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
    definition: _feature("definition") = None,
    texts: _feature("texts") = None,
    reason_words: _feature("reason_words") = None,
    window_before: _feature("window_before") = None,
    window_after: _feature("window_after") = None,
    alpha: _feature("alpha") = None,
    quantile: _feature("quantile") = None,
    top_k: _feature("top_k") = None,
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

    --definition reasonscore finds them instead by ReasonScore (Galichin et al. 2025) over the reasoning texts
    of --texts: per latent, its mean activation in windows around reasoning words ('wait', 'hmm', 'however',
    ...; --window-before/--window-after tokens) as a share of all latents', times its normalised entropy over
    the words to the --alpha, minus its share elsewhere; the latents above the --quantile of their SAE's
    scores (or the --top-k) are its features, written into the same files (their scores in features.json,
    every latent's in OUT/reasonscore.safetensors).

    On a multi-seed run (train-saes --seeds/--n-seeds; here --seeds/--n-seeds go to the Stage I run made when
    OUT has no SAEs, 3 seeds by default) every seed's SAEs are read, their latents matched across seeds by
    decoder direction (one-to-one, cosine >= --match-threshold), and each layer gets its count per seed, mean
    and spread, and the stable reasoning features (matched in at least --min-seeds seeds), printed first: the
    stable count is the headline. counts.csv gains a stable column (second) and count_seed_<s>, count_mean,
    count_std (count stays the first seed's), features.json a "seeds" section.

    Example: resa-interp features --out runs/default
    (ReasonScore: resa-interp features --saes runs/default --definition reasonscore --texts reasoning.jsonl
    --out runs/reasonscore)
    """
    from resa_interp.features import (
        FeatureConfig,
        format_headline,
        format_paths,
        format_seed_table,
        format_table,
        read_prompts,
        run_features,
    )
    from resa_interp.sae import parse_seeds

    cfg = FeatureConfig(**given(
        definition=definition, texts=texts, reason_words=reason_words, window_before=window_before,
        window_after=window_after, alpha=alpha, quantile=quantile, top_k=top_k, threshold=threshold,
        relative_threshold=relative_threshold, noise=noise, marker_rule=marker_rule,
        occurrences=occurrences, spliced=spliced, exclude_first=exclude_first, model=model,
        prompts=tuple(read_prompts(prompt, prompt_file, prompt_style)), saes=saes, source=source, layers=layers,
        hook=hook, allow_model_mismatch=allow_model_mismatch, device=device, dtype=dtype,
        match_threshold=match_threshold, min_seeds=min_seeds,
    ))
    cfg.check()  # prompts and options first: nothing below is cheap
    seed, more_seeds = parse_seeds(None, seeds, n_seeds)
    chosen = None if more_seeds is None else (seed, *more_seeds)
    result = run_features(cfg, out, train_missing=True, seeds=chosen, echo=typer.echo)
    if result.stability:
        typer.echo(format_headline(result.stability))
        typer.echo(format_seed_table(result.stability))
    if result.word_counts:
        typer.echo("reasoning-word windows in the texts: " + ", ".join(f"{w} {n}" for w, n in
                                                                       result.word_counts.items()))
    typer.echo(format_table(result.layers))
    if cfg.noise and cfg.definition == "markers":
        typer.echo(format_paths(result.layers))
    typer.echo(f"features: {Path(out) / 'features.json'}  counts: {result.paths['counts']}  "
               f"figure: {result.paths['figure']}")
