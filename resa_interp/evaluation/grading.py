"""The paper's graders, shared by both evaluation backends.

The authors graded with lighteval's extractive-match metric (the math-verify parser and comparer, which lighteval
carries with latex2sympy2_extended): math answers are extracted from the generation (a `\\boxed{}` first, then
plain expressions and LaTeX) and compared symbolically with the gold answer at 5 decimal places; GPQA letters are
extracted after an anchor such as `Answer:`. Three gradings cover the six tasks:

- `expr`:   the gold is a plain number or expression (AIME24, AIME25, AMC23);
- `latex`:  the gold is LaTeX, typically a full solution with a `\\boxed{}` (MATH-500, Minerva; local tasks too,
            whose answers are graded as `\\boxed{answer}`);
- `choice`: the gold is a letter (GPQA Diamond, local multiple-choice tasks).

Before extraction the generation loses every `<think> ... </think>` pair, as lighteval's pipeline does by default.
The same metric objects grade in the vLLM path (inside lighteval) and in the transformers path (here), so a
generation gets the same verdict whichever backend produced it.
"""

from __future__ import annotations

import functools
import logging
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resa_interp.errors import ResaError, check_choice
from resa_interp.extras import require_extra

if TYPE_CHECKING:
    from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric

GRADINGS = ("expr", "latex", "choice")
LETTERS = string.ascii_uppercase
REASONING_TAGS = [("<think>", "</think>")]
PRECISION = 5
"""Decimal places of the numeric comparison (the authors' metrics use 5)."""


@dataclass(frozen=True)
class Verdict:
    """How one generation was graded."""

    correct: bool
    extracted: str | None
    """The answer the grader extracted from the generation, as written there (None: nothing extractable)."""


def require_grader() -> None:
    """A one-line install hint unless the grader's libraries (the `eval` extra) are importable."""
    require_extra("lighteval.metrics.dynamic_metrics", "eval", "grading answers")
    require_extra("latex2sympy2_extended", "eval", "grading answers")
    # lighteval warns on every generation without an extractable answer; the verdicts carry that information.
    logging.getLogger("lighteval.metrics.dynamic_metrics").setLevel(logging.ERROR)


@functools.cache
def extractive_match(grading: str) -> MultilingualExtractiveMatchMetric:
    """The authors' lighteval metric for one grading ('expr', 'latex' or 'choice')."""
    check_choice("grading", grading, GRADINGS)
    require_grader()
    from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
    from lighteval.metrics.utils.extractive_match_utils import (
        ExprExtractionConfig,
        IndicesExtractionConfig,
        LatexExtractionConfig,
    )
    from lighteval.utils.language import Language

    if grading == "choice":
        letters = (IndicesExtractionConfig(prefix_for_extraction="NativeLetters"),)
        return MultilingualExtractiveMatchMetric(
            language=Language.ENGLISH,
            gold_extraction_target=letters,
            pred_extraction_target=letters,
            precision=PRECISION,
        )
    gold = ExprExtractionConfig() if grading == "expr" else LatexExtractionConfig()
    return MultilingualExtractiveMatchMetric(
        language=Language.ENGLISH,
        fallback_mode="first_match",
        precision=PRECISION,
        gold_extraction_target=(gold,),
        # a \boxed{} answer wins over any other match
        pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)),
        aggregation_function=max,
    )


def grading_doc(gold: str, grading: str, n_choices: int = 0, query: str = ""):
    """The lighteval `Doc` a metric grades against: the gold answer as the one choice, or the option letters."""
    from lighteval.tasks.requests import Doc

    if grading != "choice":
        return Doc(query=query, choices=[gold], gold_index=0)
    letters = list(LETTERS[:n_choices])
    if gold not in letters:
        raise ResaError(f"gold answer {gold!r} is not one of the {n_choices} option letters {''.join(letters)}")
    return Doc(query=query, choices=letters, gold_index=letters.index(gold))


def strip_reasoning(text: str) -> str:
    """The generation without its `<think> ... </think>` sections (lighteval's post-processing)."""
    from lighteval.utils.utils import remove_reasoning_tags

    return remove_reasoning_tags(text, REASONING_TAGS)


def grade(generation: str, gold: str, grading: str, n_choices: int = 0) -> Verdict:
    """Grade one generation against its gold answer (a letter for 'choice', with `n_choices` options)."""
    from lighteval.models.model_output import ModelResponse

    metric = extractive_match(grading)
    doc = grading_doc(gold, grading, n_choices)
    score = metric.compute(doc, ModelResponse(text=[strip_reasoning(generation)]))
    found = (doc.specific or {}).get("extracted_predictions") or []
    # each extraction is reported as (parsed value, matched text); keep the text as the model wrote it
    return Verdict(correct=score >= 1.0, extracted=found[-1] if found else None)
