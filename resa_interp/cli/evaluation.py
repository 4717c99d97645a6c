"""`eval` (Pass@1 on the paper's tasks or local ones) and `sweep` (SAE-Tuning then eval at every layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from resa_interp.cli.fields import field_option, given
from resa_interp.cli.options import Device, DryRun, Out, Preset, Shard
from resa_interp.cli.tuning import TuneLoraTargets, TuneModel, tune_option

SWEEP_TUNING = ("model", "hook", "dataset", "epochs", "steps", "lr", "lora_r", "lora_alpha", "lora_dropout",
                "lora_targets", "save_every", "seed")
"""The sweep's options that are `TuneConfig`'s fields under their own names (its --train-limit is `limit`)."""
COMMAND_CONFIGS = {
    "eval": [("evaluation.config", "EvalConfig")],
    "sweep": [("evaluation.config", "SweepConfig"), ("tuning.config", "TuneConfig", SWEEP_TUNING)],
}
"""The configs each command of this module builds: its options named like their fields come from them (only the
fields listed, where a third item lists them). The sweep's evaluation options are `EvalConfig`'s fields too, but
its --seed is tuning's and --device every stage's, so `EvalConfig` is not listed for it."""


def _eval(name: str, *flags: str, default: str | None = None) -> Any:
    return field_option("evaluation.config", "EvalConfig", name, *flags, default=default)


def _sweep(name: str, *flags: str, default: str | None = None) -> Any:
    return field_option("evaluation.config", "SweepConfig", name, *flags, default=default)


def evaluate(
    out: Out,
    model: _eval("model", "--model", "-m") = None,
    tasks: _eval("tasks") = None,
    backend: _eval("backend") = None,
    samples: _eval("samples") = None,
    max_new_tokens: _eval("max_new_tokens") = None,
    temperature: _eval("temperature") = None,
    top_p: _eval("top_p") = None,
    limit: _eval("limit") = None,
    seed: _eval("seed") = None,
    batch_size: _eval("batch_size") = None,
    device: _eval("device") = None,
    dtype: _eval("dtype") = None,
    gpu_memory_utilization: _eval("gpu_memory_utilization") = None,
    data_parallel_size: _eval("data_parallel_size") = None,
    dry_run: DryRun = False,
) -> None:
    """Evaluate a model: zero-shot Pass@1 on the paper's tasks (lighteval + vLLM on GPU) or locally (transformers).

    Writes OUT/scores.json and OUT/samples.jsonl and prints a table in the paper's column order with Avg.
    The resolved settings are printed first, each one that differs from the paper's marked; --dry-run stops
    after them and the plan.

    Example: resa-interp eval --tasks synthetic --backend transformers --limit 20 --max-new-tokens 256 --out runs/eval
    """
    from resa_interp.evaluation import EvalConfig, eval_settings, format_table, parse_task_list, plan_evaluation
    from resa_interp.evaluation import evaluate as run_evaluate

    config = EvalConfig(**given(
        model=model, tasks=tuple(parse_task_list(tasks)) if tasks is not None else None, backend=backend,
        samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, limit=limit, seed=seed,
        batch_size=batch_size, device=device, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
        data_parallel_size=data_parallel_size,
    ))
    typer.echo(eval_settings(config).format())
    typer.echo(plan_evaluation(config, out))
    if dry_run:
        return
    result = run_evaluate(config, out)
    typer.echo(format_table(result))
    typer.echo(f"wrote {out}/scores.json and {out}/samples.jsonl")


def sweep(
    out: Out,
    layers: _sweep("layers", default="1..L-2; --preset paper: 1-26") = None,
    model: TuneModel = None,
    saes_run: _sweep("saes_run", "--saes") = None,
    hook: tune_option("hook") = None,
    dataset: tune_option("dataset", "--dataset", "-d") = None,
    train_limit: tune_option("limit", "--train-limit") = None,
    epochs: tune_option("epochs") = None,
    steps: tune_option("steps") = None,
    lr: tune_option("lr") = None,
    lora_r: tune_option("lora_r") = None,
    lora_alpha: tune_option("lora_alpha") = None,
    lora_dropout: tune_option("lora_dropout") = None,
    lora_targets: TuneLoraTargets = None,
    save_every: tune_option("save_every") = None,
    seed: tune_option("seed") = None,
    tasks: _sweep("tasks", default="synthetic; --preset paper: the paper's six") = None,
    backend: _eval("backend", default="transformers; --preset paper: vllm") = None,
    samples: _eval("samples") = None,
    max_new_tokens: _eval("max_new_tokens", default="256; --preset paper: 32768") = None,
    temperature: _eval("temperature") = None,
    limit: _eval("limit", default="20; --preset paper: all") = None,
    eval_seed: _eval("seed", "--eval-seed") = None,
    batch_size: _eval("batch_size") = None,
    device: Device = None,
    report_to: _sweep("report_to") = None,
    preset: Preset = "cpu",
    shard: Shard = None,
    dry_run: DryRun = False,
) -> None:
    """Per-layer sweep: SAE-Tuning at every layer with its Stage I SAE, each tuned model evaluated, into OUT/scores.csv.

    OUT holds layer-L/ (the tuned model and its eval/), scores.csv and manifest.json; the Stage I run too unless
    --saes. Resumable: finished layers are kept, an interrupted tuning continues from its checkpoint. The scores
    file (layer, one column per task in percent, avg) is what select-layers --scores reads. --preset cpu: the
    embedded model, short tuning, 20 synthetic problems; paper: Table 6 (R1-Distill, STILL, layers 1-26, which
    the paper calls its 2nd..27th, the six tasks on vLLM). The device applies to Stage I, tuning and evaluation.
    The resolved settings are printed first, each one that differs from the paper's marked; --dry-run stops
    after them and the plan. Across processes: under torchrun each rank sweeps layers[rank::world_size] on its own
    GPU (rank 0 prints the settings, the plan and the summary); --shard I/N does the same for job arrays. Every
    process rewrites scores.csv from all finished layers on disk; a rerun without --shard completes the rest.
    Sharded sweeps need SAEs already there (OUT or --saes).

    Example: resa-interp sweep --layers 11,12 --steps 10 --limit 5 --max-new-tokens 128 --out runs/default
    """
    from resa_interp.evaluation import GOLD_LOGPROB, parse_task_list, plan_sweep, sweep_config, sweep_settings
    from resa_interp.evaluation import sweep as run_sweep
    from resa_interp.model import quiet_transformers
    from resa_interp.shards import is_main_process, pin_rank_gpu, process_shard
    from resa_interp.tuning import lora_targets as parse_targets

    part = process_shard(shard)
    pin_rank_gpu()  # before anything touches CUDA
    quiet_transformers()
    # under a launcher the ranks share one terminal: rank 0 alone prints the settings, the plan and the summary
    talks = is_main_process()
    config = sweep_config(
        preset, layers=layers, tasks=parse_task_list(tasks) if tasks is not None else None, saes_run=saes_run,
        device=device, report_to=report_to,
        tune=dict(
            model=model, hook=hook, dataset=dataset, limit=train_limit, epochs=epochs, steps=steps, lr=lr,
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            lora_targets=parse_targets(lora_targets) if lora_targets else None, save_every=save_every, seed=seed,
        ),
        evaluation=dict(
            backend=backend, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, limit=limit,
            seed=eval_seed, batch_size=batch_size,
        ),
    )
    if talks:
        typer.echo(sweep_settings(config, preset).format())
        typer.echo(plan_sweep(config, out))
    if dry_run:
        return
    result = run_sweep(config, out, echo=typer.echo, shard=part)
    if not talks:
        return
    mine = f"{part.label}: " if part.sharded else ""
    typer.echo(f"{mine}{len(result.layers)} layers in {result.wall_s:.0f} s; scores: {result.scores_csv} "
               f"({len(result.merged)} of {len(result.planned)} layers)")
    counts = Path(out) / "counts.csv"
    if result.complete:
        # where Pass@1 is 0 at every layer, only the continuous score can weight the layers
        continuous = "" if any(row.average for row in result.merged) else (
            f" --score-column {GOLD_LOGPROB} --score-transform softmax --temperature 1"
        )
        typer.echo(f"next: resa-interp select-layers --counts {counts if counts.exists() else 'COUNTS.csv'} "
                   f"--scores {result.scores_csv}{continuous} --out {Path(out) / 'layers'}")
    else:
        typer.echo("the other shards add their layers to scores.csv as they finish; a rerun without --shard "
                   "sweeps whatever is still missing")
