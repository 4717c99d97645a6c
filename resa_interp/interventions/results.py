"""What `steer` measured: the effect of each edit and of its control, their paired difference, the greedy
generations side by side, and `SteerResult` holding them (the report reads it, the runner makes it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from resa_interp.interventions.measure import Estimate, Generation


@dataclass
class ConditionEffect:
    """The teacher-forced effect of one condition (controls: pooled over draws), with intervals over texts."""

    name: str
    kind: str
    latents: dict[int, list[list[int]]]
    """Layer -> the edited latent ids, one list per draw."""
    dlogp_marker: Estimate
    dlogp_other: Estimate
    kl: Estimate
    per_text: dict[str, list[float]] = field(repr=False)
    """'dlogp_marker', 'dlogp_other', 'kl' -> one value per text (controls: the mean over draws)."""


@dataclass
class Difference:
    """Chosen minus control on the same texts (paired), with intervals."""

    name: str
    dlogp_marker: Estimate
    dlogp_other: Estimate
    kl: Estimate


@dataclass
class GenerationSample:
    """One question's greedy continuations side by side."""

    problem: str
    gold: str
    clean: Generation
    edited: Generation
    control: Generation


@dataclass
class SteerResult:
    """What `steer` measured (small and named, for notebooks)."""

    effects: list[ConditionEffect]
    differences: list[Difference]
    generations: list[GenerationSample]
    generation_summary: dict[str, Estimate]
    """'reasoning_tokens_<clean|edited|control>', 'correct_<...>' and the paired differences."""
    samples: list[dict] = field(repr=False)
    model: str = ""
    """The model run (its spec)."""
    n_texts: int = 0
    """Teacher-forced texts measured."""
    paths: dict[str, Path] = field(default_factory=dict)
