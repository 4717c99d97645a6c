"""`steer` (do the features matter? edit them against a frequency-matched control) and `trace` (where they fire)."""

from __future__ import annotations

from typing import Any

import typer

from resa_interp.cli.fields import field_option, given
from resa_interp.cli.options import Out

COMMAND_CONFIGS = {"steer": [("interventions.config", "SteerConfig")],
                   "trace": [("interventions.config", "TraceConfig")]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _steer(name: str, *flags: str, default: str | None = None) -> Any:
    return field_option("interventions.config", "SteerConfig", name, *flags, default=default)


def _trace(name: str, *flags: str, default: str | None = None) -> Any:
    return field_option("interventions.config", "TraceConfig", name, *flags, default=default)


def steer(
    run: _steer("run"),
    out: Out,
    layers: _steer("layers") = None,
    latents: _steer("latents", default="reasoning") = None,
    mode: _steer("mode") = None,
    value: _steer("value") = None,
    texts: _steer("texts") = None,
    n_texts: _steer("n_texts") = None,
    generate: _steer("generate") = None,
    max_new_tokens: _steer("max_new_tokens") = None,
    control_draws: _steer("control_draws") = None,
    seed: _steer("seed") = None,
    model: _steer("model", "--model", "-m") = None,
    hook: _steer("hook") = None,
    device: _steer("device") = None,
) -> None:
    """Edit SAE latents (the SAE's error term kept) and measure what changes, beside a random control.

    Default latents: the run's reasoning features, each layer's edited alone and (with several layers) all at
    once. Control: as many random latents of similar firing frequency (sparsity.safetensors), edited the same
    way (--control-draws draws). Teacher-forced on --texts: change of log p at the <think>/</think> tokens and at
    other tokens, KL(clean || edited) per position, each with a bootstrap interval over texts, and the paired
    difference to the control. With --generate N: greedy continuations from an open <think> (reasoning-span
    length, answer graded with eval's grader when the `eval` extra is installed).
    Writes OUT/effects.json, OUT/samples.json, OUT/samples.html, OUT/figures/steer_effects.html.

    Example: resa-interp steer --run runs/default --mode ablate --texts trigger --out runs/default/steer
    """
    from resa_interp.errors import ResaError
    from resa_interp.evaluation import grade, require_grader
    from resa_interp.interventions import SteerConfig, run_steer
    from resa_interp.model import quiet_transformers

    quiet_transformers()
    cfg = SteerConfig(**given(run=run, layers=layers, latents=latents, mode=mode, value=value, texts=texts,
                              n_texts=n_texts, generate=generate, max_new_tokens=max_new_tokens,
                              control_draws=control_draws, seed=seed, model=model, hook=hook, device=device))
    cfg.check()
    grader = None
    if cfg.generate:
        try:
            require_grader()
            grader = lambda answer, gold: grade(answer, gold, "expr").correct  # noqa: E731
        except ResaError as exc:
            typer.echo(f"note: answers are not graded ({exc})", err=True)
    result = run_steer(cfg, out, grade=grader)
    by_name = {(e.name, e.kind): e for e in result.effects}
    typer.echo(f"{'edit':>10}  {'latents':>7}  {'Δlogp markers (95% CI)':>28}  {'control':>28}  "
               f"{'KL':>8}  {'KL control':>10}")
    for d in result.differences:
        chosen, control = by_name[(d.name, "reasoning")], by_name[(d.name, "control")]
        n = sum(len(v[0]) for v in chosen.latents.values())
        ci = lambda e: f"{e.mean:+.4f} [{e.lo:+.4f}, {e.hi:+.4f}]"  # noqa: E731
        typer.echo(f"{d.name:>10}  {n:>7}  {ci(chosen.dlogp_marker):>28}  {ci(control.dlogp_marker):>28}  "
                   f"{chosen.kl.mean:8.5f}  {control.kl.mean:10.5f}")
    for key, est in result.generation_summary.items():
        typer.echo(f"generation {key}: {est.mean:.3f} [{est.lo:.3f}, {est.hi:.3f}] (n={est.n})")
    typer.echo(f"effects: {result.paths['effects']}  samples: {result.paths['samples_html']}  "
               f"figure: {result.paths['figure']}")


def trace(
    run: _trace("run"),
    out: Out,
    text: _trace("text") = None,
    generate: _trace("generate") = None,
    layers: _trace("layers") = None,
    latents: _trace("latents", default="reasoning") = None,
    seed: _trace("seed") = None,
    model: _trace("model", "--model", "-m") = None,
    hook: _trace("hook") = None,
    device: _trace("device") = None,
) -> None:
    """Per-token activations of the reasoning features (or --latents) over a given or generated text.

    Writes OUT/trace.json (tokens, marker positions, activations per latent) and OUT/trace.html (heat map,
    latents x tokens, <think>/</think> columns outlined).

    Example: resa-interp trace --run runs/default --generate 96 --out runs/default/trace
    """
    from resa_interp.interventions import TraceConfig, run_trace
    from resa_interp.model import quiet_transformers

    quiet_transformers()
    result = run_trace(TraceConfig(**given(run=run, text=text, generate=generate, latents=latents, layers=layers,
                                           model=model, hook=hook, device=device, seed=seed)), out)
    t = result.trace
    fired = (t.acts > 0).sum(1)
    at_markers = (t.acts[:, t.markers] > 0).sum(1) if t.markers else fired * 0
    for (layer, latent), n, m in zip(t.latents, fired, at_markers):
        typer.echo(f"layer {layer:>3} latent {latent:>6}  fires on {n:>4}/{len(t.tokens)} tokens, {m} of them at a "
                   "marker")
    typer.echo(f"trace: {result.paths['html']}  data: {result.paths['json']}")
