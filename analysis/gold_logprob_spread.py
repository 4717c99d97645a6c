"""How far a sweep's continuous score moves per layer, against its spread: per layer the gold answers' mean
log-probability per token (`gold_logprob`) with its standard deviation over problems, the paired difference
from an untuned model's evaluation on the same problems (mean ± standard error over problems), per token and per
answer, and the paired difference per token from the sweep's best layer. Reads `samples.jsonl` (each problem's
`gold_logprob_sum` and `gold_tokens`, first sample).

Usage: python analysis/gold_logprob_spread.py UNTUNED_EVAL_DIR SWEEP_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def per_problem(folder: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """(task, problem) -> (mean log-probability per answer token, log-probability of the answer)."""
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return {(r["task"], r["problem"]): (r["gold_logprob_sum"] / r["gold_tokens"], r["gold_logprob_sum"])
            for r in rows if r["sample"] == 0}


def mean_se(values: list[float]) -> str:
    return f"{statistics.mean(values):+.4f} ± {statistics.stdev(values) / len(values) ** 0.5:.4f}"


def main(untuned: Path, sweep: Path) -> None:
    base = per_problem(untuned)
    folders = sorted(sweep.glob("layer-*/eval"), key=lambda p: int(p.parent.name.split("-")[1]))
    layers = {folder.parent.name: per_problem(folder) for folder in folders}
    best = max(layers, key=lambda name: statistics.mean(v[0] for v in layers[name].values()))
    print(f"| model | gold_logprob (SD over problems) | − untuned, per token | − untuned, per answer | − {best} |")
    print("|---|---|---|---|---|")
    values = [v[0] for v in base.values()]
    print(f"| untuned | {statistics.mean(values):.4f} ({statistics.stdev(values):.3f}) | | | |")
    for name, mine in layers.items():
        values = [mine[p][0] for p in base]
        per_token = [mine[p][0] - base[p][0] for p in base]
        per_answer = [mine[p][1] - base[p][1] for p in base]
        from_best = mean_se([mine[p][0] - layers[best][p][0] for p in base]) if name != best else ""
        print(f"| {name} | {statistics.mean(values):.4f} ({statistics.stdev(values):.3f}) | "
              f"{mean_se(per_token)} | {mean_se(per_answer)} | {from_best} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
