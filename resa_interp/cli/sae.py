"""`train-saes` (Stage I) and `cache-activations` (Stage I's activations harvested once)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from resa_interp.cli.fields import field_option
from resa_interp.cli.options import DryRun, NSeeds, Out, Preset, Resume

COMMAND_CONFIGS = {
    "train-saes": [("sae.config", "SAETrainConfig")],
    "cache-activations": [("sae.config", "SAETrainConfig")],
}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _sae(name: str, *flags: str, more: str = "", default: str | None = None) -> Any:
    return field_option("sae.config", "SAETrainConfig", name, *flags, more=more, default=default)


# the options both commands take with flags or a shown default of their own, declared once
_Model = _sae("model", "--model", "-m", default="smollm2-135m")
_Dataset = _sae("dataset", "--dataset", "-d")
_Pack = _sae("pack", "--pack/--no-pack", default="off; on with --preset paper")
_MaxSeqLen = _sae("max_seq_len", default="1024; --preset paper 2048")
_KeepFirst = _sae("keep_first", "--keep-first")


def train_saes(
    out: Out,
    model: _Model = None,
    dataset: _Dataset = None,
    layers: _sae("layers") = None,
    hook: _sae("hook") = None,
    mode: _sae("mode") = None,
    source: _sae("source", "--from") = None,
    from_hook: _sae("source_hook", "--from-hook", default="the same as --hook") = None,
    k: _sae("k", "--k") = None,
    expansion_factor: _sae("expansion_factor") = None,
    latents: _sae("latents", default="expansion factor x d_model") = None,
    tokens: _sae("tokens", more="0 = one epoch.", default="98304; with --activations, what the cache holds") = None,
    batch_tokens: _sae("batch_tokens") = None,
    optimizer: _sae("optimizer") = None,
    lr: _sae("lr", default="2e-3; --preset paper 2.5e-4 with signum") = None,
    group_size: _sae("group_size", default="as many as fit in memory") = None,
    select_precision: _sae("select_precision") = None,
    trainer: _sae("trainer") = None,
    architecture: _sae("architecture") = None,
    sparsity_coefficient: _sae("sparsity_coefficient", default="SAELens' default, 1.0") = None,
    template: _sae("template") = None,
    pack: _Pack = None,
    max_seq_len: _MaxSeqLen = None,
    problem_column: _sae("problem_column") = None,
    answer_column: _sae("answer_column") = None,
    keep_first: _KeepFirst = None,
    seed: _sae("seed") = None,
    seeds: _sae("seeds", more="Spelled 0,1,2: the first is the run's seed.") = None,
    n_seeds: NSeeds = None,
    preset: Annotated[str | None, typer.Option("--preset", help="paper (R1-Distill-Qwen-1.5B, STILL, Appendix A; a "
                                               "GPU); options given override it.")] = None,
    activations: _sae("activations") = None,
    report_to: _sae("report_to") = None,
    resume: Resume = False,
    device: _sae("device") = None,
    dtype: _sae("model_dtype", "--dtype") = None,
    dry_run: DryRun = False,
) -> None:
    """Stage I: train SAEs (TopK by default) at every selected layer from one shared forward pass per batch.

    Trigger data is CoT-free: the R1 system prompt, the question, and only the final answer between
    <think> and </think>. Prints the memory plan, shows progress with tokens/s, checkpoints and resumes
    (a matching interrupted run in OUT is resumed anyway), then writes held-out quality per layer
    (explained variance, L0, dead latents, spliced-in KL) to OUT/saes/metrics.json and prints it.
    SAEs go to OUT/saes/<hook_name>/. --preset paper: R1-Distill-Qwen-1.5B, STILL, layers 1-26 (the paper's
    2nd-27th), resid_post, 65,536 latents, k=32, signum 2.5e-4, one epoch, packed 2048-token chunks. Defaults:
    device cpu, dtype float32, seed 0. The resolved settings are printed first, each one that differs from the
    paper's marked; --dry-run stops after them and the plan. Under torchrun (or accelerate launch) the ranks
    share the layers: each runs the model on its slice of every batch and trains its layers' SAEs, one GPU each;
    the SAEs are those of one process (README, Scaling out). --trainer saelens --architecture A trains SAELens'
    own A SAEs (topk, batchtopk, jumprelu, matryoshka, standard, gated) on the same activations instead of the
    fused TopK kernel.

    Example: resa-interp train-saes --layers 3,12,24 --out runs/demo
    """
    from resa_interp.sae import SAETrainConfig, format_table, parse_seeds, plan_stage1, stage1_settings, train_saes
    from resa_interp.shards import is_main_process, pin_rank_gpu

    pin_rank_gpu()  # before anything touches CUDA
    # under a launcher the ranks share one terminal: rank 0 alone prints the settings, the plan and the summary
    talks = is_main_process()
    seed, more_seeds = parse_seeds(seed, seeds, n_seeds)
    cfg = SAETrainConfig.from_options(
        preset, activations=activations,
        model=model, dataset=dataset, layers=layers, hook=hook, mode=mode, source=source, source_hook=from_hook,
        k=k, expansion_factor=expansion_factor, latents=latents, tokens=tokens, batch_tokens=batch_tokens,
        optimizer=optimizer, lr=lr, group_size=group_size, select_precision=select_precision, trainer=trainer,
        architecture=architecture, sparsity_coefficient=sparsity_coefficient, template=template, pack=pack,
        max_seq_len=max_seq_len, problem_column=problem_column, answer_column=answer_column,
        keep_first=keep_first or None, seed=seed, seeds=more_seeds, device=device, model_dtype=dtype,
        report_to=report_to,
    )
    if talks:
        typer.echo(stage1_settings(cfg, preset).format())
    plan = plan_stage1(cfg, out)
    if talks:
        typer.echo(plan.format())
    if dry_run:
        return
    result = train_saes(cfg, out, resume=resume)
    if not talks:
        return
    typer.echo(format_table(result.metrics))
    for extra, rows in result.seed_metrics.items():
        typer.echo(f"seed {extra}:\n{format_table(rows)}")
    typer.echo(f"SAEs: {out}/saes/  metrics: {out}/saes/metrics.json  figure: {out}/saes/metrics.html")
    if result.seed_dirs:
        typer.echo(f"further seeds: {', '.join(f'{out}/saes/seed-{s}/' for s in result.seed_dirs)}")


def cache_activations(
    out: Out,
    model: _Model = None,
    dataset: _Dataset = None,
    layers: _sae("layers") = None,
    hook: _sae("hook") = None,
    tokens: _sae("tokens", more="Per layer; 0 = one epoch.") = None,
    template: _sae("template") = None,
    pack: _Pack = None,
    max_seq_len: _MaxSeqLen = None,
    problem_column: _sae("problem_column") = None,
    answer_column: _sae("answer_column") = None,
    keep_first: _KeepFirst = None,
    seed: _sae("seed") = None,
    preset: Preset = None,
    device: _sae("device") = None,
    model_dtype: _sae("model_dtype", "--model-dtype") = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="How the cache stores activations: bfloat16 (2 bytes a value), float16 or "
                          "float32 (4 bytes; trains exactly the SAEs a forward pass trains).")
    ] = "bfloat16",
) -> None:
    """Harvest Stage I's training activations once into an activation cache, for train-saes --activations.

    One forward pass per batch, as train-saes runs it (same texts, order, batches, counted positions: every
    position but each text's first), written to OUT/layer-L.bin (raw [tokens, d_model] rows, memory-mapped when
    read) with OUT/manifest.json (model, data fingerprint, hook, layers, dtype, token counts, the data settings).
    Disk: d_model x 2 bytes per token per layer in bfloat16. Then any number of SAE configs train from it without
    the model: resa-interp train-saes --activations OUT --k 64 --out runs/k64. Written whole or not at all; an
    interrupted harvest starts over.

    Example: resa-interp cache-activations --layers 3,12,24 --tokens 200000 --out caches/demo
    """
    from resa_interp.sae import SAETrainConfig
    from resa_interp.sae import cache_activations as harvest

    cfg = SAETrainConfig.from_options(
        preset, model=model, dataset=dataset, layers=layers, hook=hook, tokens=tokens, template=template, pack=pack,
        max_seq_len=max_seq_len, problem_column=problem_column, answer_column=answer_column,
        keep_first=keep_first or None, seed=seed, device=device, model_dtype=model_dtype,
    )
    result = harvest(cfg, out, dtype)
    typer.echo(f"cache: {result.path}  {len(result.layers)} layer(s) x {result.tokens_per_layer:,} tokens, "
               f"{dtype}, {result.bytes / 2**20:.1f} MiB, {result.wall_seconds:.0f} s")
