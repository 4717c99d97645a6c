"""Prompt-only reasoning features: the SAE latents active only at the `<think>` and `</think>` tokens of the R1
system prompt, counted per layer.

Takes a `FeatureConfig` (which names the model, prompts and SAEs: a Stage I run, by default the output folder
itself) and an output folder; gives `features.json`, `counts.csv` (the input of select-layers) and a figure
there, and a `FeaturesRun`.
"""

from resa_interp.features.boundary import span_value
from resa_interp.features.extract import (
    FeatureConfig,
    FeaturesRun,
    LayerFeatures,
    default_layers,
    extract_features,
    read_prompts,
    run_features,
)

__all__ = [
    "FeatureConfig",
    "FeaturesRun",
    "LayerFeatures",
    "default_layers",
    "extract_features",
    "read_prompts",
    "run_features",
    "span_value",
]
