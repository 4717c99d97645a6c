"""The unit of every dataset here: a question and its verified final answer, and where a dataset has one, a
worked solution (the reasoning trace a source model is taught; CoT-free text never uses it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QAExample:
    """One question with its verified final answer, and optionally its worked solution."""

    problem: str
    answer: str
    trace: str | None = None
    """The reasoning trace that leads to `answer` (only the 'r1-trace' template uses it)."""
