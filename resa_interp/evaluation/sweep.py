"""The per-layer sweep that closes the loop of the paper's Table 6 (section 5): SAE-Tuning at every layer with
that layer's Stage I SAE, every tuned model evaluated, and one row of scores per layer in `OUT/scores.csv`
(`layer`, one column per task with Pass@1 in percent, `avg`, then the continuous score `gold_logprob` and
`gold_logprob_sum`, the gold answers' teacher-forced log-probability in nats per token and per answer, averaged
over the tasks): the file `select-layers --scores` reads.

`OUT/layer-{l}/` is layer l's tuning output (adapter/, merged/, train_log.jsonl, checkpoints/, manifest.json)
and `OUT/layer-{l}/eval/` its evaluation (scores.json, samples.jsonl). A sweep resumes what an earlier run of it
left: a layer whose tuning finished is not tuned again (its settings must be the same), an interrupted tuning
continues from its last checkpoint (tuning's own resume), and an evaluation that finished with the same tasks
and settings is not run again.

A sweep can be split over processes by layer (`resa_interp.shards`): shard i of n sweeps `layers[i::n]`, the
ranks of torchrun/accelerate or `--shard i/n` for job arrays. Each writes its own `layer-{l}/` folders; after each
of its layers, every process rewrites scores.csv from all layer folders on disk whose tuning and evaluation
finished with this sweep's settings (under a file lock, atomically), so the last shard to finish leaves the
whole table, and a rerun without shards completes what is missing. The manifest's 'sweep' record is written
the same way, by every `--shard` process and, under a launcher, by rank 0 alone (last, after all ranks finished).
"""

from __future__ import annotations

import csv
import gc
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from resa_interp.errors import ResaError
from resa_interp.evaluation.config import EvalConfig, SweepConfig, generation_settings
from resa_interp.evaluation.evaluator import SCORES, EvalResult, evaluate, read_scores, table_columns
from resa_interp.evaluation.tasks import load_tasks
from resa_interp.features import missing_saes, train_first
from resa_interp.model import check_splice_hook, model_shape
from resa_interp.numbering import default_layers, layer_ranges, parse_layers
from resa_interp.runs import atomic_write_text, read_manifest, record_stage, run_relative
from resa_interp.sae import require_sae_dirs
from resa_interp.shards import ONLY, Shard, on_its_own, wait_for_all_ranks
from resa_interp.tracking import open_tracker
from resa_interp.tuning import STAGE as TUNE_STAGE
from resa_interp.tuning import TuneConfig, changed_settings, tune

STAGE = "sweep"
SCORES_CSV = "scores.csv"
EVAL_DIR = "eval"
LOCK = ".sweep.lock"
"""The file lock that shards take to rewrite scores.csv and the manifest's 'sweep' record."""
GOLD_LOGPROB, GOLD_LOGPROB_SUM = "gold_logprob", "gold_logprob_sum"
"""scores.csv's continuous columns (see `resa_interp.evaluation.likelihood`); select-layers reads them with
--score-column where every layer's Pass@1 is 0."""
_RESERVED_COLUMNS = ("layer", "avg", GOLD_LOGPROB, GOLD_LOGPROB_SUM)


@dataclass(frozen=True)
class LayerResult:
    """One layer of a sweep: its tuning and its scores."""

    layer: int
    out: Path
    """The layer's tuning output; its evaluation is in `out/eval`."""
    steps: int
    kl_first: float
    """Per-token KL(teacher || student) at the first tuning step."""
    kl_last: float
    """Per-token KL at the last tuning step."""
    tune_wall_s: float
    scores: dict[str, float]
    """scores.csv column -> Pass@1 in percent, in the paper's column order (local tasks after)."""
    average: float
    """Mean Pass@1 over the tasks, in percent."""
    gold_logprob: float
    """The gold answers' mean log-probability per token, averaged over problems and tasks (nats)."""
    gold_logprob_sum: float
    """The gold answers' total log-probability, averaged over problems and tasks (nats)."""
    eval_wall_s: float
    tuned_now: bool
    """False when an earlier run of the sweep, or another shard, had tuned this layer."""
    evaluated_now: bool
    """False when an earlier run (or another shard) had evaluated it with the same tasks and settings."""


@dataclass(frozen=True)
class SweepResult:
    """What `sweep` produced."""

    out: Path
    layers: list[LayerResult]
    """The layers this process swept (its shard's)."""
    merged: list[LayerResult]
    """Every layer of the sweep in scores.csv: finished on disk by this process or any other."""
    scores_csv: Path
    wall_s: float
    """Wall time of this call (layers finished earlier cost nothing)."""
    planned: list[int] = field(default_factory=list)
    """Every layer of the sweep (all shards')."""

    @property
    def complete(self) -> bool:
        """Whether scores.csv has a row for every layer of the sweep."""
        return [row.layer for row in self.merged] == self.planned


def sweep(
    config: SweepConfig, out: str | Path, echo: Callable[[str], None] = print, shard: Shard = ONLY
) -> SweepResult:
    """Tune and evaluate at every layer of `config.layers` (of `shard`'s share, `layers[i::n]`) into `out`, resuming
    what an earlier run of the same sweep finished; rewrite `out`/scores.csv from every finished layer on disk and
    the 'sweep' record of `out`/manifest.json. `echo` gets one line per layer (prefixed with the shard when there
    are several) and a note when Stage I runs first. With `config.report_to` the sweep reports each of its layers'
    results (the layer as the step) and, at the end, every finished layer's, from one process (a launcher's rank 0,
    or each `--shard` process); the runs it starts report too."""
    started = time.perf_counter()
    out = Path(out)
    config.evaluation.check()
    check_splice_hook(config.tune.hook)
    tracker = open_tracker(config.report_to, main=not (shard.launched and shard.index > 0))
    n_layers = model_shape(config.tune.model).n_layers
    layers = parse_layers(config.layers or default_layers(n_layers), n_layers)
    if not config.tasks:
        raise ResaError("no tasks to evaluate; give one or more task names or .jsonl files with --tasks")
    # every task is loaded once before any work, so that a wrong name or an unreachable dataset fails now
    task_names = [t.name for t in load_tasks(list(config.tasks), config.evaluation.limit, config.evaluation.seed)]
    reserved = [name for name in task_names if score_column(name) in _RESERVED_COLUMNS]
    if reserved:
        raise ResaError(f"--tasks: a task named {reserved[0]!r} would clash with scores.csv's own column; rename it")
    counted = read_manifest(out)["stages"].get("features", {}).get("layers")
    if counted and counted != layers:
        echo(f"note: the features in {out} count layers {layer_ranges(counted)}, this sweep tunes "
             f"{layer_ranges(layers)}; select-layers needs the same layers in both")
    run = _sae_run(config, out, layers, echo, shard)
    mine = shard.take(layers)
    prefix = f"{shard.label}: " if shard.sharded else ""
    rows: list[LayerResult] = []
    tracker.start(_recorded_config(config), out,
                  f"{out.name}-sweep" + (f"-{shard.index}of{shard.count}" if shard.sharded else ""))
    try:
        with on_its_own():  # one rank's tuning and evaluation are one process's, not a share of the launcher's job
            for i, layer in enumerate(mine):
                rows.append(_sweep_layer(config, run, layer, out, task_names))
                echo(f"{prefix}[{i + 1}/{len(mine)}] {format_layer(rows[-1])}")
                tracker.log(layer, layer_scalars(rows[-1]))
                _merge(config, run, out, layers, task_names, rows, shard, time.perf_counter() - started)
        if shard.launched and shard.sharded:
            wait_for_all_ranks(shard)
        merged = _merge(config, run, out, layers, task_names, rows, shard, time.perf_counter() - started)
        tracker.summary({**{f"layer-{row.layer}": layer_scalars(row) for row in merged},
                         "layers_finished": len(merged), "layers_planned": len(layers)})
    finally:
        tracker.finish()
    return SweepResult(out, rows, merged, out / SCORES_CSV, time.perf_counter() - started, layers)


def _sae_run(config: SweepConfig, out: Path, layers: list[int], echo: Callable[[str], None], shard: Shard) -> Path:
    """The Stage I run to take SAEs from, with one for every layer (trained first in `out` when it holds none,
    unless the sweep is sharded: shards would all train them into the same folder at once)."""
    hook = config.tune.hook
    if missing_saes(out, hook, config.saes_run):
        if shard.sharded:
            raise ResaError(
                f"{str(out)!r} has no {hook} SAEs and a sharded sweep ({shard.label}) does not train them: run "
                f"train-saes --out {out} first (torchrun spreads it over GPUs), or give --saes RUN"
            )
        stage1 = replace(config.saes, model=config.tune.model, hook=hook, layers=",".join(map(str, layers)),
                         report_to=config.report_to)
        train_first(stage1, out, echo, f"Stage I, layers {layer_ranges(layers)}")
        _release_memory()
    run = Path(config.saes_run) if config.saes_run is not None else out
    require_sae_dirs(run, hook, layers)
    return run.resolve()


def _merge(
    config: SweepConfig, run: Path, out: Path, layers: list[int], task_names: list[str], rows: list[LayerResult],
    shard: Shard, wall: float,
) -> list[LayerResult]:
    """Under the sweep's file lock: every layer finished on disk (this process's `rows` as they are, the others
    read back), written to scores.csv and to the manifest's 'sweep' record (under a launcher by rank 0 only;
    `--shard` processes may run at any time, so each one does)."""
    with FileLock(out / LOCK):
        own = {row.layer: row for row in rows}
        merged = [own.get(layer) or _finished_layer(config, run, out, layer, task_names) for layer in layers]
        merged = [row for row in merged if row is not None]
        if merged:
            write_scores_csv(out / SCORES_CSV, merged)
        if not (shard.launched and shard.index > 0):
            _record(out, config, run, layers, merged, out / SCORES_CSV, wall, shard)
    return merged


def _sweep_layer(config: SweepConfig, run: Path, layer: int, out: Path, task_names: list[str]) -> LayerResult:
    """Tune (or resume, or keep) and evaluate (or keep) one layer."""
    folder = out / f"layer-{layer}"
    tune_config = _layer_tune_config(config, run, layer)
    tuned_before = TUNE_STAGE in read_manifest(folder)["stages"]
    if tuned_before:
        changed = changed_settings(tune_config, folder)
        if changed:
            raise ResaError(
                f"layer {layer} in {str(out)!r} was tuned with other settings ({', '.join(changed)}); rerun with "
                "the same options, or use another --out"
            )
    else:
        tune(tune_config, folder)
        _release_memory()
    tuned = read_manifest(folder)["stages"][TUNE_STAGE]
    result = _finished_evaluation(folder / EVAL_DIR, config.evaluation, task_names) if tuned_before else None
    evaluated_now = result is None
    if result is None:
        result = evaluate(replace(config.evaluation, model=str(folder), tasks=tuple(config.tasks)), folder / EVAL_DIR)
        _release_memory()
        _record_evaluation(folder, result)
    return _layer_result(layer, folder, tuned, result, tuned_now=not tuned_before, evaluated_now=evaluated_now)


def _layer_tune_config(config: SweepConfig, run: Path, layer: int) -> TuneConfig:
    return replace(config.tune, sae=None, saes_run=str(run), layer=layer, resume=True, report_to=config.report_to)


def _finished_layer(
    config: SweepConfig, run: Path, out: Path, layer: int, task_names: list[str]
) -> LayerResult | None:
    """Layer `layer` as another process (or an earlier run) left it in `out`, if its tuning finished with this
    sweep's settings and its evaluation with its tasks and settings; else None."""
    folder = out / f"layer-{layer}"
    tuned = read_manifest(folder)["stages"].get(TUNE_STAGE)
    if tuned is None or changed_settings(_layer_tune_config(config, run, layer), folder):
        return None
    result = _finished_evaluation(folder / EVAL_DIR, config.evaluation, task_names)
    if result is None:
        return None
    return _layer_result(layer, folder, tuned, result, tuned_now=False, evaluated_now=False)


def _layer_result(
    layer: int, folder: Path, tuned: dict[str, Any], result: EvalResult, *, tuned_now: bool, evaluated_now: bool
) -> LayerResult:
    """A layer's row from its tuning record (the `tune` stage of its manifest) and its evaluation."""
    return LayerResult(
        layer=layer,
        out=folder,
        steps=tuned["steps"],
        kl_first=tuned["first"],
        kl_last=tuned["last"],
        tune_wall_s=tuned["wall_s"],
        scores=layer_scores(result),
        average=100 * result.average,
        gold_logprob=result.gold_logprob,
        gold_logprob_sum=result.gold_logprob_sum,
        eval_wall_s=result.wall_time_s,
        tuned_now=tuned_now,
        evaluated_now=evaluated_now,
    )


def _finished_evaluation(folder: Path, config: EvalConfig, task_names: list[str]) -> EvalResult | None:
    """The evaluation in `folder` if it finished with these tasks and settings and has the continuous score
    (evaluations from before it existed are run again), else None."""
    if not (folder / SCORES).is_file():
        return None
    result = read_scores(folder)
    same = list(result.tasks) == task_names and result.config == generation_settings(config)
    return result if same and result.gold_logprob is not None else None


def _record_evaluation(folder: Path, result: EvalResult) -> None:
    record_stage(folder, "eval", {
        "out": str(folder / EVAL_DIR),
        "backend": result.backend,
        "device": result.device,
        "pass@1": {name: score.pass_at_1 for name, score in result.tasks.items()},
        "average": result.average,
        GOLD_LOGPROB: result.gold_logprob,
        GOLD_LOGPROB_SUM: result.gold_logprob_sum,
        "wall_s": result.wall_time_s,
        "config": result.config,
    })


def _release_memory() -> None:
    """Give cached GPU memory back between stages (vLLM claims a share of what is free when it starts)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def layer_scalars(row: LayerResult) -> dict[str, float]:
    """A layer's results as a tracker's numbers: its scores.csv columns, then its tuning's KL, steps and times."""
    return {**row.scores, "avg": row.average, GOLD_LOGPROB: row.gold_logprob, GOLD_LOGPROB_SUM: row.gold_logprob_sum,
            "kl_first": row.kl_first, "kl_last": row.kl_last, "steps": row.steps, "tune_wall_s": row.tune_wall_s,
            "eval_wall_s": row.eval_wall_s}


def score_column(task: str) -> str:
    """A task's scores.csv column: its name with ':' as '_' (gpqa:diamond -> gpqa_diamond, as in Table 6's file)."""
    return task.replace(":", "_")


def layer_scores(result: EvalResult) -> dict[str, float]:
    """scores.csv column -> Pass@1 in percent, in the paper's column order."""
    return {score_column(name): 100 * result.tasks[name].pass_at_1 for name in table_columns(result)}


def write_scores_csv(path: Path, rows: list[LayerResult]) -> Path:
    """`layer`, one column per task, `avg` (Pass@1 in percent), `gold_logprob`, `gold_logprob_sum` (nats), one row
    per layer in layer order; atomic."""
    columns = list(rows[0].scores)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", *columns, "avg", GOLD_LOGPROB, GOLD_LOGPROB_SUM])
    for row in sorted(rows, key=lambda r: r.layer):
        values = [*(row.scores[c] for c in columns), row.average, row.gold_logprob, row.gold_logprob_sum]
        writer.writerow([row.layer, *map(_number, values)])
    return atomic_write_text(path, buffer.getvalue())


def _number(value: float) -> str:
    return f"{value:.6g}"


def format_layer(row: LayerResult) -> str:
    """The progress line of one finished layer."""
    tuned = "tuned" if row.tuned_now else "tuned earlier"
    evaluated = "evaluated" if row.evaluated_now else "evaluated earlier"
    scores = "  ".join(f"{name} {value:.2f}" for name, value in row.scores.items())
    return (
        f"layer {row.layer}: {tuned} ({row.steps} steps, {row.tune_wall_s:.0f} s), kl {row.kl_first:.4g} -> "
        f"{row.kl_last:.4g}; {evaluated} ({row.eval_wall_s:.0f} s): {scores}  avg {row.average:.2f}  "
        f"gold log-prob {row.gold_logprob:.4f}/token"
    )


def _recorded_config(config: SweepConfig) -> dict[str, Any]:
    """The config as the manifest (and the tracker) records it."""
    # evaluation's model and tasks are set per layer (recorded below and per layer), not the config's defaults
    return {**asdict(config), "evaluation": generation_settings(config.evaluation)}


def _record(
    out: Path, config: SweepConfig, run: Path, layers: list[int], rows: list[LayerResult], path: Path, wall: float,
    shard: Shard,
) -> None:
    record_stage(out, STAGE, {
        "config": _recorded_config(config),
        "model": config.tune.model,
        "hook": config.tune.hook,
        "saes_run": run_relative(run, out),
        "layers": layers,
        "tasks": list(config.tasks),
        "complete": len(rows) == len(layers),
        "scores_csv": run_relative(path, out),
        "wall_s_this_run": round(wall, 2),
        # the writer's share: shard i of n swept layers[i::n] (a launcher's ranks or --shard processes)
        "shard": {"index": shard.index, "count": shard.count, "launched": shard.launched},
        "per_layer": [{**asdict(row), "out": run_relative(row.out, out)} for row in rows],
    })
