"""The unit of every dataset here: a question and its verified final answer, with no chain of thought."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QAExample:
    """One question with its verified final answer (no chain of thought)."""

    problem: str
    answer: str
