"""What `eval` and `sweep` will do, known before they start: settings next to the paper's (Appendix A and the
evaluation setup of section 4), and a plan built from configs and file names alone (no weights, no datasets).
"""

from __future__ import annotations

from pathlib import Path

from resa_interp.evaluation.config import EVAL_PRESETS, EvalConfig, SweepConfig, sweep_config
from resa_interp.evaluation.evaluator import SAMPLES, SCORES, resolve_backend
from resa_interp.evaluation.sweep import EVAL_DIR, SCORES_CSV
from resa_interp.model import EMBEDDED_ALIASES, model_shape
from resa_interp.numbering import default_layers, describe_layers, parse_layers
from resa_interp.presets import SettingsReport, settings_report, with_preset
from resa_interp.sae import run_sae_dirs

OPERATIONAL = ("batch_size", "device", "report_to", "tune.save_every", "tune.resume", "tune.device",
               "evaluation.batch_size", "evaluation.device", "saes.group_size", "saes.checkpoint_every", "saes.device")
"""Settings that change where or how fast a run goes, or where it reports, not what it computes."""
SET_PER_LAYER = ("tune.sae", "tune.saes_run", "tune.layer", "tune.resume", "tune.report_to", "evaluation.model",
                 "evaluation.tasks", "saes.model", "saes.hook", "saes.layers", "saes.report_to")
"""Sweep settings the sweep fills in itself for every layer (from its own layers, model, hook and tasks)."""


def eval_settings(config: EvalConfig) -> SettingsReport:
    """`config` next to the paper's evaluation (its six tasks, lighteval on vLLM, 32,768 new tokens, ...)."""
    paper = with_preset(EvalConfig, EVAL_PRESETS, "paper")
    return settings_report("eval", config, paper, None, OPERATIONAL, "the paper's evaluation (section 4)")


def sweep_settings(config: SweepConfig, preset: str | None) -> SettingsReport:
    """`config` next to `sweep --preset paper` (Table 6's setting)."""
    return settings_report("sweep", config, sweep_config("paper"), preset, OPERATIONAL, hide=SET_PER_LAYER)


def plan_evaluation(config: EvalConfig, out: str | Path) -> str:
    """The plan of `evaluate(config, out)`: model, tasks, backend, budget, outputs."""
    config.check()
    out = Path(out)
    limit = f", first {config.limit} problems each" if config.limit else ""
    return "\n".join([
        f"plan: evaluate {config.model or EMBEDDED_ALIASES[0]} with {resolve_backend(config)}",
        f"  tasks: {', '.join(config.tasks)}{limit}; {config.samples} sample(s) per problem, up to "
        f"{config.max_new_tokens:,} new tokens, temperature {config.temperature:g}, top-p {config.top_p:g}",
        f"  outputs: {out / SCORES}, {out / SAMPLES}",
    ])


def plan_sweep(config: SweepConfig, out: str | Path) -> str:
    """The plan of `sweep(config, out)`: layers (hook names and the paper's labels), SAEs, tuning, evaluation."""
    config.evaluation.check()
    config.tune.check()
    out = Path(out)
    shape = model_shape(config.tune.model)
    layers = parse_layers(config.layers or default_layers(shape.n_layers), shape.n_layers)
    run = Path(config.saes_run) if config.saes_run is not None else out
    have = run_sae_dirs(run, config.tune.hook)
    missing = [layer for layer in layers if layer not in have]
    saes = f"SAEs from {run}" if not missing else (
        f"SAEs trained first into {run} (Stage I, {len(missing)} layer(s))" if config.saes_run is None
        else f"SAEs from {run}, which lacks layer(s) {','.join(map(str, missing))}: the sweep will stop there")
    steps = f"{config.tune.steps} steps" if config.tune.steps is not None else f"{config.tune.epochs} epoch(s)"
    limit = f", first {config.evaluation.limit} problems each" if config.evaluation.limit else ""
    return "\n".join([
        f"plan: sweep {config.tune.model or EMBEDDED_ALIASES[0]} ({shape.architecture}, {shape.n_layers} decoder "
        f"layers), {len(layers)} layer(s) at {config.tune.hook}",
        f"  layers: {describe_layers(layers)}",
        f"  {saes}",
        f"  each layer: SAE-Tuning on {config.tune.dataset} for {steps} (lr {config.tune.lr:g}), then "
        f"{', '.join(config.tasks)}{limit} with {resolve_backend(config.evaluation)}, up to "
        f"{config.evaluation.max_new_tokens:,} new tokens",
        f"  outputs: {out}/layer-L/ (tuned model, {EVAL_DIR}/), {out / SCORES_CSV}, {out / 'manifest.json'}",
    ])
