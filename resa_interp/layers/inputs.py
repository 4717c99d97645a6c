"""Reading select-layers' inputs: per-layer feature counts (counts.csv or features.json, one column per SAE seed
on a multi-seed run) and per-layer scores (a CSV with a `layer` column), checked, sorted by layer, and scores
turned into non-negative weights."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resa_interp.errors import ResaError
from resa_interp.layers.config import check_transform
from resa_interp.runs import SEED_COLUMN


@dataclass(frozen=True)
class LayerData:
    """One non-negative mass per layer, and how it was read."""

    kind: str
    """'counts' or 'scores'."""
    layers: np.ndarray
    """Layer indices, ascending."""
    values: np.ndarray
    """As read: feature counts, or scores."""
    weights: np.ndarray
    """Mass per layer that the mixture is fitted to (counts as they are; scores transformed)."""
    sample_size: float
    """n for BIC and the bootstrap unit count: features for counts, layers for scores."""
    source: str
    """File (and column) the values came from."""
    seed_values: np.ndarray | None = None
    """Counts of a multi-seed run: [seeds, layers], one row per SAE seed, the first the seed `values` come from;
    None: one seed."""

    @property
    def support(self) -> int:
        """Layers with positive mass."""
        return int((self.weights > 0).sum())


def read_counts(path: str | Path) -> LayerData:
    """Per-layer reasoning-feature counts from `counts.csv` (`layer,count`) or `features.json` (`layers` list)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        rows = _json_layer_rows(path)
    else:
        rows = _csv_rows(path, required=("layer", "count"))
    seed_columns = [c for c in rows[0] if c.startswith(SEED_COLUMN)]
    counts, per_seed = {}, {}
    for row in rows:
        layer = _layer(row["layer"], path)
        if layer in counts:
            raise ResaError(f"{path}: layer {layer} appears twice; give one count per layer")
        counts[layer] = _count(row["count"], layer, path)
        per_seed[layer] = [_count(row.get(c), layer, path) for c in seed_columns]
    layers = np.array(sorted(counts), dtype=int)
    values = np.array([counts[layer] for layer in layers], dtype=float)
    if values.sum() == 0:
        raise ResaError(f"{path}: every count is 0, so there is no distribution over layers to fit")
    seeds = np.array([per_seed[layer] for layer in layers], dtype=float).T if len(seed_columns) > 1 else None
    if seeds is not None and not np.array_equal(seeds[0], values):
        raise ResaError(f"{path}: column count differs from {seed_columns[0]}; count is the first seed's count")
    return LayerData("counts", layers, values, values, float(values.sum()), str(path), seeds)


def read_scores(
    path: str | Path, column: str | None = None, transform: str = "shift-min", temperature: float = 1.0
) -> LayerData:
    """Per-layer scores from a CSV with a `layer` column: `column`, else `avg`, else the only other column."""
    path = Path(path)
    rows = _csv_rows(path, required=("layer",))
    others = [c for c in rows[0] if c != "layer"]
    if column is None:
        if "avg" in others:
            column = "avg"
        elif len(others) == 1:
            column = others[0]
        else:
            raise ResaError(
                f"{path}: several score columns ({', '.join(others) or 'none'}) and no 'avg'; "
                "pick one with --score-column"
            )
    if column not in others:
        raise ResaError(f"{path}: no column {column!r} (columns: {', '.join(rows[0])}); pick one with --score-column")
    scores = {}
    for row in rows:
        layer = _layer(row["layer"], path)
        if layer in scores:
            raise ResaError(f"{path}: layer {layer} appears twice; give one score per layer")
        scores[layer] = _score(row[column], layer, column, path)
    layers = np.array(sorted(scores), dtype=int)
    values = np.array([scores[layer] for layer in layers])
    if len(values) > 1 and np.ptp(values) == 0:
        raise ResaError(f"{path}: every layer's {column} is {values[0]:g}, so it cannot tell layers apart"
                        f"{_varying_columns(rows, column)}")
    weights = transform_scores(values, transform, temperature)
    return LayerData("scores", layers, values, weights, float(len(layers)), f"{path} [{column}]")


def _varying_columns(rows: list[dict[str, str]], column: str) -> str:
    """The refusal's pointer to the file's columns that do differ between layers (a sweep's gold_logprob, the
    continuous score, where every Pass@1 is 0)."""
    varying = [c for c in rows[0] if c not in ("layer", column) and len({row[c] for row in rows}) > 1]
    if not varying:
        return "; no other column varies either"
    return f"; pick one that varies with --score-column: {', '.join(varying)} (e.g. --score-column {varying[0]})"


def transform_scores(scores: np.ndarray, transform: str, temperature: float = 1.0) -> np.ndarray:
    """Scores -> non-negative per-layer weights (see SCORE_TRANSFORMS)."""
    check_transform(transform)
    scores = np.asarray(scores, dtype=float)
    if transform == "shift-min":
        weights = scores - scores.min()
    elif transform == "softmax":
        if not temperature > 0:
            raise ResaError(f"--temperature {temperature} must be > 0 (it is in the scores' units)")
        weights = np.exp((scores - scores.max()) / temperature)
    else:  # raw
        if (scores < 0).any():
            raise ResaError("--score-transform raw needs non-negative scores; use shift-min or softmax")
        weights = scores.copy()
    if not weights.sum() > 0:
        raise ResaError(f"every layer gets weight 0 under --score-transform {transform} (are all scores equal?)")
    return weights


def _csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV with a header; lines starting with '#' and blank lines are skipped."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:
        raise ResaError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not lines:
        raise ResaError(f"{path}: empty; expected a CSV with header {','.join(required)}")
    reader = csv.DictReader(lines)
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
        raise ResaError(f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise ResaError(f"{path}: a header but no rows")
    return rows


def _json_layer_rows(path: Path) -> list[dict[str, Any]]:
    """The `layers` list of a features.json: objects with at least `layer` and `count`."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ResaError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ResaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    rows = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ResaError(f"{path}: expected a non-empty 'layers' list of {{'layer': int, 'count': int}} objects")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "layer" not in row or "count" not in row:
            raise ResaError(f"{path}: layers[{i}] is missing 'layer' or 'count'")
    seeds = data.get("seeds")
    if isinstance(seeds, dict) and isinstance(seeds.get("layers"), list):  # a multi-seed run's per-seed counts
        per_layer = {row.get("layer"): row.get("counts", {}) for row in seeds["layers"] if isinstance(row, dict)}
        rows = [{**row, **{f"{SEED_COLUMN}{s}": c for s, c in per_layer.get(row["layer"], {}).items()}}
                for row in rows]
    return rows


def _number(text: Any) -> float:
    if isinstance(text, bool):
        return math.nan
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _layer(text: Any, path: Path) -> int:
    value = _number(text)
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise ResaError(f"{path}: layer {text!r} is not a non-negative integer")
    return int(value)


def _count(text: Any, layer: int, path: Path) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value == int(value)):
        raise ResaError(f"{path}: count {text!r} at layer {layer} is not an integer; counts are numbers of features")
    if value < 0:
        raise ResaError(f"{path}: count {text!r} at layer {layer} is negative; counts are numbers of features")
    return value


def _score(text: str, layer: int, column: str, path: Path) -> float:
    value = _number(text)
    if not math.isfinite(value):
        raise ResaError(
            f"{path}: {column} at layer {layer} is {text!r}, not a finite number (NaN/empty scores are refused)"
        )
    return value


# ---------------------------------------------------------------- analysis
