"""Stage II, SAE-Tuning: a frozen SAE spliced into the target model, LoRA trained on KL(teacher || student), the
SAE removed afterwards, the adapter merged (or attached to another model of the family).

Takes a `TuneConfig` (presets: `preset_config`) and an output folder; gives `adapter/` (peft), `merged/` (an HF
model folder), `train_log.jsonl` and checkpoints there, and a `TuneResult`.
"""

from resa_interp.tuning.plan import TuningPlan, plan_tuning, tuning_settings
from resa_interp.tuning.sae_tuning import PRESETS, TuneConfig, TuneResult, lora_targets, preset_config, tune

__all__ = [
    "PRESETS",
    "TuneConfig",
    "TuneResult",
    "TuningPlan",
    "lora_targets",
    "plan_tuning",
    "preset_config",
    "tune",
    "tuning_settings",
]
