"""Stage II, SAE-Tuning: a frozen SAE spliced into the target model, LoRA trained on KL(teacher || student), the
SAE removed afterwards, the adapter merged (or attached to another model of the family).

Takes a `TuneConfig` (presets: `preset_config`) and an output folder; gives `adapter/` (peft), `merged/` (an HF
model folder), `train_log.jsonl` and checkpoints there, and a `TuneResult`.
"""

from resa_interp.tuning.checkpoints import CHECKPOINTS
from resa_interp.tuning.config import KL_REDUCTIONS, LORA_TARGETS, PRESETS, TuneConfig, lora_targets, preset_config
from resa_interp.tuning.data import Schedule, encode_examples
from resa_interp.tuning.plan import TuningPlan, plan_tuning, tuning_settings
from resa_interp.tuning.run import STAGE, TRAIN_LOG, TuneResult, changed_settings, prepare_out, tune
from resa_interp.tuning.targets import SAEChoice, model_lora_targets, resolve_sae
from resa_interp.tuning.tuner import SAETuner, StepRecord, kl_per_token, next_token_loss, reduce_kl

__all__ = [
    "CHECKPOINTS",
    "KL_REDUCTIONS",
    "LORA_TARGETS",
    "PRESETS",
    "STAGE",
    "TRAIN_LOG",
    "SAEChoice",
    "SAETuner",
    "Schedule",
    "StepRecord",
    "TuneConfig",
    "TuneResult",
    "TuningPlan",
    "changed_settings",
    "encode_examples",
    "kl_per_token",
    "lora_targets",
    "model_lora_targets",
    "next_token_loss",
    "plan_tuning",
    "prepare_out",
    "preset_config",
    "reduce_kl",
    "resolve_sae",
    "tune",
    "tuning_settings",
]
