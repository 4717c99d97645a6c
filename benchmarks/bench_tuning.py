"""Cost of the spliced SAE in an SAE-Tuning step.

Times the real optimizer step (`SAETuner.train_step`: teacher forward, student forward and backward, clip,
AdamW, schedule) with the SAE spliced in, against the same KL-LoRA step with the splice left out, on the
same sequences, alternating the two so that load on a shared machine hits both alike. Prints the medians and
their ratio (goal: <= 1.15x).

The SAE is a TopK SAE with random weights of the paper's shape (expansion 64, k 32): the cost of TopK does
not depend on the weights' values.

    .venv/bin/python benchmarks/bench_tuning.py                      # embedded SmolLM2, layer 12, x64
    .venv/bin/python benchmarks/bench_tuning.py --expansion 8 --steps 10
    python benchmarks/bench_tuning.py --model path/to/r1-distill --d-sae 65536 --device cuda   # GPU, bf16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def random_topk_sae(out: Path, d_in: int, d_sae: int, k: int, hook: str, seed: int = 0) -> str:
    """Save a random SAELens TopK SAE (unit decoder rows, encoder = decoder transpose)."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=hook)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    sae.save_model(out)
    return str(out)


def main() -> None:
    from resa_interp.model.hooks import hook_name
    from resa_interp.model.loading import resolve_model_path
    from resa_interp.tuning import SAETuner, TuneConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="target model spec (default: embedded SmolLM2-135M)")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--expansion", type=int, default=64, help="d_sae / d_in (paper: 64)")
    parser.add_argument("--d-sae", type=int, default=None,
                        help="latents, overriding --expansion (paper: 65,536 for d 1536)")
    parser.add_argument("--k", type=int, default=32, help="TopK k (paper: 32)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--limit", type=int, default=16, help="synthetic examples to cycle through")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detach-sae", action="store_true", help="time the authors' variant (no grad through the SAE)")
    parser.add_argument("--dense", action="store_true",
                        help="splice SAELens' own dense forward, not the sparse TopK path")
    args = parser.parse_args()

    import json

    d_in = json.loads((resolve_model_path(args.model) / "config.json").read_text())["hidden_size"]
    d_sae = args.d_sae or d_in * args.expansion
    with tempfile.TemporaryDirectory() as tmp:
        sae = random_topk_sae(Path(tmp) / "sae", d_in, d_sae, args.k, hook_name("resid_post", args.layer))
        config = TuneConfig(model=args.model, sae=sae, limit=args.limit, steps=10_000, lr=1e-4,
                            detach_sae=args.detach_sae, save_every=None, device=args.device)
        tuner = SAETuner(config)
    spliced_sae = tuner.recon
    spliced_sae.sparse = spliced_sae.sparse and not args.dense
    sync = torch.cuda.synchronize if tuner.accelerator.device.type == "cuda" else (lambda: None)

    def timed(step: int, with_sae: bool) -> float:
        tuner.recon = spliced_sae if with_sae else None
        sync()
        start = time.perf_counter()
        tuner.train_step(step)
        sync()
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {True: [], False: []}
    tokens = []
    for i in range(args.warmup + args.steps):
        for with_sae in (True, False):  # the same sequence for both
            elapsed = timed(i, with_sae)
            if i >= args.warmup:
                times[with_sae].append(elapsed)
        tokens.append(len(tuner.examples[tuner.schedule.indices(i, 0)[0]]))
    spliced, plain = statistics.median(times[True]), statistics.median(times[False])
    print(f"device {tuner.accelerator.device}, dtype {tuner.subject.dtype}, torch threads {torch.get_num_threads()}")
    print(f"model {tuner.subject.spec} (d_model {d_in}), SAE at layer {args.layer}: d_sae {d_sae}, "
          f"k {args.k}, {'sparse TopK' if spliced_sae.sparse else 'dense SAELens'} forward, "
          f"detach {args.detach_sae}; sequences of {min(tokens)}-{max(tokens)} tokens")
    print(f"KL-LoRA step with SAE spliced: median {spliced * 1e3:.1f} ms over {args.steps} steps")
    print(f"KL-LoRA step without SAE:      median {plain * 1e3:.1f} ms")
    print(f"ratio spliced / without: {spliced / plain:.3f}x (goal <= 1.15x)")


if __name__ == "__main__":
    main()
