"""`steer` (do the features matter? edit them against a frequency-matched control) and `trace` (where they fire)."""

from __future__ import annotations

from typing import Annotated

import typer

from resa_interp.cli.options import Device, Hook, Model, Out

Run = Annotated[str, typer.Option("--run", help="Run folder with saes/ (and features.json for 'reasoning').")]
Layers = Annotated[
    str | None,
    typer.Option("--layers", help="Only these layers (blocks.N): A-B or L,L,... [default: every layer with chosen "
                 "latents]."),
]
Latents = Annotated[
    str,
    typer.Option("--latents", help="'reasoning' (the run's reasoning features, per layer) or LAYER:ID pairs like "
                 "3:17,3:20,6:5."),
]


def steer(
    run: Run,
    out: Out,
    layers: Layers = None,
    latents: Latents = "reasoning",
    mode: Annotated[str, typer.Option("--mode", help="ablate (set to 0) | clamp (set to --value) | scale (times "
                                      "--value).")] = "ablate",
    value: Annotated[float, typer.Option("--value", help="Clamp value or scale factor (ablate ignores it).")] = 0.0,
    texts: Annotated[
        str,
        typer.Option("--texts", help="r1-prompt | trigger (synthetic trigger texts) | FILE.jsonl ('text', or "
                     "'problem' and 'answer', per row)."),
    ] = "trigger",
    n_texts: Annotated[int, typer.Option("--n-texts", help="Teacher-forced texts to measure on.")] = 16,
    generate: Annotated[
        int, typer.Option("--generate", help="Questions to continue greedily (clean, edited, control); 0: none.")
    ] = 0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens per continuation.")] = 96,
    control_draws: Annotated[
        int, typer.Option("--control-draws", help="Independent draws of frequency-matched random latents.")
    ] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the control draws, bootstrap and texts.")] = 0,
    model: Model = None,
    hook: Hook = None,
    device: Device = "cpu",
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
    from resa_interp.evaluation.grading import grade, require_grader
    from resa_interp.interventions import SteerConfig, run_steer
    from resa_interp.model.loading import quiet_transformers

    quiet_transformers()
    cfg = SteerConfig(run=run, layers=layers, latents=latents, mode=mode, value=value, texts=texts, n_texts=n_texts,
                      generate=generate, max_new_tokens=max_new_tokens, control_draws=control_draws, seed=seed,
                      model=model, hook=hook, device=device or "cpu")
    cfg.check()
    grader = None
    if generate:
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
    run: Run,
    out: Out,
    text: Annotated[str | None, typer.Option("--text", help="Text to trace.")] = None,
    generate: Annotated[
        int, typer.Option("--generate", help="Instead of --text: trace a greedy continuation of this many tokens "
                          "after a synthetic question in the r1 template (ending in an open <think>).")
    ] = 0,
    layers: Layers = None,
    latents: Latents = "reasoning",
    seed: Annotated[int, typer.Option("--seed", help="Which synthetic question --generate continues.")] = 0,
    model: Model = None,
    hook: Hook = None,
    device: Device = "cpu",
) -> None:
    """Per-token activations of the reasoning features (or --latents) over a given or generated text.

    Writes OUT/trace.json (tokens, marker positions, activations per latent) and OUT/trace.html (heat map,
    latents x tokens, <think>/</think> columns outlined).

    Example: resa-interp trace --run runs/default --generate 96 --out runs/default/trace
    """
    from resa_interp.interventions import run_trace
    from resa_interp.model.loading import quiet_transformers

    quiet_transformers()
    result = run_trace(run, out, text=text, generate=generate, latents=latents, layers=layers, model=model,
                       hook=hook, device=device or "cpu", seed=seed)
    t = result.trace
    fired = (t.acts > 0).sum(1)
    at_markers = (t.acts[:, t.markers] > 0).sum(1) if t.markers else fired * 0
    for (layer, latent), n, m in zip(t.latents, fired, at_markers):
        typer.echo(f"layer {layer:>3} latent {latent:>6}  fires on {n:>4}/{len(t.tokens)} tokens, {m} of them at a "
                   "marker")
    typer.echo(f"trace: {result.paths['html']}  data: {result.paths['json']}")
