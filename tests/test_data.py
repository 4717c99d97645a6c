"""QA loading from local files with column mapping, errors, and the verified synthetic generator."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest

from resa_interp.data.qa import load_qa
from resa_interp.data.synthetic import synthetic_qa
from resa_interp.errors import ResaError

ROWS = [
    {"question": "What is 1+1?", "solution": "We add. \\boxed{2}", "id": 1},
    {"question": "Half of 1?", "solution": "It is \\boxed{\\frac{1}{2}}", "id": 2},
]


def _write(tmp_path, fmt):
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"qa.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_local_formats_and_column_mapping(tmp_path, fmt):
    examples = load_qa(str(_write(tmp_path, fmt)))
    assert [(e.problem, e.answer) for e in examples] == [("What is 1+1?", "2"), ("Half of 1?", "\\frac{1}{2}")]


def test_column_override_and_errors(tmp_path):
    path = str(_write(tmp_path, "jsonl"))
    assert load_qa(path, answer_column="id")[0].answer == "1"
    with pytest.raises(ResaError, match="answer column 'final' does not exist; columns: question, solution, id"):
        load_qa(path, answer_column="final")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": "y"}))
    with pytest.raises(ResaError, match="no problem column"):
        load_qa(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"problem": "", "answer": "1"}))
    with pytest.raises(ResaError, match="no rows with both"):
        load_qa(str(empty))
    with pytest.raises(ResaError, match="unsupported file type .txt"):
        (tmp_path / "a.txt").write_text("x")
        load_qa(str(tmp_path / "a.txt"))
    with pytest.raises(ResaError, match="no such file, and not a hub dataset id"):
        load_qa("missing.jsonl")


def test_hub_dataset_offline_is_a_clear_error():
    with pytest.raises(ResaError, match="could not be loaded from the hub"):
        load_qa("still")


def _solve(problem: str) -> str:
    """Independent solver for the synthetic question kinds (parses the text, never sees the answer)."""
    if m := re.fullmatch(r"What is \((-?\d+) ([-+*]) (-?\d+)\) ([+*]) (\d+)\?", problem):
        return str(eval(f"({m[1]} {m[2]} {m[3]}) {m[4]} {m[5]}"))  # noqa: S307 - digits and operators only
    if m := re.fullmatch(r"Solve for x: (-?\d+)x ([-+]) (\d+) = (-?\d+)\.", problem):
        a, b, c = int(m[1]), int(m[3]) * (1 if m[2] == "+" else -1), int(m[4])
        return str(Fraction(c - b, a))
    if m := re.fullmatch(r"Compute (\d+)/(\d+) ([-+]) (\d+)/(\d+) in lowest terms\.", problem):
        p, q = Fraction(int(m[1]), int(m[2])), Fraction(int(m[4]), int(m[5]))
        return str(p + q if m[3] == "+" else p - q)
    if m := re.fullmatch(r"\w+ has (\d+) \w+ and buys (\d+) more, then shares them equally among (\d+) .*", problem):
        return str((int(m[1]) + int(m[2])) // int(m[3]))
    if m := re.fullmatch(r"\w+ has (\d+) \w+, buys (\d+) more and gives (\d+) to .*", problem):
        return str(int(m[1]) + int(m[2]) - int(m[3]))
    raise AssertionError(f"unknown kind: {problem}")


def test_synthetic_answers_are_verified_and_seeded():
    examples = synthetic_qa(400, seed=3)
    assert all(_solve(e.problem) == e.answer for e in examples)
    assert synthetic_qa(50, seed=3) == examples[:50]
    assert synthetic_qa(50, seed=4) != examples[:50]
    assert load_qa("synthetic", limit=10, seed=3) == examples[:10]
