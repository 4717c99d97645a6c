"""`tune`: Stage II, SAE-Tuning."""

from __future__ import annotations

from typing import Any

import typer

from resa_interp.cli.fields import NO_DEFAULT, config_fields, field_option, given, module_constant, shown
from resa_interp.cli.options import DryRun, Out, Preset

COMMAND_CONFIGS = {"tune": [("tuning.config", "TuneConfig")]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def tune_option(name: str, *flags: str, default: str | None = None) -> Any:
    """The option of `TuneConfig.<name>` (for `tune`, and `sweep`'s tuning options); where a preset sets the
    field, the shown default is the cpu preset's (tune's and sweep's default preset) and the paper preset's beside
    it."""
    field = config_fields("tuning.config", "TuneConfig")[name]
    presets = module_constant("tuning.config", "PRESETS")
    cpu, paper = presets["cpu"], presets["paper"]
    if default is None and (name in cpu or name in paper) and field.default is not NO_DEFAULT:
        on_cpu, on_paper = shown(cpu.get(name, field.default)), shown(paper.get(name, field.default))
        default = (f"{on_cpu} (both presets)" if on_cpu == on_paper
                   else f"{on_cpu} with --preset cpu, {on_paper} with paper")
    return field_option("tuning.config", "TuneConfig", name, *flags, default=default)


TuneModel = tune_option("model", "--model", "-m", default="the embedded model with --preset cpu, "
                        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B with paper")
TuneLoraTargets = tune_option("lora_targets", default="attn")


def tune(
    out: Out,
    model: TuneModel = None,
    saes_run: tune_option("saes_run", "--saes") = None,
    layer: tune_option("layer", "--layer", "-l") = None,
    hook: tune_option("hook") = None,
    sae: tune_option("sae") = None,
    dataset: tune_option("dataset", "--dataset", "-d") = None,
    limit: tune_option("limit") = None,
    template: tune_option("template") = None,
    pack: tune_option("pack", "--pack/--no-pack") = None,
    max_length: tune_option("max_length", "--max-seq-len") = None,
    epochs: tune_option("epochs") = None,
    steps: tune_option("steps") = None,
    lr: tune_option("lr") = None,
    min_lr_rate: tune_option("min_lr_rate") = None,
    warmup_ratio: tune_option("warmup_ratio") = None,
    lora_r: tune_option("lora_r") = None,
    lora_alpha: tune_option("lora_alpha") = None,
    lora_dropout: tune_option("lora_dropout") = None,
    lora_targets: TuneLoraTargets = None,
    grad_accum: tune_option("grad_accum") = None,
    max_grad_norm: tune_option("max_grad_norm") = None,
    kl_reduction: tune_option("kl_reduction") = None,
    detach_sae: tune_option("detach_sae", "--detach-sae") = None,
    no_sae: tune_option("no_sae", "--no-sae") = None,
    teacher_cache: tune_option("teacher_cache") = None,
    save_every: tune_option("save_every") = None,
    resume: tune_option("resume", "--resume") = None,
    preset: Preset = "cpu",
    seed: tune_option("seed") = None,
    device: tune_option("device") = None,
    dtype: tune_option("dtype") = None,
    report_to: tune_option("report_to") = None,
    dry_run: DryRun = False,
) -> None:
    """Stage II, SAE-Tuning: splice a frozen SAE into the target, train LoRA on KL(teacher || student), merge.

    Writes OUT/adapter/ (peft), OUT/merged/ (HF model), OUT/train_log.jsonl, OUT/checkpoints/ and
    OUT/manifest.json. --preset paper: R1-Distill-Qwen-1.5B, STILL, layer 12 (the paper's 13th), Appendix A,
    packed 2048-token chunks; --preset cpu (the default) is the embedded model for minutes. The resolved settings
    are printed first, each one that differs from the paper's marked; --dry-run stops after them and the plan.

    Example: resa-interp tune --saes runs/smollm2 --layer 12 --out runs/smollm2/tuned-l12
    """
    from resa_interp.model import quiet_transformers
    from resa_interp.shards import is_main_process
    from resa_interp.tuning import lora_targets as parse_targets
    from resa_interp.tuning import plan_tuning, preset_config, tuning_settings
    from resa_interp.tuning import tune as run_tune

    quiet_transformers()
    config = preset_config(preset, **given(
        model=model, sae=sae, saes_run=saes_run, layer=layer, hook=hook, dataset=dataset, limit=limit,
        template=template, pack=pack, max_length=max_length, epochs=epochs, steps=steps, lr=lr,
        min_lr_rate=min_lr_rate, warmup_ratio=warmup_ratio, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, lora_targets=parse_targets(lora_targets) if lora_targets else None,
        grad_accum=grad_accum, max_grad_norm=max_grad_norm, kl_reduction=kl_reduction, detach_sae=detach_sae,
        no_sae=no_sae, teacher_cache=teacher_cache, save_every=save_every, resume=resume, seed=seed, device=device,
        dtype=dtype, report_to=report_to,
    ))
    if is_main_process():
        typer.echo(tuning_settings(config, preset).format())
        typer.echo(plan_tuning(config, out).format())
    if dry_run:
        return
    result = run_tune(config, out)
    if result.records and is_main_process():
        name = "ce" if config.no_sae else "kl"
        typer.echo(
            f"{result.steps} steps, {name} {result.first:.4g} -> {result.last:.4g}, {result.tokens} tokens, "
            f"{result.wall_s:.1f} s; adapter: {result.adapter}; merged model: {result.merged}"
        )
