"""Prompt-only reasoning-feature extraction (paper section 5, Figure 3): which SAE latents meet the definition
(`DEFINITION`, also written into features.json) on the prompts, with their margins and, optionally, how close to
the definition's boundary numerical noise puts them (`features.boundary`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from resa_interp.data import END_THINK, THINK
from resa_interp.errors import ResaError, check_choice
from resa_interp.features.boundary import (
    EXACT_PATHS,
    near_boundary,
    path_latents,
    path_noise,
    sides,
    span_activity,
    span_value,
    thresholds,
)
from resa_interp.features.config import MARKER_RULES, OCCURRENCES, FeatureConfig
from resa_interp.features.prompts import PromptInfo, prompt_info
from resa_interp.model import Subject, hook_name
from resa_interp.model import spliced as splice_context

if TYPE_CHECKING:
    from sae_lens import SAE

DEFINITION = (
    "Definition (also written into features.json): with SAEs applied after layers 1..L-2, a latent is a reasoning\n"
    "feature at layer l when its activation exceeds the threshold at every `<think>` and every `</think>`\n"
    "occurrence of the prompt (`occurrences='any'`: at least one of each) and at no other position. For a marker\n"
    "that tokenizes into several tokens, \"at the occurrence\" means on any token of its span (`marker_rule='any'`),\n"
    "on its last token ('last'), or on every token of it ('all'). Positions outside all marker spans are \"other\".\n"
    "A BOS token the tokenizer prepends is not part of the prompt and is excluded. With several prompts, a latent\n"
    "must qualify in every one. By default each SAE reads the model's own clean activation; with `spliced`, every\n"
    "SAE's reconstruction is spliced in at once (position 0, the sink the SAEs were not trained on, kept clean)\n"
    "and each SAE reads the activation of that spliced model."
)
"""The definition of a reasoning feature, as features.json records it (a constant string, so it survives
`python -OO`)."""


@dataclass
class LayerFeatures:
    """The reasoning features of one layer."""

    layer: int
    hook_name: str
    sae_path: str
    count: int
    features: list[int]
    marker_activations: dict[str, list[dict[str, list[float]]]]
    """Feature id -> per prompt, marker -> its activation at each occurrence (max/last/min of the span by rule)."""
    sae_quality: dict = field(default_factory=dict)
    margins: dict[str, dict[str, float]] = field(default_factory=dict)
    """Feature id -> `marker_min` (its smallest activation at a marker occurrence, as the rule reads it, over all
    prompts), `other_max` (its largest activation at any other prompt position) and `margin` (the difference)."""
    boundary: dict = field(default_factory=dict)
    """With `FeatureConfig.noise`: the noise of every code path against the HF path (`noise`), the features each
    path finds (`paths`), and the features near the boundary at the float32 paths' and at the other precision's
    noise (`fragile_*`: in the set, `near_miss_*`: outside it)."""


def qualifying(latents: torch.Tensor, prompt: PromptInfo, cfg: FeatureConfig) -> torch.Tensor:
    """Boolean [d_sae]: which latents meet the definition on one prompt, given its latents [T, d_sae]."""
    active = latents > thresholds(latents, cfg)
    ok = torch.ones(latents.shape[1], dtype=torch.bool, device=latents.device)
    marker_positions: set[int] = set()
    for marker in (THINK, END_THINK):
        per_occurrence = torch.stack(
            [span_activity(active, s, e, cfg.marker_rule) for s, e in prompt.marker_spans[marker]]
        )
        ok &= per_occurrence.all(0) if cfg.occurrences == "all" else per_occurrence.any(0)
        marker_positions |= {p for s, e in prompt.marker_spans[marker] for p in range(s, e)}
    other = [p for p in range(latents.shape[0]) if p not in marker_positions and p not in prompt.excluded_positions]
    if other:
        ok &= ~active[other].any(0)
    return ok


@torch.inference_mode()
def extract_features(
    subject: Subject,
    saes: dict[int, SAE],
    hook: str,
    prompts: list[str],
    cfg: FeatureConfig,
    sae_paths: dict[int, str] | None = None,
    quality: dict[int, dict] | None = None,
) -> tuple[list[PromptInfo], list[LayerFeatures]]:
    """Reasoning features per layer over all prompts (a latent must qualify in every prompt)."""
    check_choice("--marker-rule", cfg.marker_rule, MARKER_RULES)
    check_choice("--occurrences", cfg.occurrences, OCCURRENCES)
    for layer, sae in saes.items():
        if sae.cfg.d_in != subject.hook_width(hook):
            raise ResaError(
                f"SAE for layer {layer} has d_in {sae.cfg.d_in}, the model's {hook} activations have width "
                f"{subject.hook_width(hook)}"
            )
    infos = [prompt_info(text, subject, cfg) for text in prompts]
    harvest = subject.harvester(hook, list(saes))
    keep = {layer: torch.ones(sae.cfg.d_sae, dtype=torch.bool, device=subject.device) for layer, sae in saes.items()}
    per_prompt_latents: list[dict[int, torch.Tensor]] = []
    for info in infos:
        ids = torch.tensor([info.token_ids])
        if cfg.spliced:
            # position 0 keeps its clean activation: Stage I never trains on the sink position
            with splice_context(subject.hf, {(hook, layer): sae for layer, sae in saes.items()}, keep_first=1):
                acts = harvest(ids)
        else:
            acts = harvest(ids)
        latents = {layer: sae.encode(acts[layer][0].to(sae.dtype)) for layer, sae in saes.items()}
        for layer in saes:
            keep[layer] &= qualifying(latents[layer], info, cfg)
        per_prompt_latents.append(latents)

    results = []
    for layer in sorted(saes):
        ids = keep[layer].nonzero().flatten().tolist()
        marker_acts = {
            str(fid): [
                {
                    marker: [
                        round(float(span_value(lat[layer], s, e, cfg.marker_rule)[fid]), 6)
                        for s, e in info.marker_spans[marker]
                    ]
                    for marker in (THINK, END_THINK)
                }
                for info, lat in zip(infos, per_prompt_latents)
            ]
            for fid in ids
        }
        per_side = [sides(lat[layer], info, cfg) for info, lat in zip(infos, per_prompt_latents)]
        plain_other = [_other_max(lat[layer], info) for info, lat in zip(infos, per_prompt_latents)]
        margins = {}
        for fid in ids:
            low = min(float(side.marker[fid]) for side in per_side)
            high = max(float(other[fid]) for other in plain_other)
            margins[str(fid)] = {"marker_min": round(low, 6), "other_max": round(high, 6),
                                 "margin": round(low - high, 6)}
        results.append(
            LayerFeatures(
                layer=layer,
                hook_name=hook_name(hook, layer),
                sae_path=(sae_paths or {}).get(layer, ""),
                count=len(ids),
                features=ids,
                marker_activations=marker_acts,
                sae_quality=(quality or {}).get(layer, {}),
                margins=margins,
            )
        )
    return infos, results


def _other_max(latents: torch.Tensor, info: PromptInfo) -> torch.Tensor:
    """Per latent, its largest activation at the prompt's positions outside every marker (0 when there are none)."""
    markers = {p for found in info.marker_spans.values() for s, e in found for p in range(s, e)}
    other = [p for p in range(latents.shape[0]) if p not in markers and p not in info.excluded_positions]
    return latents[other].max(0).values if other else torch.zeros(latents.shape[1], device=latents.device)


def measure_boundary(subject: Subject, saes: dict[int, SAE], hook: str, infos: list[PromptInfo], cfg: FeatureConfig,
                      results: list[LayerFeatures]) -> None:
    """Fill every layer's `boundary`: the latents along every code path (`features.boundary`), each path's noise
    against the HF path and its feature set, and the latents within that noise of the definition's boundary."""
    per_prompt = [path_latents(subject, saes, hook, info.token_ids) for info in infos]
    paths = list(per_prompt[0])
    per_prompt_noise = [path_noise(lat) for lat in per_prompt]
    noise = {layer: {path: torch.stack([n[layer][path] for n in per_prompt_noise]).max(0).values
                     for path in paths if path != "hf"} for layer in saes}
    for r in results:
        found = {}
        for path in paths:
            keep = torch.ones(saes[r.layer].cfg.d_sae, dtype=torch.bool, device=subject.device)
            for info, lat in zip(infos, per_prompt):
                keep &= qualifying(lat[path][r.layer], info, cfg)
            found[path] = keep.nonzero().flatten().tolist()
        layer_noise = noise[r.layer]
        zero = torch.zeros(saes[r.layer].cfg.d_sae, device=subject.device)
        levels = {"fp32": torch.stack([layer_noise.get(p, zero) for p in EXACT_PATHS]).max(0).values,
                  "precision": layer_noise.get("bfloat16", zero)}
        boundary = {"noise": {p: round(float(v.max()), 8) for p, v in layer_noise.items()},
                    "noise_at_features": {p: round(float(v[r.features].max()), 8) if r.features else 0.0
                                          for p, v in layer_noise.items()},
                    "paths": found}
        for name, eps in levels.items():
            fragile = torch.zeros(saes[r.layer].cfg.d_sae, dtype=torch.bool, device=subject.device)
            near = torch.zeros_like(fragile)
            for info, lat in zip(infos, per_prompt):
                latents = lat["hf"][r.layer]
                f, n = near_boundary(sides(latents, info, cfg), thresholds(latents, cfg), eps)
                fragile |= f
                near |= n
            boundary[f"fragile_{name}"] = [i for i in fragile.nonzero().flatten().tolist() if i in r.features]
            boundary[f"near_miss_{name}"] = [i for i in near.nonzero().flatten().tolist() if i not in r.features]
        r.boundary = boundary
