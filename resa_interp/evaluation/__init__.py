"""Evaluation: zero-shot Pass@1 on the paper's benchmarks (lighteval on vLLM, GPU) or locally (transformers,
CPU), graded by one grader; the per-layer sweep (SAE-Tuning then evaluation at every layer); and the transfer
experiment (`transfer`: does SAE-Tuning carry a source's ability into the base, against CoT-free SFT and controls,
with `recovery`'s bootstrap intervals).

Takes an `EvalConfig` (which names the model and the tasks) and an output folder (a `SweepConfig` for the
sweep); gives `scores.json` and `samples.jsonl` (the sweep: `scores.csv`, which select-layers reads) and an
`EvalResult` (`SweepResult`).
"""

from resa_interp.evaluation.config import (
    DEFAULT_TASKS,
    EVAL_PRESETS,
    SWEEP_PRESETS,
    EvalConfig,
    SweepConfig,
    parse_task_list,
    sweep_config,
)
from resa_interp.evaluation.evaluator import EvalResult, evaluate, format_table, read_scores
from resa_interp.evaluation.grading import grade, require_grader
from resa_interp.evaluation.plan import eval_settings, plan_evaluation, plan_sweep, sweep_settings
from resa_interp.evaluation.recovery import BOOTSTRAP, ConditionSummary, recovery, summarize
from resa_interp.evaluation.sweep import GOLD_LOGPROB, SweepResult, sweep
from resa_interp.evaluation.tasks import PAPER_ORDER, EvalTask, load_tasks
from resa_interp.evaluation.transfer import QUICK, TUNED, TransferConfig, run_transfer

__all__ = [
    "BOOTSTRAP",
    "ConditionSummary",
    "DEFAULT_TASKS",
    "EVAL_PRESETS",
    "EvalConfig",
    "EvalResult",
    "EvalTask",
    "GOLD_LOGPROB",
    "PAPER_ORDER",
    "QUICK",
    "SWEEP_PRESETS",
    "SweepConfig",
    "SweepResult",
    "TUNED",
    "TransferConfig",
    "eval_settings",
    "evaluate",
    "format_table",
    "grade",
    "load_tasks",
    "parse_task_list",
    "plan_evaluation",
    "plan_sweep",
    "read_scores",
    "recovery",
    "require_grader",
    "run_transfer",
    "summarize",
    "sweep",
    "sweep_config",
    "sweep_settings",
]
