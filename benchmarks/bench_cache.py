"""Stage I training throughput from an activation cache vs from forward passes of the model, same config, same run.

Three timings: `cache_activations` whole, and the training part of two `train_saes` runs (`train_seconds`: the
activations in and the SAE steps; model loading, export and held-out metrics are the same in both and left out):
  harvest   cache-activations: the forward passes, written to disk (paid once per cache; it also warms up)
  forward   train-saes as usual: one forward pass per batch feeds every layer's SAE
  cache     train-saes --activations: the same SAEs trained from the memory-mapped cache, no forward pass
and the number of SAE configs after which harvesting once beats the forward pass every time.

    python benchmarks/bench_cache.py [--model smollm2-135m] [--layers 6,12,18] [--tokens 4096] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from pathlib import Path

from resa_interp.model import load_subject
from resa_interp.sae import ActivationCache, SAETrainConfig, cache_activations, train_saes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec [default: the embedded SmolLM2-135M]")
    parser.add_argument("--layers", default="6,12,18")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dtype", default="bfloat16", help="cache dtype: bfloat16, float16 or float32")
    args = parser.parse_args()
    subject = load_subject(args.model)
    cfg = SAETrainConfig(model=args.model, layers=args.layers, tokens=args.tokens, batch_tokens=1024,
                         buffer_tokens=4096, heldout=2, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        harvest = cache_activations(cfg, root / "cache", args.dtype, subject=subject)
        forward = train_saes(cfg, root / "forward", subject=subject)
        from_cache = dataclasses.replace(cfg, **ActivationCache(harvest.path).defaults(), activations=str(harvest.path))
        cached = train_saes(from_cache, root / "cached", subject=subject)
    layers = len(harvest.layers)
    tokens = forward.tokens_per_layer
    print(f"{subject.spec}: {layers} layers x {tokens:,} tokens, {cfg.latents_for(subject.facts.d_model):,} latents, "
          f"k {cfg.k}; cache {args.dtype}, {harvest.bytes / harvest.tokens_per_layer / layers:,.0f} bytes per token "
          "per layer")
    print(f"  harvest  {harvest.wall_seconds:6.1f} s  (once, data preparation included)")
    print(f"  forward  {forward.train_seconds:6.1f} s  {tokens / forward.train_seconds:8.0f} tok/s per SAE")
    print(f"  cache    {cached.train_seconds:6.1f} s  {tokens / cached.train_seconds:8.0f} tok/s per SAE   "
          f"{forward.train_seconds / cached.train_seconds:5.2f}x forward")
    saved = forward.train_seconds - cached.train_seconds
    if saved > 0:
        print(f"  the cache pays for itself from config {math.ceil(harvest.wall_seconds / saved)} on")


if __name__ == "__main__":
    main()
