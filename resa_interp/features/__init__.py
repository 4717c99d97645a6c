"""Prompt-only reasoning features: the SAE latents active only at the `<think>` and `</think>` tokens of the R1
system prompt, counted per layer.

Takes a `FeatureConfig` (which names the model, prompts and SAEs: a Stage I run, by default the output folder
itself, trained first there with `run_features(..., train_missing=True)`) and an output folder; gives
`features.json`, `counts.csv` (the input of select-layers) and a figure there, and a `FeaturesRun`. With
`definition='reasonscore'`, the features are instead ReasonScore's (Galichin et al. 2025) over reasoning texts,
written into the same files.

Modules: `config` (the options), `prompts`, `extract` (the definition), `reasonscore` (the other definition),
`boundary` (margins and numerical noise), `stability` (cross-seed matching), `saes` (where the SAEs come from),
`run`, `outputs` (the files), `report` (the printed tables), `selection` (which latents later stages look at).
"""

from resa_interp.features.boundary import BOUNDARY, span_value
from resa_interp.features.config import (
    DEFAULT_MATCH_THRESHOLD,
    DEFINITIONS,
    MARKER_RULES,
    OCCURRENCES,
    REASON_WORDS,
    FeatureConfig,
)
from resa_interp.features.extract import DEFINITION, LayerFeatures, extract_features, measure_boundary, qualifying
from resa_interp.features.outputs import counts_figure, write_outputs
from resa_interp.features.prompts import PromptInfo, prompt_info, read_prompts
from resa_interp.features.reasonscore import (
    SCORE_DEFINITION,
    LayerScores,
    read_reason_texts,
    reason_score,
    reasonscore_features,
    require_reason_words,
    select_latents,
    window_masks,
    word_groups,
    words_in_texts,
)
from resa_interp.features.report import format_headline, format_paths, format_seed_table, format_table
from resa_interp.features.run import FeaturesRun, run_features
from resa_interp.features.saes import MAIN_SEEDS, missing_saes, saes_to_train, train_first
from resa_interp.features.selection import REASONING, Selection, model_spec, select_features
from resa_interp.features.stability import STABILITY_RULE, LayerStability, layer_stability, match_latents

__all__ = [
    "BOUNDARY",
    "DEFAULT_MATCH_THRESHOLD",
    "DEFINITION",
    "DEFINITIONS",
    "MAIN_SEEDS",
    "MARKER_RULES",
    "OCCURRENCES",
    "REASONING",
    "REASON_WORDS",
    "SCORE_DEFINITION",
    "STABILITY_RULE",
    "FeatureConfig",
    "FeaturesRun",
    "LayerFeatures",
    "LayerScores",
    "LayerStability",
    "PromptInfo",
    "Selection",
    "counts_figure",
    "extract_features",
    "format_headline",
    "format_paths",
    "format_seed_table",
    "format_table",
    "layer_stability",
    "match_latents",
    "measure_boundary",
    "missing_saes",
    "model_spec",
    "prompt_info",
    "qualifying",
    "read_prompts",
    "read_reason_texts",
    "reason_score",
    "reasonscore_features",
    "require_reason_words",
    "run_features",
    "saes_to_train",
    "select_features",
    "select_latents",
    "span_value",
    "train_first",
    "window_masks",
    "word_groups",
    "words_in_texts",
    "write_outputs",
]
