"""Evaluate a model on the paper's tasks (or local ones): zero-shot Pass@1 over sampled generations.

`evaluate(config, out)` generates with one backend (`vllm`: lighteval on vLLM, the paper's setup;
`transformers`: local batched sampling, CPU included), grades every generation with the authors' grader, scores
the gold answers' teacher-forced log-probability with transformers (`likelihood`, the continuous score), and
writes `out/scores.json` (per task pass@1, problems, samples, truncated generations, tokens; the average over
tasks; wall time and device) and `out/samples.jsonl` (every prompt, generation, extracted answer and verdict).
The per-layer sweep calls it once per tuned model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from resa_interp.errors import ResaError
from resa_interp.evaluation.backends import BackendRun, generate_transformers, load_local_model
from resa_interp.evaluation.config import EvalConfig, generation_settings
from resa_interp.evaluation.grading import grade, require_grader
from resa_interp.evaluation.lighteval_backend import check_vllm, generate_vllm
from resa_interp.evaluation.likelihood import AnswerLikelihood, gold_likelihoods
from resa_interp.evaluation.tasks import PAPER_ORDER, PAPER_TASKS, EvalTask, load_tasks
from resa_interp.model import EMBEDDED_ALIASES, resolve_model_path
from resa_interp.runs import atomic_write_json, atomic_write_text, library_versions

log = logging.getLogger(__name__)
SCORES, SAMPLES = "scores.json", "samples.jsonl"
EVAL_LIBRARIES = ("lighteval", "latex2sympy2_extended", "vllm")
"""Libraries besides `runs.library_versions`' whose versions scores.json records (the grader's and the vLLM path's)."""


@dataclass(frozen=True)
class TaskScore:
    """One task's result."""

    column: str
    pass_at_1: float
    """Mean verdict over all problems and samples, in [0, 1]."""
    n_problems: int
    samples: int
    correct: int
    """Correct generations (of n_problems * samples)."""
    truncated: int
    """Generations cut at max_new_tokens without an end-of-sequence token."""
    tokens_generated: int
    source: str
    lighteval_pass_at_1: float | None = None
    """lighteval's own pass@1 (vLLM path), which must equal pass_at_1: both use the same grader."""
    gold_logprob: float | None = None
    """Mean over problems of the gold answer's mean log-probability per token, teacher-forced after the prompt
    (nats; see `resa_interp.evaluation.likelihood`). None in results written before it existed."""
    gold_logprob_sum: float | None = None
    """Mean over problems of the gold answer's total log-probability, log P(answer | prompt) (nats)."""


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate` wrote to scores.json."""

    model: str
    model_path: str
    backend: str
    device: str
    tasks: dict[str, TaskScore]
    average: float
    """Mean pass@1 over the tasks, in [0, 1]."""
    wall_time_s: float
    tokens_generated: int
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    gold_logprob: float | None = None
    """Mean over the tasks of their gold_logprob (nats per answer token): the continuous score."""
    gold_logprob_sum: float | None = None
    """Mean over the tasks of their gold_logprob_sum (nats per answer)."""


def eval_model_path(spec: str | Path | None) -> Path:
    """The HF folder to evaluate: a tuning output's `merged/` folder, else whatever the model spec resolves to."""
    if spec is not None:
        merged = Path(spec).expanduser() / "merged"
        if (merged / "config.json").is_file():
            return merged.resolve()
        if (Path(spec).expanduser() / "adapter").is_dir() and not Path(spec, "config.json").is_file():
            raise ResaError(f"model {str(spec)!r}: a tuning output without merged/ model; rerun tuning to merge it")
    return resolve_model_path(None if spec is None else str(spec))


def resolve_backend(config: EvalConfig) -> str:
    """The backend `auto` stands for here: vllm when a CUDA GPU is visible and vLLM is installed, else transformers."""
    if config.backend != "auto":
        return config.backend
    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "transformers"


def evaluate(config: EvalConfig, out: str | Path) -> EvalResult:
    """Evaluate `config.model` (spec, HF folder or tuning output; None: the embedded default) on `config.tasks`;
    write `out`."""
    config.check()
    model, tasks = config.model, [config.tasks] if isinstance(config.tasks, str) else list(config.tasks)
    if not tasks:
        raise ResaError("no tasks to evaluate; give one or more task names or .jsonl files")
    require_grader()
    started = time.perf_counter()
    backend = resolve_backend(config)
    if backend == "vllm":
        check_vllm()  # before datasets and models are fetched
    path = eval_model_path(model)
    loaded = load_tasks(tasks, config.limit, config.seed)
    out = Path(out)
    if backend == "vllm":
        run = generate_vllm(path, loaded, config, out / "lighteval")
        local = load_local_model(path, config)  # the gold answers' likelihood comes from transformers on both paths
    else:
        local = load_local_model(path, config)
        run = generate_transformers(path, local, loaded, config)
    likelihoods = gold_likelihoods(local.model, local.tokenizer, loaded, run.prompts, config.batch_size)
    del local
    scores, rows = _grade(loaded, run, likelihoods, config)
    result = EvalResult(
        model=str(model) if model is not None else EMBEDDED_ALIASES[0],
        model_path=str(path),
        backend=backend,
        device=run.device,
        tasks=scores,
        average=sum(s.pass_at_1 for s in scores.values()) / len(scores),
        wall_time_s=round(time.perf_counter() - started, 2),
        tokens_generated=sum(s.tokens_generated for s in scores.values()),
        config=generation_settings(config),
        versions=library_versions(*EVAL_LIBRARIES),
        gold_logprob=sum(s.gold_logprob for s in scores.values()) / len(scores),
        gold_logprob_sum=sum(s.gold_logprob_sum for s in scores.values()) / len(scores),
    )
    atomic_write_text(out / SAMPLES, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    atomic_write_json(out / SCORES, _to_json(result))
    return result


def _grade(
    tasks: list[EvalTask], run: BackendRun, likelihoods: list[list[AnswerLikelihood]], config: EvalConfig
) -> tuple[dict[str, TaskScore], list[dict]]:
    scores, rows = {}, []
    for task, prompts, generations, golds in zip(tasks, run.prompts, run.generations, likelihoods):
        correct = truncated = tokens = 0
        for index, (problem, prompt, samples, gold) in enumerate(zip(task.problems, prompts, generations, golds)):
            for sample, generation in enumerate(samples):
                verdict = grade(generation.text, problem.gold, task.grading, problem.n_choices)
                correct += verdict.correct
                truncated += generation.truncated
                tokens += generation.n_tokens
                rows.append({
                    "task": task.name, "problem": index, "sample": sample, "prompt": prompt,
                    "generation": generation.text, "gold": problem.gold, "extracted": verdict.extracted,
                    "correct": verdict.correct, "n_tokens": generation.n_tokens, "truncated": generation.truncated,
                    "gold_logprob_sum": gold.logprob_sum, "gold_tokens": gold.n_tokens,
                })
        n = len(task.problems) * config.samples
        reference = run.reference_scores.get(task.name)
        if reference is not None and abs(reference - correct / n) > 1e-9:
            log.warning("task %s: lighteval's pass@1 %.4f differs from the grader's %.4f", task.name, reference,
                        correct / n)
        scores[task.name] = TaskScore(
            column=task.column,
            pass_at_1=correct / n,
            n_problems=len(task.problems),
            samples=config.samples,
            correct=correct,
            truncated=truncated,
            tokens_generated=tokens,
            source=task.source,
            lighteval_pass_at_1=reference,
            gold_logprob=sum(g.logprob_mean for g in golds) / len(golds),
            gold_logprob_sum=sum(g.logprob_sum for g in golds) / len(golds),
        )
    return scores, rows


def _to_json(result: EvalResult) -> dict:
    data = asdict(result)
    data["tasks"] = {name: {("pass@1" if k == "pass_at_1" else k): v for k, v in score.items()}
                     for name, score in data["tasks"].items()}
    return data


def read_scores(out: str | Path) -> EvalResult:
    """The result an earlier `evaluate` wrote to `out/scores.json`."""
    path = Path(out) / SCORES
    if not path.is_file():
        raise ResaError(f"{str(out)!r} holds no {SCORES}; run resa-interp eval there first")
    data = json.loads(path.read_text())
    data["tasks"] = {name: TaskScore(**{("pass_at_1" if k == "pass@1" else k): v for k, v in score.items()})
                     for name, score in data["tasks"].items()}
    return EvalResult(**data)


def table_columns(result: EvalResult) -> list[str]:
    """Task names in the paper's column order (AIME24, AIME25, AMC23, MATH500, GPQA, Minerva), others after."""
    return [t for t in PAPER_ORDER if t in result.tasks] + [t for t in result.tasks if t not in PAPER_TASKS]


def format_table(result: EvalResult, label: str | None = None) -> str:
    """A Markdown table like the paper's: one row, Pass@1 in percent per task, then `Avg.`."""
    names = table_columns(result)
    header = ["Model", *(result.tasks[n].column for n in names), "Avg."]
    cells = [label or result.model, *(f"{100 * result.tasks[n].pass_at_1:.2f}" for n in names),
             f"{100 * result.average:.2f}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
             "| " + " | ".join(cells) + " |"]
    truncated = sum(s.truncated for s in result.tasks.values())
    generations = sum(s.n_problems * s.samples for s in result.tasks.values())
    if result.gold_logprob is not None:
        lines.append(f"\ngold answer log-probability, teacher-forced: {result.gold_logprob:.4f} nats per token, "
                     f"{result.gold_logprob_sum:.4f} per answer (mean over problems and tasks)")
    lines.append(f"\n{generations} generations, {truncated} truncated at max-new-tokens, "
                 f"{result.tokens_generated} tokens, {result.wall_time_s:.1f} s on {result.device} ({result.backend})")
    return "\n".join(lines)
