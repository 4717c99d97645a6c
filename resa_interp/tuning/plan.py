"""What an SAE-Tuning run will do, known before it starts: its settings next to the paper's Appendix A, and a plan
(target model, the SAE and its hookpoint with the paper's layer label, data, steps, LoRA, outputs) built from the
model's config and the SAE's cfg.json alone, so that `tune --dry-run` reads no weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from resa_interp.errors import ResaError
from resa_interp.model import EMBEDDED_ALIASES, HOOKS, hook_name, model_shape
from resa_interp.numbering import paper_label
from resa_interp.presets import SettingsReport, settings_report
from resa_interp.tuning.checkpoints import CHECKPOINTS
from resa_interp.tuning.config import TuneConfig, preset_config
from resa_interp.tuning.run import TRAIN_LOG, prepare_out
from resa_interp.tuning.targets import resolve_sae

OPERATIONAL = ("save_every", "resume", "report_to")
"""Settings that change how a run is scheduled, saved or reported, not its result."""


def tuning_settings(config: TuneConfig, preset: str | None) -> SettingsReport:
    """`config` next to `--preset paper` (Appendix A), every difference marked."""
    return settings_report("tune", config, preset_config("paper"), preset, OPERATIONAL)


@dataclass(frozen=True)
class TuningPlan:
    """One SAE-Tuning run as it will go."""

    model: str
    architecture: str
    n_layers: int
    d_model: int
    sae: str | None
    """The SAE folder spliced in (None: the no-SAE SFT baseline)."""
    hook_name: str | None
    layer: int | None
    d_sae: int | None
    steps: str
    outputs: list[str]
    lora: str
    data: str

    def format(self) -> str:
        """The plan, one fact per line."""
        where = "no SAE (CoT-free SFT baseline)"
        if self.sae is not None:
            where = (f"SAE {self.sae} ({self.d_sae:,} latents) spliced in at {self.hook_name} "
                     f"(blocks.{self.layer}; paper: {paper_label(self.layer)} layer)")
        return "\n".join([
            f"plan: {self.model} ({self.architecture}, {self.n_layers} decoder layers, d_model {self.d_model})",
            f"  {where}",
            f"  data: {self.data}; {self.steps}",
            f"  LoRA: {self.lora}",
            "  outputs: " + ", ".join(self.outputs),
        ])


def plan_tuning(config: TuneConfig, out: str | Path) -> TuningPlan:
    """The plan of `tune(config, out)`, raising its one-line errors for settings, SAE, layer and output folder."""
    config.check()
    out = Path(out)
    prepare_out(config, out)
    shape = model_shape(config.model)
    n_layers, d_model = shape.n_layers, shape.d_model
    sae = d_sae = name = layer = None
    if not config.no_sae:
        choice = resolve_sae(config)
        if not 0 <= choice.layer < n_layers:
            raise ResaError(f"layer {choice.layer} is outside the model: it has layers 0..{n_layers - 1}")
        cfg_file = choice.path / "cfg.json"
        if not cfg_file.is_file():
            raise ResaError(f"SAE {str(choice.path)!r}: no cfg.json there, so it is not an SAELens SAE folder")
        sae_cfg = json.loads(cfg_file.read_text())
        if choice.hook in HOOKS and sae_cfg.get("d_in") != d_model:  # hook_z is n_heads * d_head wide (checked on load)
            raise ResaError(f"SAE d_in {sae_cfg.get('d_in')} does not match the model's d_model {d_model}; "
                            "was it trained on another model?")
        sae, d_sae, layer, name = str(choice.path), sae_cfg.get("d_sae"), choice.layer, hook_name(choice.hook,
                                                                                                   choice.layer)
    steps = (f"{config.steps} optimizer steps" if config.steps is not None
             else f"{config.epochs} epoch(s) (steps counted when the data are loaded)")
    steps += f" of {config.grad_accum} sequence(s), lr {config.lr:g} cosine to x{config.min_lr_rate:g}"
    limit = f", first {config.limit} pairs" if config.limit else ""
    return TuningPlan(
        model=config.model or EMBEDDED_ALIASES[0],
        architecture=shape.architecture,
        n_layers=n_layers,
        d_model=d_model,
        sae=sae,
        hook_name=name,
        layer=layer,
        d_sae=d_sae,
        steps=steps,
        data=f"{config.dataset}{limit}, template {config.template}, up to {config.max_length} tokens per sequence",
        lora=(f"r {config.lora_r}, alpha {config.lora_alpha}, dropout {config.lora_dropout:g} on "
              f"{','.join(config.lora_targets)}"),
        outputs=[str(out / "adapter"), str(out / "merged"), str(out / TRAIN_LOG), str(out / CHECKPOINTS),
                 str(out / "manifest.json")],
    )
