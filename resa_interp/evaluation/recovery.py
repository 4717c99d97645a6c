"""How much of a source model's ability a tuned condition recovers: accuracy with a 95% bootstrap interval over
problems and tuning seeds, and recovery = (condition - base) / (source - base) with its interval.

Every condition is a 0/1 matrix [seeds, problems] over the same held-out problems (base and source: one row,
greedy decoding is deterministic). One bootstrap replicate draws the problems once, with replacement, for every
condition (the comparison is paired: a hard problem is hard for all of them), and each condition's seeds
independently; accuracy is the mean of the drawn cells, recovery that of the drawn conditions. The interval is
the 2.5th and 97.5th percentiles of the replicates (percentile bootstrap).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from resa_interp.errors import ResaError

BOOTSTRAP = 2000
"""Bootstrap replicates of every interval."""


@dataclass(frozen=True)
class ConditionSummary:
    """One condition's accuracy and recovery, as `figures/transfer.json` has them."""

    accuracy: float
    ci: tuple[float, float]
    n: int
    """Held-out problems."""
    seeds: int
    """Tuning seeds (rows)."""
    recovery: float | None
    """(accuracy - base) / (source - base); None for base and source themselves, and where the source is no
    better than the base (then there is nothing to recover)."""
    recovery_ci: tuple[float, float] | None

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)


def recovery(condition: float, base: float, source: float) -> float:
    """(condition - base) / (source - base): 0 at the base's accuracy, 1 at the source's."""
    if source == base:
        raise ResaError(f"recovery is undefined: the source's accuracy equals the base's ({base:g})")
    return (condition - base) / (source - base)


def _matrix(name: str, correct: np.ndarray | list, n: int | None) -> np.ndarray:
    matrix = np.atleast_2d(np.asarray(correct, dtype=float))
    if matrix.ndim != 2 or matrix.size == 0:
        raise ResaError(f"condition {name!r}: give a [seeds, problems] 0/1 matrix, got shape {matrix.shape}")
    if n is not None and matrix.shape[1] != n:
        raise ResaError(f"condition {name!r} has {matrix.shape[1]} problems, the others {n}; all conditions must "
                        "be graded on the same held-out problems")
    return matrix


def summarize(
    conditions: dict[str, np.ndarray | list],
    base: str = "base",
    source: str = "source",
    n_boot: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, ConditionSummary]:
    """Per condition (0/1 matrices [seeds, problems] on the same problems): accuracy, its 95% interval and, but for
    `base` and `source`, recovery and its interval (paired bootstrap over problems, see the module docstring)."""
    if base not in conditions or source not in conditions:
        raise ResaError(f"recovery needs the conditions {base!r} and {source!r}; given {', '.join(conditions)}")
    matrices: dict[str, np.ndarray] = {}
    for name, correct in conditions.items():
        n = next(iter(matrices.values())).shape[1] if matrices else None
        matrices[name] = _matrix(name, correct, n)
    n = matrices[base].shape[1]
    rng = np.random.default_rng(seed)
    problems = rng.integers(0, n, size=(n_boot, n))
    replicates: dict[str, np.ndarray] = {}
    for name, m in matrices.items():  # the seeds drawn per condition, after the shared problem draw
        rows = rng.integers(0, m.shape[0], size=(n_boot, m.shape[0]))
        replicates[name] = np.array([m[rows[b]][:, problems[b]].mean() for b in range(n_boot)])
    gap = replicates[source] - replicates[base]
    base_acc, source_acc = float(matrices[base].mean()), float(matrices[source].mean())
    out = {}
    for name, m in matrices.items():
        acc = float(m.mean())
        ci = _interval(replicates[name])
        rec = rec_ci = None
        if name not in (base, source) and source_acc > base_acc:
            rec = recovery(acc, base_acc, source_acc)
            with np.errstate(divide="ignore", invalid="ignore"):
                draws = (replicates[name] - replicates[base]) / gap
            rec_ci = _interval(draws[np.isfinite(draws)])
        out[name] = ConditionSummary(acc, ci, n, m.shape[0], rec, rec_ci)
    return out


def _interval(draws: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)
