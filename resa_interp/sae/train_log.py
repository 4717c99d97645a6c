"""Stage I's training curves: RUN/saes/train_log.jsonl (one line per optimizer step and SAE) and the same records
on the run's tracker (`--report-to`), with each step's tokens per second, which the JSON leaves out (timings differ
run to run, the rest is bit-reproducible). Rank 0 alone writes and reports, every rank's SAEs included.

A line: {step, layer, seed, tokens, loss, explained_variance, l0, dead_fraction, lr[, grad_norm]}. `step` counts
the run's optimizer steps: groups of layers train one after another, so a later group's steps follow the earlier
group's; `tokens` are those each SAE of the group has trained on so far. On the tracker a step is one row with
`<hook_name>/<metric>` for each SAE (`seed-<s>/<hook_name>/<metric>` for a further seed), `tokens` and
`tokens_per_s`: the step's batch through every SAE of its group over the wall time their steps took (the slowest
rank's, across ranks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from resa_interp.model import hook_name
from resa_interp.runs import atomic_write_text
from resa_interp.sae.config import SAETrainConfig
from resa_interp.sae.folders import saes_root
from resa_interp.sae.trainer import TrainSteps
from resa_interp.tracking import Tracker

TRAIN_LOG = "train_log.jsonl"
_KEYS = ("step", "layer", "seed", "tokens")
"""What a line says about where it is; the rest are its metrics."""


class StageOneLog:
    """The training curves of one Stage I run, as rank 0 writes and reports them."""

    def __init__(self, cfg: SAETrainConfig, run: Path, tracker: Tracker):
        self.cfg, self.tracker = cfg, tracker
        self.path = saes_root(run) / TRAIN_LOG
        self.offset = 0
        """Steps of the groups finished before the current one."""
        self.handle: IO[str] | None = None
        self.state: dict | None = None
        """The checkpoint the run resumes from (None: a fresh log)."""

    def open(self, state: dict | None) -> None:
        """Start the log at the first step that reaches it (so that a run refused before its first step leaves no
        saes/ folder): empty, or (resuming from checkpoint `state`) the lines up to the checkpoint, which go to the
        tracker again so that its curves are whole."""
        self.state = state

    def _start(self) -> None:
        state = self.state
        kept: list[dict] = []
        if state is not None and self.path.exists():
            done = {tuple(key) for key in state["done"]}
            through = state["tokens_done"] if state.get("group") is not None else 0
            lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if (line["layer"], line["seed"]) in done or line["tokens"] <= through]
            self.offset = max((line["step"] for line in kept if (line["layer"], line["seed"]) in done), default=0)
        atomic_write_text(self.path, "".join(json.dumps(line) + "\n" for line in kept))
        for step, lines in _by_step(kept).items():
            self.tracker.log(step, self._scalars(lines))
        self.handle = self.path.open("a")

    def add(self, steps: TrainSteps) -> None:
        """One flush's steps (every rank's records, every rank's rates): to the log and the tracker."""
        if self.handle is None:
            self._start()
        records = [{**record, "step": record["step"] + self.offset} for record in steps.records]
        self.handle.write("".join(json.dumps(record) + "\n" for record in records))
        self.handle.flush()
        for step, lines in _by_step(records).items():
            rate = steps.tokens_per_s.get(step - self.offset)
            self.tracker.log(step, {**self._scalars(lines), **({"tokens_per_s": rate} if rate else {})})

    def end_group(self, steps: int) -> None:
        """The current group finished after `steps` optimizer steps: the next one's steps follow."""
        self.offset += steps

    def close(self) -> None:
        """Close the log file."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _scalars(self, lines: list[dict]) -> dict[str, float]:
        scalars: dict[str, float] = {"tokens": lines[0]["tokens"]}
        for line in lines:
            name = hook_name(self.cfg.hook, line["layer"])
            if line["seed"] != self.cfg.seed:
                name = f"seed-{line['seed']}/{name}"
            scalars.update({f"{name}/{key}": value for key, value in line.items() if key not in _KEYS})
        return scalars


def merge_steps(parts: list[TrainSteps]) -> TrainSteps:
    """Every rank's steps of one flush as one: the records in (step, layer, seed) order, each step's rate the
    slowest rank's (ranks without SAEs in the group have no rates)."""
    records = sorted((r for part in parts for r in part.records), key=lambda r: (r["step"], r["layer"], r["seed"]))
    rates: dict[int, float] = {}
    for part in parts:
        for step, rate in part.tokens_per_s.items():
            rates[step] = min(rate, rates.get(step, rate))
    return TrainSteps(records, rates)


def summary(cfg: SAETrainConfig, metrics: dict[int, list[dict]], extra: dict[str, Any]) -> dict[str, Any]:
    """The tracker's summary of a run: each SAE's held-out metrics (numbers only) under its name, then `extra`."""
    out: dict[str, Any] = {}
    for seed, rows in metrics.items():
        for row in rows:
            name = hook_name(cfg.hook, row["layer"])
            if seed != cfg.seed:
                name = f"seed-{seed}/{name}"
            out[name] = {key: value for key, value in row.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "layer"}
    return {**out, **extra}


def _by_step(records: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = {}
    for record in records:
        grouped.setdefault(record["step"], []).append(record)
    return grouped
