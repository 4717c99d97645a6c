"""Experiment tracking (`--report-to`, the name HF's `TrainingArguments` uses): a run's per-step scalars, its
resolved config and its final summary, sent to Weights & Biases or TensorBoard beside the JSON the run writes
anyway. A tracker only reads what the run computes; it changes nothing that is trained or written.

`open_tracker(report_to)` validates the name and imports the backend (extra 'track') before any expensive work;
the run then calls `start(config, run_dir, name)`, `log(step, scalars)` per step, `summary(values)` once and
`finish()`. wandb writes under RUN/wandb/ and honours its own variables (`WANDB_MODE=offline` works without a
network, `WANDB_PROJECT`, `WANDB_SILENT`); TensorBoard's event file goes to RUN/tensorboard/. Under a launcher only
the main process opens a real tracker (`main=False` gives the no-op one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from resa_interp.errors import check_choice
from resa_interp.extras import require_extra

REPORT_TO = ("none", "wandb", "tensorboard")
"""The accepted `--report-to` values."""
PROJECT = "resa-interp"
"""The wandb project when `WANDB_PROJECT` is not set."""
TENSORBOARD_DIR = "tensorboard"
"""A run's TensorBoard event files: RUN/tensorboard/<name>/."""


class Tracker(Protocol):
    """Where a run reports: its config at the start, scalars per step, a summary at the end."""

    def start(self, config: dict[str, Any], run_dir: Path, name: str) -> None:
        """Open the run `name` with its resolved `config`, its files under `run_dir`."""

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """The scalars of step `step` (steps increase)."""

    def summary(self, values: dict[str, Any]) -> None:
        """The run's final results (numbers; nested dicts are flattened with '/')."""

    def finish(self) -> None:
        """Close the run (its files are complete afterwards)."""


class NoTracker:
    """`--report-to none`, and every process but the main one: reports nothing."""

    def start(self, config: dict[str, Any], run_dir: Path, name: str) -> None:
        """Nothing to open."""

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Nothing to log."""

    def summary(self, values: dict[str, Any]) -> None:
        """Nothing to record."""

    def finish(self) -> None:
        """Nothing to close."""


class WandbTracker:
    """A Weights & Biases run in RUN/wandb/ (offline with `WANDB_MODE=offline`; the mode, entity and project come
    from wandb's own variables)."""

    def __init__(self, wandb: Any):
        self.wandb = wandb
        self.run: Any = None

    def start(self, config: dict[str, Any], run_dir: Path, name: str) -> None:
        """`wandb.init` with `config`; a new run even when another is open (a sweep's own run and its layers')."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), dir=str(run_dir), name=name,
                                   config=_plain(config), reinit="create_new")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """One history row at `step`."""
        self.run.log(scalars, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        """Into the run's summary, flattened."""
        self.run.summary.update(flatten(values))

    def finish(self) -> None:
        """`run.finish()`: the offline run's .wandb file is complete."""
        self.run.finish()


class TensorBoardTracker:
    """A TensorBoard event file in RUN/tensorboard/<name>/ (torch's `SummaryWriter`): the config as text, the
    scalars per step, the summary's numbers as `summary/<key>` at the last step and all of it as text."""

    def __init__(self, writer_class: Any):
        self.writer_class = writer_class
        self.writer: Any = None
        self.last_step = 0

    def start(self, config: dict[str, Any], run_dir: Path, name: str) -> None:
        """Open the writer and record the config."""
        self.writer = self.writer_class(log_dir=str(run_dir / TENSORBOARD_DIR / name))
        self.writer.add_text("config", _code(config))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """One scalar per key at `step`."""
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = step

    def summary(self, values: dict[str, Any]) -> None:
        """The numbers as scalars `summary/<key>` at the last logged step; everything as the text 'summary'."""
        flat = flatten(values)
        for key, value in flat.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"summary/{key}", value, self.last_step)
        self.writer.add_text("summary", _code(flat))

    def finish(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def check_report_to(value: str) -> None:
    """Refuse a `--report-to` value that is not one of `REPORT_TO`, in one line."""
    check_choice("--report-to", value, REPORT_TO)


def open_tracker(report_to: str, main: bool = True) -> Tracker:
    """The tracker of `report_to` (checked, its backend imported now, so that a missing extra fails before any
    work); the no-op tracker for 'none' and when this is not the `main` process."""
    check_report_to(report_to)
    if report_to == "wandb":
        wandb = require_extra("wandb", "track", "--report-to wandb")
        return WandbTracker(wandb) if main else NoTracker()
    if report_to == "tensorboard":
        require_extra("tensorboard", "track", "--report-to tensorboard")
        writer = require_extra("torch.utils.tensorboard", "track", "--report-to tensorboard").SummaryWriter
        return TensorBoardTracker(writer) if main else NoTracker()
    return NoTracker()


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined with '/' ({'layer-1': {'ev': 0.9}} -> {'layer-1/ev': 0.9})."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """JSON types only (tuples as lists, paths as strings), as the run's manifest records the config."""
    return json.loads(json.dumps(config, default=str))


def _code(values: dict[str, Any]) -> str:
    """Markdown code block of `values` as JSON (TensorBoard renders text as markdown)."""
    return "```\n" + json.dumps(values, indent=2, default=str) + "\n```"
