"""Stage I training throughput from an activation cache vs from forward passes of the model, same config, same run.

Three timings, each the wall time of `train_saes` (the model already loaded, held-out metrics on 2 texts) or of
`cache_activations`:
  forward   train-saes as usual: one forward pass per batch feeds every layer's SAE
  harvest   cache-activations: the same forward passes, written to disk (paid once per cache)
  cache     train-saes --activations: the same SAEs trained from the memory-mapped cache, no forward pass
and the number of SAE configs after which harvesting once beats the forward pass every time.

    python benchmarks/bench_cache.py [--model smollm2-135m] [--layers 6,12,18] [--tokens 4096] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from resa_interp.model import load_subject
from resa_interp.sae import SAETrainConfig, cache_activations, train_saes


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
        forward = train_saes(cfg, root / "forward", subject=subject)
        harvest = cache_activations(cfg, root / "cache", args.dtype, subject=subject)
        cfg.activations = str(harvest.path)
        cached = train_saes(cfg, root / "cached", subject=subject)
    layers = len(harvest.layers)
    tokens = forward.tokens_per_layer
    print(f"{subject.spec}: {layers} layers x {tokens:,} tokens, {cfg.latents_for(subject.facts.d_model):,} latents, "
          f"k {cfg.k}; cache {args.dtype}, {harvest.bytes / harvest.tokens_per_layer / layers:,.0f} bytes per token "
          "per layer")
    print(f"  forward  {forward.wall_seconds:6.1f} s  {tokens / forward.wall_seconds:8.0f} tok/s per SAE")
    print(f"  harvest  {harvest.wall_seconds:6.1f} s  (once)")
    print(f"  cache    {cached.wall_seconds:6.1f} s  {tokens / cached.wall_seconds:8.0f} tok/s per SAE   "
          f"{forward.wall_seconds / cached.wall_seconds:5.2f}x forward")
    saved = forward.wall_seconds - cached.wall_seconds
    if saved > 0:
        print(f"  the cache pays for itself from config {math.ceil(harvest.wall_seconds / saved)} on")


if __name__ == "__main__":
    main()
