"""`tune`: Stage II, SAE-Tuning."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from resa_interp.cli.options import (
    Dataset,
    Device,
    DryRun,
    Dtype,
    Epochs,
    Hook,
    LoraAlpha,
    LoraDropout,
    LoraLr,
    LoraR,
    LoraTargets,
    MaxSeqLen,
    Model,
    Out,
    Pack,
    Preset,
    Resume,
    Saes,
    SaveEvery,
    Steps,
    Template,
    TrainLimit,
    TuneSeed,
)


def tune(
    out: Out,
    model: Model = None,
    saes: Saes = None,
    layer: Annotated[
        int | None,
        typer.Option("--layer", "-l", help="Hookpoint layer (both presets: 12). With --sae it is read from the SAE and "
                     "checked."),
    ] = None,
    hook: Hook = "resid_post",
    sae: Annotated[
        str | None, typer.Option("--sae", help="One SAELens SAE folder to splice in (instead of --saes/--layer).")
    ] = None,
    dataset: Dataset = None,
    limit: TrainLimit = None,
    template: Template = None,
    pack: Pack = None,
    max_seq_len: MaxSeqLen = None,
    epochs: Epochs = None,
    steps: Steps = None,
    lr: LoraLr = None,
    min_lr_rate: Annotated[
        float | None, typer.Option("--min-lr-rate", help="Cosine schedule ends at lr x this (default 0.1).")
    ] = None,
    warmup_ratio: Annotated[
        float | None, typer.Option("--warmup-ratio", help="Fraction of steps of linear warm-up (default 0).")
    ] = None,
    lora_r: LoraR = None,
    lora_alpha: LoraAlpha = None,
    lora_dropout: LoraDropout = None,
    lora_targets: LoraTargets = None,
    grad_accum: Annotated[
        int | None,
        typer.Option("--grad-accum", help="Sequences per optimizer step and process (default 1: batch 1, no padding)."),
    ] = None,
    max_grad_norm: Annotated[
        float | None, typer.Option("--max-grad-norm", help="Gradient clipping norm (default 1.0, the authors' code).")
    ] = None,
    kl_reduction: Annotated[
        str | None,
        typer.Option("--kl-reduction", help="token (mean KL per token, default) or batchmean (sum over tokens / "
                     "batch, the authors' code)."),
    ] = None,
    detach_sae: Annotated[
        bool,
        typer.Option("--detach-sae", help="No gradient through the SAE into earlier layers (the authors' code); "
                     "default: gradients flow, as the paper describes."),
    ] = False,
    no_sae: Annotated[
        bool,
        typer.Option("--no-sae", help="The CoT-free SFT baseline: next-token loss on the same data with the same "
                     "LoRA, no SAE."),
    ] = False,
    save_every: SaveEvery = None,
    resume: Resume = False,
    preset: Preset = "cpu",
    seed: TuneSeed = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    dry_run: DryRun = False,
) -> None:
    """Stage II, SAE-Tuning: splice a frozen SAE into the target, train LoRA on KL(teacher || student), merge.

    Writes OUT/adapter/ (peft), OUT/merged/ (HF model), OUT/train_log.jsonl, OUT/checkpoints/ and
    OUT/manifest.json. --preset paper: R1-Distill-Qwen-1.5B, STILL, layer 12 (the paper's 13th), Appendix A,
    packed 2048-token chunks; --preset cpu (the default) is the embedded model for minutes. The resolved settings
    are printed first, each one that differs from the paper's marked; --dry-run stops after them and the plan.

    Example: resa-interp tune --saes runs/smollm2 --layer 12 --out runs/smollm2/tuned-l12
    """
    from resa_interp.model.loading import quiet_transformers
    from resa_interp.tuning import lora_targets as parse_targets
    from resa_interp.tuning import plan_tuning, preset_config, tuning_settings
    from resa_interp.tuning import tune as run_tune

    quiet_transformers()
    config = preset_config(
        preset,
        model=model, sae=sae, saes_run=saes, layer=layer, hook=hook, dataset=dataset, limit=limit,
        template=template, pack=pack, max_length=max_seq_len, epochs=epochs, steps=steps, lr=lr,
        min_lr_rate=min_lr_rate,
        warmup_ratio=warmup_ratio, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=parse_targets(lora_targets) if lora_targets else None, grad_accum=grad_accum,
        max_grad_norm=max_grad_norm, kl_reduction=kl_reduction, detach_sae=detach_sae, no_sae=no_sae,
        save_every=save_every, resume=resume, seed=seed, device=device, dtype=dtype,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(tuning_settings(config, preset).format())
        typer.echo(plan_tuning(config, out).format())
    if dry_run:
        return
    result = run_tune(config, out)
    if result.records and int(os.environ.get("RANK", "0")) == 0:
        name = "ce" if config.no_sae else "kl"
        typer.echo(
            f"{result.steps} steps, {name} {result.first:.4g} -> {result.last:.4g}, {result.tokens} tokens, "
            f"{result.wall_s:.1f} s; adapter: {result.adapter}; merged model: {result.merged}"
        )
