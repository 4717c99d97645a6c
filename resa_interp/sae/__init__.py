"""Stage I, SAE training: TopK SAEs at every selected layer of a source model from CoT-free trigger text, trained
from scratch, fine-tuned from a pretrained SAE, or imported as they are; their folders, quality and imports.

Takes a `SAETrainConfig` (`config.py`: its fields, presets and spec parsers) and a run folder; gives SAELens SAE
folders `RUN/saes/<hook_name>/`, held-out quality (`RUN/saes/metrics.json`) and a `StageIResult`; a multi-seed
run keeps its further seeds' SAEs in `RUN/saes/seed-<s>/`. `train.py` runs a stage, `trainer.py` trains a group of
layers from one forward pass, `plan.py` plans memory and the run. The training step is the fused kernel in
`topk_kernel.py` (`layer_sae.py`), or SAELens' own trainer for its six architectures (`saelens_trainer.py`,
`--trainer saelens`). `hub.py` and `saebench.py` export a run's SAEs as a hub repo folder and its held-out quality
in SAEBench's core-eval format.
"""

from resa_interp.sae.activations import ActivationCache
from resa_interp.sae.cache import CacheResult, cache_activations
from resa_interp.sae.checkpoint import CHECKPOINT, Checkpoint
from resa_interp.sae.config import (
    ARCHITECTURES,
    K_ARCHITECTURES,
    PRESETS,
    R1_DISTILL,
    SAETrainConfig,
    check_latents,
    parse_seeds,
)
from resa_interp.sae.controls import CONTROL_FILE, decoder_permutation, permuted_decoder, write_permuted_control
from resa_interp.sae.folders import (
    SAES_DIR,
    check_sae_fits,
    load_sae,
    require_sae_dirs,
    run_sae_dirs,
    run_seeds,
    sae_dir,
)
from resa_interp.sae.hub import HubExport, check_export_target, export_hub, run_sae_ids
from resa_interp.sae.layer_sae import LayerSAE
from resa_interp.sae.metrics import (
    add_novel_quality,
    evaluate_saes,
    format_table,
    novel_texts,
    read_metrics,
    run_metrics_rows,
)
from resa_interp.sae.plan import MEMORY_HEADROOM, MemoryPlan, Stage1Plan, plan_memory, plan_stage1, stage1_settings
from resa_interp.sae.pretrained import build_topk_sae, load_source_sae, load_sparsify_sae
from resa_interp.sae.reconstruction import SAEReconstruction
from resa_interp.sae.saebench import SAEBenchExport, core_eval_output, export_saebench, results_name
from resa_interp.sae.saelens_trainer import SAELensLayer
from resa_interp.sae.train import StageIResult, train_saes
from resa_interp.sae.trainer import DEAD_WINDOW, GroupTrainer
from resa_interp.sae.trigger_data import TriggerData, trigger_data

__all__ = [
    "ARCHITECTURES",
    "ActivationCache",
    "CHECKPOINT",
    "CONTROL_FILE",
    "CacheResult",
    "Checkpoint",
    "DEAD_WINDOW",
    "GroupTrainer",
    "HubExport",
    "K_ARCHITECTURES",
    "LayerSAE",
    "MEMORY_HEADROOM",
    "MemoryPlan",
    "PRESETS",
    "R1_DISTILL",
    "SAEBenchExport",
    "SAELensLayer",
    "SAEReconstruction",
    "SAES_DIR",
    "SAETrainConfig",
    "Stage1Plan",
    "StageIResult",
    "TriggerData",
    "add_novel_quality",
    "build_topk_sae",
    "cache_activations",
    "check_export_target",
    "check_latents",
    "check_sae_fits",
    "core_eval_output",
    "decoder_permutation",
    "evaluate_saes",
    "export_hub",
    "export_saebench",
    "format_table",
    "load_sae",
    "load_source_sae",
    "load_sparsify_sae",
    "novel_texts",
    "parse_seeds",
    "permuted_decoder",
    "plan_memory",
    "plan_stage1",
    "read_metrics",
    "require_sae_dirs",
    "results_name",
    "run_metrics_rows",
    "run_sae_dirs",
    "run_sae_ids",
    "run_seeds",
    "sae_dir",
    "stage1_settings",
    "train_saes",
    "trigger_data",
    "write_permuted_control",
]
