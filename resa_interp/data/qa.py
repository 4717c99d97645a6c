"""Question/answer data: the built-in synthetic set and its worked-solution kinds, hub datasets (STILL,
DeepScaleR, any name), local files.

Columns are matched by common names (problem/question/prompt; answer/final_answer/solution; trace/reasoning for an
optional worked solution) unless overridden.
"""

from __future__ import annotations

import re
from pathlib import Path

from resa_interp.data.example import QAExample
from resa_interp.data.synthetic import synthetic_qa
from resa_interp.data.traces import traced_qa
from resa_interp.errors import ResaError
from resa_interp.runs import sha256_text

KNOWN_DATASETS = {
    "still": "RUC-AIBOX/STILL-3-Preview-RL-Data",
    "deepscaler": "agentica-org/DeepScaleR-Preview-Dataset",
}
PROBLEM_COLUMNS = ("problem", "question", "prompt", "query", "input")
ANSWER_COLUMNS = ("answer", "final_answer", "target", "solution", "output")
TRACE_COLUMNS = ("trace", "reasoning", "thinking", "cot")
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SYNTHETIC = "synthetic"
SYNTHETIC_SIZE = 2000
TRACES = "traces"
"""The built-in questions with worked solutions (`data.traces`), SYNTHETIC_SIZE of them unless limited."""
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def _pick_column(columns: list[str], override: str | None, candidates: tuple[str, ...], role: str, spec: str) -> str:
    if override is not None:
        if override not in columns:
            raise ResaError(
                f"dataset {spec!r}: {role} column {override!r} does not exist; columns: {', '.join(columns)}"
            )
        return override
    for name in candidates:
        if name in columns:
            return name
    raise ResaError(
        f"dataset {spec!r}: no {role} column (looked for {', '.join(candidates)}); columns: {', '.join(columns)}; "
        f"name one with --{role}-column"
    )


def final_answer(text: str) -> str:
    """A solution's final answer: its last \\boxed{...} if it has one, else the text itself."""
    boxed = _BOXED.findall(text)
    return boxed[-1].strip() if boxed else text.strip()


def _load_table(spec: str, split: str):
    import datasets

    datasets.disable_progress_bars()
    path = Path(spec).expanduser()
    if path.exists():
        if path.suffix not in LOCAL_FORMATS:
            raise ResaError(f"dataset {spec!r}: unsupported file type {path.suffix or '(none)'}; accepted: "
                            f"{', '.join(LOCAL_FORMATS)}")
        try:
            return datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as exc:
            raise ResaError(f"dataset {spec!r}: could not be read as {path.suffix} ({type(exc).__name__})") from exc
    if "/" not in spec or spec.startswith((".", "/", "~")):
        raise ResaError(
            f"dataset {spec!r}: no such file, and not a hub dataset id; accepted: {SYNTHETIC}, {TRACES}, "
            f"{', '.join(KNOWN_DATASETS)}, a hub id (org/name) or a .json/.jsonl/.csv/.parquet file"
        )
    try:
        return datasets.load_dataset(spec, split=split)
    except Exception as exc:
        raise ResaError(
            f"dataset {spec!r}: could not be loaded from the hub or its cache ({type(exc).__name__}); "
            f"offline? pass a local file instead"
        ) from exc


def load_qa(
    spec: str = SYNTHETIC,
    *,
    problem_column: str | None = None,
    answer_column: str | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    trace_column: str | None = None,
) -> list[QAExample]:
    """Load question/answer pairs from `spec`: 'synthetic', 'traces', 'still', 'deepscaler', a hub id, or a local
    file; a trace column (`trace_column`, else matched by `TRACE_COLUMNS`, else none) gives worked solutions."""
    if spec == SYNTHETIC:
        return synthetic_qa(limit or SYNTHETIC_SIZE, seed=seed)
    if spec == TRACES:
        return traced_qa(limit or SYNTHETIC_SIZE, seed=seed)
    table = _load_table(KNOWN_DATASETS.get(spec.lower(), spec), split)
    columns = list(table.column_names)
    p_col = _pick_column(columns, problem_column, PROBLEM_COLUMNS, "problem", spec)
    a_col = _pick_column(columns, answer_column, ANSWER_COLUMNS, "answer", spec)
    t_col = (_pick_column(columns, trace_column, (), "trace", spec) if trace_column is not None
             else next((c for c in TRACE_COLUMNS if c in columns and c not in (p_col, a_col)), None))
    examples = []
    for row in table:
        problem, answer = row[p_col], row[a_col]
        if problem is None or answer is None or not str(problem).strip() or not str(answer).strip():
            continue
        trace = str(row[t_col]).strip() or None if t_col is not None and row[t_col] is not None else None
        examples.append(QAExample(str(problem).strip(), final_answer(str(answer)), trace))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ResaError(f"dataset {spec!r}: no rows with both a {p_col!r} and an {a_col!r} value")
    return examples


def dataset_fingerprint(spec: str, examples: list[QAExample]) -> str:
    """SHA-256 of the loaded examples (what was actually used, not just the name; traces count where present)."""
    return sha256_text(spec, *(f"{e.problem}\x1f{e.answer}" + (f"\x1f{e.trace}" if e.trace else "") for e in examples))
