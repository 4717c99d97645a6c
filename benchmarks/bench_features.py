"""Reasoning-feature extraction at every layer vs one plain forward pass of the same prompt (model load excluded).

Needs trained SAEs: run the README's main command first (it writes runs/default), or pass --run.

    python benchmarks/bench_features.py [--run runs/default] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from resa_interp.data import R1_SYSTEM_PROMPT
from resa_interp.features import FeatureConfig, extract_features
from resa_interp.model import load_subject
from resa_interp.sae import load_sae, run_sae_dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/default")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    subject = load_subject()
    saes = {layer: load_sae(path) for layer, path in run_sae_dirs(args.run).items()}
    if not saes:
        raise SystemExit(f"{args.run} has no SAEs: run `resa-interp features --out {args.run}` first")
    ids = torch.tensor([subject.tokenizer(R1_SYSTEM_PROMPT)["input_ids"]])

    def forward():
        with torch.inference_mode():
            subject.hf(input_ids=ids, use_cache=False)

    def extract():
        extract_features(subject, saes, "resid_post", [R1_SYSTEM_PROMPT], FeatureConfig())

    runs = {"forward": forward, "extract": extract}
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["forward"])
    print(f"R1 system prompt ({ids.shape[1]} tokens), SAEs at {len(saes)} layers, {args.rounds} rounds, medians")
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"  {name:<8} {med * 1000:8.1f} ms   {med / base:5.2f}x one forward pass")


if __name__ == "__main__":
    main()
