"""The graders: the authors' extractive match on a table of tricky answer pairs, both ways."""

from __future__ import annotations

import pytest

from resa_interp.errors import ResaError
from resa_interp.evaluation.grading import extractive_match, grade, grading_doc

# (generation, gold, grading, options, correct, extracted)
SHOULD_MATCH = [
    ("Therefore, the final answer is: $\\boxed{42}$. I hope it is correct", "42", "expr", 0, "42"),
    ("so the answer is 42.", "42", "expr", 0, "42"),  # no box: a plain number after an anchor
    ("$\\boxed{\\frac{3}{4}}$", "0.75", "expr", 0, "\\frac{3}{4}"),  # fraction vs decimal
    ("\\boxed{\\frac{3}{4}}", "\\boxed{3/4}", "latex", 0, "\\frac{3}{4}"),  # LaTeX vs plain
    ("The answer is \\boxed{\\dfrac{1}{2}}", "\\boxed{0.5}", "latex", 0, "\\frac{1}{2}"),
    ("\\boxed{x^2+1}", "The result is $\\boxed{1+x^2}$", "latex", 0, "x^2+1"),  # symbolic, gold a solution
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\boxed{\\sqrt2/2}", "latex", 0, "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{\\pi/2}", "\\boxed{\\frac{\\pi}{2}}", "latex", 0, "\\pi/2"),
    ("\\boxed{50\\%}", "\\boxed{\\frac{1}{2}}", "latex", 0, "50\\%"),
    ("\\boxed{(1, 2)}", "\\boxed{(1,2)}", "latex", 0, "(1, 2)"),
    ("\\boxed{2, 3}", "\\boxed{3, 2}", "latex", 0, "2, 3"),  # unordered answer sets
    ("\\boxed{-7}", "\\boxed{-7}", "latex", 0, "-7"),
    ("x = 3 at first, but the final answer is \\boxed{4}", "4", "expr", 0, "4"),  # the box wins
    ("\\boxed{033}", "33", "expr", 0, "033"),  # AIME-style leading zero
    ("The answer is 1,000.", "1000", "expr", 0, "1000"),  # thousands separator
    ("\\boxed{0.750001}", "0.75", "expr", 0, "0.750001"),  # equal at 5 decimals
    ("\\boxed{x=5}", "5", "expr", 0, "x=5"),  # an assignment's right-hand side
    ("<think>maybe \\boxed{7}</think> The answer is \\boxed{5}", "\\boxed{5}", "latex", 0, "5"),
    ("Answer: B", "B", "choice", 4, "B"),
    ("Answer: (C)", "C", "choice", 4, "C"),
    ("The correct option is therefore D.\nAnswer: D", "D", "choice", 4, "D"),
    ("<think>Answer: A</think>\nAnswer: B", "B", "choice", 4, "B"),
    ("the answer is **E**", "E", "choice", 5, "E"),
]
SHOULD_NOT_MATCH = [
    ("x = 3 at first, but the final answer is \\boxed{4}", "3", "expr", 0, "4"),
    ("\\boxed{7}", "\\boxed{-7}", "latex", 0, "7"),
    ("\\boxed{3/5}", "\\boxed{3/4}", "latex", 0, "\\frac{3}{5}"),
    ("\\boxed{0.7501}", "0.75", "expr", 0, "0.7501"),  # differs within 5 decimals
    ("\\boxed{x^2-1}", "\\boxed{x^2+1}", "latex", 0, "x^2-1"),
    ("<think>maybe \\boxed{7}</think> The answer is \\boxed{5}", "\\boxed{7}", "latex", 0, "5"),  # thoughts don't count
    ("I am not sure.", "\\boxed{5}", "latex", 0, None),
    ("Answer: C", "B", "choice", 4, "C"),
    ("<think>Answer: A</think>\nAnswer: B", "A", "choice", 4, "B"),
    ("I don't know", "B", "choice", 4, None),
    ("Answer: E", "D", "choice", 4, None),  # E is no option of a 4-option question
]


@pytest.mark.parametrize("generation, gold, grading, options, extracted", SHOULD_MATCH)
def test_should_match(generation, gold, grading, options, extracted):
    verdict = grade(generation, gold, grading, options)
    assert verdict.correct
    assert verdict.extracted == extracted


@pytest.mark.parametrize("generation, gold, grading, options, extracted", SHOULD_NOT_MATCH)
def test_should_not_match(generation, gold, grading, options, extracted):
    verdict = grade(generation, gold, grading, options)
    assert not verdict.correct
    assert verdict.extracted == extracted


def test_choice_docs_and_bad_gradings():
    doc = grading_doc("C", "choice", 4)
    assert doc.choices == ["A", "B", "C", "D"] and doc.gold_index == 2
    assert grading_doc("\\boxed{5}", "latex").choices == ["\\boxed{5}"]
    with pytest.raises(ResaError, match="not one of the 4 option letters ABCD"):
        grading_doc("E", "choice", 4)
    with pytest.raises(ResaError, match="grading 'exact' is unknown"):
        extractive_match("exact")
