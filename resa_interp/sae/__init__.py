"""Stage I, SAE training: TopK SAEs at every selected layer of a source model from CoT-free trigger text, trained
from scratch, fine-tuned from a pretrained SAE, or imported as they are; their folders, quality and imports.

Takes a `SAETrainConfig` and a run folder; gives SAELens SAE folders `RUN/saes/<hook_name>/`, held-out quality
(`RUN/saes/metrics.json`) and a `StageIResult`; a multi-seed run keeps its further seeds' SAEs in
`RUN/saes/seed-<s>/`. The training step is the fused kernel in `topk_kernel.py`, or SAELens' own trainer for its
six architectures (`saelens_trainer.py`, `--trainer saelens`).
"""

from resa_interp.sae.activations import ActivationCache
from resa_interp.sae.cache import CacheResult, cache_activations
from resa_interp.sae.folders import (
    SAES_DIR,
    check_sae_fits,
    load_sae,
    require_sae_dirs,
    run_sae_dirs,
    run_seeds,
    sae_dir,
)
from resa_interp.sae.metrics import evaluate_saes, read_metrics
from resa_interp.sae.plan import Stage1Plan, plan_stage1, stage1_settings
from resa_interp.sae.pretrained import build_topk_sae, load_source_sae, load_sparsify_sae
from resa_interp.sae.reconstruction import SAEReconstruction
from resa_interp.sae.train import PRESETS, SAETrainConfig, StageIResult, parse_layers, train_saes

__all__ = [
    "PRESETS",
    "ActivationCache",
    "CacheResult",
    "SAES_DIR",
    "SAEReconstruction",
    "SAETrainConfig",
    "Stage1Plan",
    "StageIResult",
    "build_topk_sae",
    "cache_activations",
    "check_sae_fits",
    "evaluate_saes",
    "load_sae",
    "load_source_sae",
    "load_sparsify_sae",
    "parse_layers",
    "plan_stage1",
    "read_metrics",
    "require_sae_dirs",
    "run_sae_dirs",
    "run_seeds",
    "sae_dir",
    "stage1_settings",
    "train_saes",
]
