"""Evaluation tasks: the paper's six benchmarks, local JSONL files and the synthetic set, as prompts plus golds.

Prompts and datasets are the authors' custom lighteval tasks (Resa's and Tina's `run_eval_custom_tasks.py`):
zero-shot, one user message, no system prompt. Math problems get the boxed-answer instruction; multiple-choice
questions get the simple-evals template (`Answer: $LETTER`). GPQA's correct option is placed at a random
position, here drawn from a seeded generator so that both backends and every rerun see the same prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resa_interp.data import SYNTHETIC_SIZE, synthetic_qa
from resa_interp.errors import ResaError
from resa_interp.evaluation.grading import LETTERS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MATH_QUERY_TEMPLATE = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' (without "
    "quotes) where ANSWER is just the final number or expression that solves the problem. Think step by step "
    "before answering.\n\n{question}"
)
"""The authors' math prompt (after simple-evals and Llama 3's MATH evaluation): the answer must end up boxed."""

CHOICE_QUERY_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of {letters}. Think step by step before "
    "answering.\n\n{question}\n\n{options}"
)
"""The authors' GPQA prompt (simple-evals), with the option lines `A) ...`; `letters` is ABCD for GPQA."""

SYNTHETIC = "synthetic"
SYNTHETIC_EVAL_SIZE = 100
SYNTHETIC_EVAL_SEED = 20_251_105
"""Seed of the synthetic evaluation set, distinct from the training default (seed 0); problems that also occur
in the default training set (`data.qa.SYNTHETIC_SIZE` problems of seed 0) are left out, so it is held out."""


@dataclass(frozen=True)
class PaperTask:
    """Where one of the paper's benchmarks lives on the hub and how it is graded."""

    column: str
    """Column header in the paper's tables."""
    hf_repo: str
    hf_subset: str
    split: str
    problem_field: str
    gold_field: str
    grading: str
    """'expr', 'latex' or 'choice' (see `resa_interp.evaluation.grading`)."""


PAPER_TASKS = {
    "aime24": PaperTask("AIME24", "HuggingFaceH4/aime_2024", "default", "train", "problem", "answer", "expr"),
    "aime25": PaperTask("AIME25", "yentinglin/aime_2025", "default", "train", "problem", "answer", "expr"),
    "amc23": PaperTask("AMC23", "knoveleng/AMC-23", "default", "train", "problem", "answer", "expr"),
    "math_500": PaperTask("MATH500", "HuggingFaceH4/MATH-500", "default", "test", "problem", "solution", "latex"),
    "gpqa:diamond": PaperTask(
        "GPQA", "Idavidrein/gpqa", "gpqa_diamond", "train", "Question", "Correct Answer", "choice"
    ),
    "minerva": PaperTask("Minerva", "knoveleng/Minerva-Math", "default", "train", "problem", "solution", "latex"),
}
"""The paper's six tasks, in the column order of its tables (AIME24, AIME25, AMC23, MATH500, GPQA, Minerva)."""
PAPER_ORDER = tuple(PAPER_TASKS)
GPQA_WRONG_FIELDS = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


@dataclass(frozen=True)
class EvalProblem:
    """One question as both backends see it."""

    query: str
    """The user message: the task's template applied to the question (the chat template comes later)."""
    gold: str
    """What the grader compares against: a number/expression ('expr'), LaTeX ('latex'), or a letter ('choice')."""
    n_choices: int = 0
    """Number of options of a multiple-choice question (0 for math)."""


@dataclass(frozen=True)
class EvalTask:
    """A named list of problems with one grading."""

    name: str
    column: str
    """Column header in the printed table."""
    grading: str
    source: str
    """Hub dataset, local file, or the synthetic set's description."""
    problems: list[EvalProblem] = field(repr=False)


def math_query(question: str) -> str:
    """The boxed-answer math prompt for one question."""
    return MATH_QUERY_TEMPLATE.format(question=question)


def choice_query(question: str, options: list[str]) -> str:
    """The multiple-choice prompt: the question, then one `X) option` line per option."""
    letters = LETTERS[: len(options)]
    lines = "\n".join(f"{letter}) {option}" for letter, option in zip(letters, options))
    return CHOICE_QUERY_TEMPLATE.format(letters=letters, question=question, options=lines)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, query: str) -> str:
    """The text a model is given: its chat template around one user message, ready for the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise ResaError(
            f"model tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; the paper evaluates "
            "with the chat template on, so use an instruct/chat checkpoint"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
    )


# --------------------------------------------------------------------------------------------- loading


def _hub_rows(name: str, task: PaperTask) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(task.hf_repo, task.hf_subset, split=task.split)
    except Exception as exc:  # datasets raises many types when the hub and its cache both fail
        raise ResaError(
            f"task {name!r}: dataset {task.hf_repo} could not be loaded from the hub or its cache "
            f"({type(exc).__name__}); offline? evaluate a local JSONL file or '{SYNTHETIC}' instead"
        ) from exc
    return list(table)


def _paper_task(name: str, limit: int | None, seed: int) -> EvalTask:
    task = PAPER_TASKS[name]
    rows = _hub_rows(name, task)[:limit]
    if task.grading == "choice":
        rng = random.Random(seed)
        problems = []
        for row in rows:
            options = [str(row[f]) for f in GPQA_WRONG_FIELDS]
            gold_index = rng.randint(0, 3)
            options.insert(gold_index, str(row[task.gold_field]))
            problems.append(EvalProblem(choice_query(str(row[task.problem_field]), options), LETTERS[gold_index], 4))
    else:
        problems = [EvalProblem(math_query(str(row[task.problem_field])), str(row[task.gold_field])) for row in rows]
    return EvalTask(name, task.column, task.grading, f"{task.hf_repo} ({task.hf_subset}, {task.split})", problems)


def _choice_gold(answer: str, options: list[str], where: str) -> str:
    letters = LETTERS[: len(options)]
    if answer in letters and len(answer) == 1:
        return answer
    if options.count(answer) == 1:
        return letters[options.index(answer)]
    raise ResaError(f"{where}: answer {answer!r} is neither an option letter ({letters}) nor exactly one option's text")


def _local_task(path: Path, limit: int | None) -> EvalTask:
    problems: list[EvalProblem] = []
    kinds: set[bool] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"task file {str(path)!r} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ResaError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not str(row.get("problem") or "").strip() or row.get("answer") is None:
            raise ResaError(f"{where}: needs a non-empty 'problem' and an 'answer' ('choices' too for multiple choice)")
        problem, answer = str(row["problem"]).strip(), str(row["answer"]).strip()
        options = row.get("choices", row.get("options"))
        kinds.add(options is not None)
        if options is None:
            problems.append(EvalProblem(math_query(problem), f"\\boxed{{{answer}}}"))
        elif isinstance(options, list) and 2 <= len(options) <= len(LETTERS):
            options = [str(option).strip() for option in options]
            gold = _choice_gold(answer, options, where)
            problems.append(EvalProblem(choice_query(problem, options), gold, len(options)))
        else:
            raise ResaError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} option texts")
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise ResaError(f"task file {str(path)!r} holds no problems")
    if len(kinds) > 1:
        raise ResaError(f"task file {str(path)!r} mixes multiple-choice rows (with 'choices') and math rows; split it")
    grading = "choice" if kinds == {True} else "latex"
    return EvalTask(path.stem, path.stem, grading, str(path), problems)


def _synthetic_task(limit: int | None) -> EvalTask:
    n = limit or SYNTHETIC_EVAL_SIZE
    seen = {example.problem for example in synthetic_qa(SYNTHETIC_SIZE, seed=0)}
    pool = [example for example in synthetic_qa(3 * n, seed=SYNTHETIC_EVAL_SEED) if example.problem not in seen]
    problems = [EvalProblem(math_query(e.problem), f"\\boxed{{{e.answer}}}") for e in pool[:n]]
    source = f"synthetic (seed {SYNTHETIC_EVAL_SEED}, held out from the default training set)"
    return EvalTask(SYNTHETIC, SYNTHETIC, "latex", source, problems)


def load_task(spec: str, limit: int | None = None, seed: int = 0) -> EvalTask:
    """One task: a paper task name (from the hub), a local `.jsonl` file, or 'synthetic'; the first `limit` problems."""
    if limit is not None and limit < 1:
        raise ResaError(f"--limit {limit}: must be at least 1")
    if spec in PAPER_TASKS:
        return _paper_task(spec, limit, seed)
    if spec == SYNTHETIC:
        return _synthetic_task(limit)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".jsonl":
        return _local_task(path, limit)
    raise ResaError(
        f"task {spec!r}: not a paper task, not '{SYNTHETIC}', and not an existing .jsonl file; accepted: "
        f"{', '.join(PAPER_TASKS)}, {SYNTHETIC}, or path/to/task.jsonl (rows with 'problem', 'answer'[, 'choices'])"
    )


def load_tasks(specs: list[str], limit: int | None = None, seed: int = 0) -> list[EvalTask]:
    """Several tasks; names must be distinct (two files with the same stem are refused)."""
    tasks = [load_task(spec, limit, seed) for spec in specs]
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ResaError(f"--tasks: task name(s) {', '.join(duplicates)} given twice; rename one of the files")
    return tasks
