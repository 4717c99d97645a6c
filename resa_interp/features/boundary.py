"""How far each latent sits from the reasoning-feature definition's boundary, and how large numerical noise is.

The definition is a knife-edge: "active" means above the threshold, so a latent's membership could flip on a tiny
difference between two correct computations of the same activation. Every reasoning feature therefore records its
*margin*: its smallest activation at a marker occurrence (the value the rule reads, `span_value`) minus its
largest activation at any other prompt position. Noise is measured by computing the same latents along
independent code paths: the HF forward hooks `features` uses, the TransformerLens view, SAELens' own
HookedSAETransformer with the SAE attached (one SAE at a time, so each reads the clean model), and the model in
bfloat16 instead of float32. A latent is *near the boundary* when a change of the noise's size could move it across:
a reasoning feature whose smallest marker activation is within the noise of the threshold, or a latent outside
the set that would qualify if every activation moved by the noise. An exactly-zero TopK activation (the latent
was not selected at that position) is not moved by rounding, only by a change of selection, which the
cross-path comparison of the feature sets shows directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy as copy_module
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from resa_interp.data import END_THINK, THINK
from resa_interp.errors import ResaError
from resa_interp.features.config import FeatureConfig
from resa_interp.features.prompts import PromptInfo
from resa_interp.model import Harvester, Subject, hf_point, hook_name

if TYPE_CHECKING:
    from sae_lens import SAE

BOUNDARY = ("margin = smallest marker activation (as the rule reads it) - largest activation elsewhere in the prompt; "
            "noise = per latent, the largest |difference| from the HF path along TransformerLens, SAELens' hooked "
            "model (fp32) and the other precision (bfloat16); fragile = a feature within that noise of dropping out, "
            "near miss = a latent outside the set within it of qualifying")
"""What features.json records about the boundary (a constant string, so it survives `python -OO`)."""
PATHS = ("hf", "transformerlens", "saelens", "bfloat16")
"""The code paths latents are computed along: `hf` is the one `features` uses; the others measure its noise
(`bfloat16` is the model in the other precision: bfloat16 for a float32 model, float32 for a bfloat16 one)."""
EXACT_PATHS = ("transformerlens", "saelens")
"""Paths that compute the same float32 function as `hf` by other code: their differences are rounding noise."""


@dataclass(frozen=True)
class Sides:
    """Per latent, over one prompt: the value the marker rule must find above the threshold, and the largest
    selected (nonzero) activation elsewhere (-inf where the latent is zero at every other position)."""

    marker: torch.Tensor
    other: torch.Tensor


def span_activity(active: torch.Tensor, start: int, end: int, rule: str) -> torch.Tensor:
    """Whether each latent is active at one marker occurrence [start, end) by the rule (any/last/all token)."""
    window = active[start:end]
    if rule == "any":
        return window.any(0)
    if rule == "last":
        return window[-1]
    return window.all(0)


def span_value(acts: torch.Tensor, start: int, end: int, rule: str) -> torch.Tensor:
    """Each latent's activation at one marker occurrence as the rule reads it (max / last / min of the span)."""
    window = acts[start:end]
    if rule == "any":
        return window.max(0).values
    if rule == "last":
        return window[-1]
    return window.min(0).values


def thresholds(latents: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """The activation each latent must exceed [d_sae]: `threshold`, or `relative_threshold` x the latent's peak over
    the prompt when that is larger."""
    absolute = torch.full((latents.shape[1],), float(cfg.threshold), device=latents.device)
    if not cfg.relative_threshold:
        return absolute
    return torch.maximum(absolute, cfg.relative_threshold * latents.max(0).values)


def sides(latents: torch.Tensor, prompt: PromptInfo, cfg: FeatureConfig) -> Sides:
    """The two sides of the definition for every latent of one prompt's latents [T, d_sae]."""
    per_marker = []
    marker_positions: set[int] = set()
    for marker in (THINK, END_THINK):
        values = torch.stack([span_value(latents, s, e, cfg.marker_rule) for s, e in prompt.marker_spans[marker]])
        per_marker.append(values.min(0).values if cfg.occurrences == "all" else values.max(0).values)
        marker_positions |= {p for s, e in prompt.marker_spans[marker] for p in range(s, e)}
    other = [p for p in range(latents.shape[0]) if p not in marker_positions and p not in prompt.excluded_positions]
    elsewhere = latents[other] if other else latents[:0]
    selected = torch.where(elsewhere != 0, elsewhere, torch.full_like(elsewhere, -torch.inf))
    top = selected.max(0).values if other else torch.full((latents.shape[1],), -torch.inf, device=latents.device)
    return Sides(torch.stack(per_marker).min(0).values, top)


def near_boundary(side: Sides, limit: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fragile, near_miss) booleans [d_sae]: qualifying latents within their `noise` ([d_sae]) of dropping out, and
    latents outside the set within it of qualifying (`limit` from `thresholds`). A marker activation of exactly 0
    (not selected) cannot be rounded up to a qualifying one."""
    qualifies = (side.marker > limit) & ~(side.other > limit)
    fragile = qualifies & ((side.marker - limit <= noise) | (side.other > limit - noise))
    near_miss = ~qualifies & (side.marker != 0) & (side.marker > limit - noise) & ~(side.other > limit + noise)
    return fragile, near_miss


@torch.inference_mode()
def path_latents(subject: Subject, saes: dict[int, SAE], hook: str,
                 ids: Sequence[int]) -> dict[str, dict[int, torch.Tensor]]:
    """Path name -> layer -> latents [T, d_sae] of one prompt, along every path of `PATHS` this model has (the
    TransformerLens and SAELens paths need a TransformerLens view of the model; the other precision runs a copy of
    the HF model)."""
    tokens = torch.tensor([list(ids)], device=subject.device)
    acts = subject.harvester(hook, list(saes))(tokens)
    out = {"hf": {layer: sae.encode(acts[layer][0].to(sae.dtype)) for layer, sae in saes.items()}}
    if all(hf_point(subject.hf, hook, layer) is not None for layer in saes):
        other = torch.float32 if subject.hf.dtype == torch.bfloat16 else torch.bfloat16
        copy = copy_module(subject.hf).to(other)
        low = Harvester(copy, hook, list(saes))(tokens)
        del copy
        out["bfloat16"] = {layer: sae.encode(low[layer][0].to(sae.dtype)) for layer, sae in saes.items()}
    try:
        view = subject.hooked
    except ResaError:  # no TransformerLens view of this architecture: those paths are skipped
        return out
    names = {layer: hook_name(hook, layer) for layer in saes}
    _, cache = view.run_with_cache(tokens, names_filter=list(names.values()))
    out["transformerlens"] = {layer: sae.encode(cache[names[layer]][0].to(sae.dtype)) for layer, sae in saes.items()}
    if hasattr(view, "run_with_cache_with_saes"):
        out["saelens"] = {}
        for layer, sae in saes.items():  # one SAE at a time: each reads the clean model
            _, cache = view.run_with_cache_with_saes(tokens, saes=[sae])
            (name,) = [key for key in cache.keys() if key.endswith("hook_sae_acts_post")]  # the bridge names it its way
            out["saelens"][layer] = cache[name][0]
    return out


def path_noise(latents: dict[str, dict[int, torch.Tensor]]) -> dict[int, dict[str, torch.Tensor]]:
    """Layer -> path -> per latent [d_sae], the largest |difference| from the HF path at any position."""
    return {layer: {path: (per[layer].float() - ref.float()).abs().max(0).values for path, per in latents.items()
                    if path != "hf"}
            for layer, ref in latents["hf"].items()}
