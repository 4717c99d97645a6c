"""Interventions: do the features matter? Edit SAE latents inside the running model (the SAE's error term kept),
measure what changes against a frequency-matched random control (`steer`), and trace where latents fire over a
text (`trace`); and set two definitions of a reasoning feature side by side on the same SAEs, each set steered
against its own control (`compare_definitions`).

Reads a run's SAEs (and its features.json for the default latents, the reasoning features); writes effects,
samples and figures into an output folder, and gives small result dataclasses for notebooks.
"""

from resa_interp.interventions.config import EditedLatents, SteerConfig, TraceConfig, parse_latents
from resa_interp.interventions.definitions import compare_definitions, marker_sets, overlap, steer_set
from resa_interp.interventions.hook import MODES, Intervention, LatentEdit, edit_latents, residual_delta
from resa_interp.interventions.measure import (
    AblationEffect,
    Estimate,
    Generation,
    TextEffect,
    ablation_effects,
    bootstrap,
    text_effect,
)
from resa_interp.interventions.results import ConditionEffect, Difference, GenerationSample, SteerResult
from resa_interp.interventions.steer import load_chosen, matched_controls, run_steer, steer
from resa_interp.interventions.trace import Trace, TraceRun, run_trace, trace_text

__all__ = [
    "AblationEffect",
    "ConditionEffect",
    "Difference",
    "EditedLatents",
    "Estimate",
    "Generation",
    "GenerationSample",
    "Intervention",
    "LatentEdit",
    "MODES",
    "SteerConfig",
    "SteerResult",
    "TextEffect",
    "Trace",
    "TraceConfig",
    "TraceRun",
    "ablation_effects",
    "bootstrap",
    "compare_definitions",
    "edit_latents",
    "load_chosen",
    "marker_sets",
    "matched_controls",
    "overlap",
    "parse_latents",
    "residual_delta",
    "run_steer",
    "run_trace",
    "steer",
    "steer_set",
    "text_effect",
    "trace_text",
]
