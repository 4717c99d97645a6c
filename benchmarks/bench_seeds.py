"""Stage I cost of several SAE seeds per layer vs one: the same run (embedded model, a few layers) trained with
one seed and with N seeds from one forward pass; the ratio of training time and of wall time (goal: 3 seeds in
at most 2x one seed's wall time). The two runs alternate `--rounds` times so load on the machine hits both alike.

    python benchmarks/bench_seeds.py [--layers 3,12,24] [--tokens 16384] [--n-seeds 3] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from resa_interp.model import load_subject
from resa_interp.sae import SAETrainConfig, train_saes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="3,12,24")
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--n-seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    subject = load_subject()
    times: dict[int, list[tuple[float, float]]] = {1: [], args.n_seeds: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in times:
                cfg = SAETrainConfig(layers=args.layers, tokens=args.tokens, heldout=4, checkpoint_every=0,
                                     seeds=tuple(range(1, n)))
                result = train_saes(cfg, Path(tmp) / f"seeds{n}-{r}", subject=subject)
                times[n].append((result.train_seconds, result.wall_seconds))
    one, many = (tuple(statistics.median(t[i] for t in times[n]) for i in (0, 1)) for n in times)
    print(f"layers {args.layers}, {args.tokens:,} tokens per SAE, median of {args.rounds} round(s)")
    print(f"{'seeds':>5}  {'train s':>8}  {'wall s':>7}")
    print(f"{1:>5}  {one[0]:>8.1f}  {one[1]:>7.1f}")
    print(f"{args.n_seeds:>5}  {many[0]:>8.1f}  {many[1]:>7.1f}")
    print(f"ratio {args.n_seeds} seeds / 1 seed: training {many[0] / one[0]:.2f}x, wall {many[1] / one[1]:.2f}x "
          "(goal for 3 seeds: wall <= 2x)")


if __name__ == "__main__":
    main()
