"""`train-saes`: Stage I."""

from __future__ import annotations

from typing import Annotated

import typer

from resa_interp.cli.options import (
    AnswerColumn,
    Dataset,
    Device,
    DryRun,
    Dtype,
    Hook,
    KeepFirst,
    Layers,
    MaxSeqLen,
    Model,
    NSeeds,
    Out,
    Pack,
    Preset,
    ProblemColumn,
    Resume,
    Seed,
    Seeds,
    Source,
    Template,
    Tokens,
    renamed,
)

ModelDtype = renamed(Dtype, "--model-dtype")
Activations = Annotated[
    str | None,
    typer.Option("--activations", help="Train from this activation cache (resa-interp cache-activations) instead of "
                 "forward passes: model, hook, layers and data settings must be the cache's, and default to them; "
                 "the model is loaded only for the held-out metrics."),
]


def train_saes(
    out: Out,
    model: Model = None,
    dataset: Dataset = None,
    layers: Layers = None,
    hook: Hook = None,
    mode: Annotated[
        str | None,
        typer.Option(help="scratch (default) | finetune (start from --from) | pretrained (import --from as is)."),
    ] = None,
    source: Source = None,
    from_hook: Annotated[
        str | None,
        typer.Option(help="Hookpoint the --from SAEs were trained at, when it differs from --hook. The EleutherAI "
                     "R1-Distill release has only MLP-output SAEs (layers.N.mlp/); the authors fine-tuned those on "
                     "the residual stream: --mode finetune --from-hook mlp_out --hook resid_post "
                     "[default: the same as --hook]."),
    ] = None,
    k: Annotated[int | None, typer.Option("--k", help="Active latents per token [default: 32].")] = None,
    expansion_factor: Annotated[
        int | None, typer.Option(help="Latents per model dimension, unless --latents is given [default: 8].")
    ] = None,
    latents: Annotated[
        int | None,
        typer.Option(help="Dictionary size as a number, e.g. 65536 (the paper, Appendix A); overrides "
                     "--expansion-factor, as sparsify's num_latents does. At least --k. Fine-tuning keeps the "
                     "source's size [default: expansion factor x d_model]."),
    ] = None,
    tokens: Tokens = None,
    batch_tokens: Annotated[int | None, typer.Option(help="Tokens per optimizer step [default: 1024].")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam (default) | signum (the paper).")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Constant learning rate [default: 2e-3; paper preset 2.5e-4 with signum].")
    ] = None,
    group_size: Annotated[
        int | None, typer.Option(help="Layers per shared forward pass [default: as many as fit in memory].")
    ] = None,
    select_precision: Annotated[
        str | None,
        typer.Option(help="Precision of the product that picks the top-k latents: auto (bfloat16 where the hardware "
                     "has it natively) | bfloat16 | float32. Selected values and gradients are float32 either way "
                     "[default: auto]."),
    ] = None,
    trainer: Annotated[
        str | None,
        typer.Option(help="fused (default: our TopK kernel, the fastest) | saelens (SAELens' own training SAEs and "
                     "trainer step on the same activations; from scratch, Adam)."),
    ] = None,
    architecture: Annotated[
        str | None,
        typer.Option(help="With --trainer saelens: topk (default) | batchtopk | jumprelu | matryoshka | standard | "
                     "gated. The k-architectures use --k; jumprelu, standard and gated --sparsity-coefficient."),
    ] = None,
    sparsity_coefficient: Annotated[
        float | None,
        typer.Option(help="With --trainer saelens: the l0 (jumprelu) or l1 (standard, gated) penalty's coefficient "
                     "[default: SAELens' default, 1.0]."),
    ] = None,
    template: Template = None,
    pack: Pack = None,
    max_seq_len: MaxSeqLen = None,
    problem_column: ProblemColumn = None,
    answer_column: AnswerColumn = None,
    keep_first: KeepFirst = False,
    seed: Seed = None,
    seeds: Seeds = None,
    n_seeds: NSeeds = None,
    preset: Preset = None,
    activations: Activations = None,
    resume: Resume = False,
    device: Device = None,
    dtype: Dtype = None,
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
    from resa_interp.errors import check_choice
    from resa_interp.presets import with_preset
    from resa_interp.sae import PRESETS, ActivationCache, SAETrainConfig, plan_stage1, stage1_settings, train_saes
    from resa_interp.sae.metrics import format_table
    from resa_interp.sae.train import parse_seeds
    from resa_interp.shards import launcher_shard, pin_rank_gpu

    pin_rank_gpu()  # before anything touches CUDA
    # under a launcher the ranks share one terminal: rank 0 alone prints the settings, the plan and the summary
    talks = launcher_shard().index == 0
    seed, more_seeds = parse_seeds(seed, seeds, n_seeds)
    # an --expansion-factor given alone replaces the preset's --latents (which would otherwise override it)
    drop = ("latents",) if expansion_factor is not None and latents is None else ()
    if preset is not None:
        check_choice("--preset", preset, PRESETS)
    # with a cache, its data settings come after the preset's and before the options given
    base = {**PRESETS.get(preset, {}), **(ActivationCache(activations).defaults() if activations else {})}
    cfg = with_preset(
        SAETrainConfig, {"base": base}, "base", drop, activations=activations,
        model=model, dataset=dataset, layers=layers, hook=hook, mode=mode, source=source, source_hook=from_hook,
        k=k, expansion_factor=expansion_factor, latents=latents, batch_tokens=batch_tokens, optimizer=optimizer,
        lr=lr, group_size=group_size, select_precision=select_precision, trainer=trainer, architecture=architecture,
        sparsity_coefficient=sparsity_coefficient, template=template, pack=pack, max_seq_len=max_seq_len,
        problem_column=problem_column, answer_column=answer_column,
        keep_first=keep_first or None, seed=seed, seeds=more_seeds, device=device, model_dtype=dtype,
    )
    if tokens is not None:
        cfg.tokens = tokens or None
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
    model: Model = None,
    dataset: Dataset = None,
    layers: Layers = None,
    hook: Hook = None,
    tokens: Tokens = None,
    template: Template = None,
    pack: Pack = None,
    max_seq_len: MaxSeqLen = None,
    problem_column: ProblemColumn = None,
    answer_column: AnswerColumn = None,
    keep_first: KeepFirst = False,
    seed: Seed = None,
    preset: Preset = None,
    device: Device = None,
    model_dtype: ModelDtype = None,
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
    from resa_interp.presets import with_preset
    from resa_interp.sae import PRESETS, SAETrainConfig
    from resa_interp.sae import cache_activations as harvest

    cfg = with_preset(
        SAETrainConfig, PRESETS, preset, model=model, dataset=dataset, layers=layers, hook=hook, template=template,
        pack=pack, max_seq_len=max_seq_len, problem_column=problem_column, answer_column=answer_column,
        keep_first=keep_first or None, seed=seed, device=device, model_dtype=model_dtype,
    )
    if tokens is not None:
        cfg.tokens = tokens or None
    result = harvest(cfg, out, dtype)
    typer.echo(f"cache: {result.path}  {len(result.layers)} layer(s) x {result.tokens_per_layer:,} tokens, "
               f"{dtype}, {result.bytes / 2**20:.1f} MiB, {result.wall_seconds:.0f} s")
