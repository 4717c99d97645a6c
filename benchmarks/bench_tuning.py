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

`scripts/gpu_check.py` runs `splice_cost` on a random model of R1-Distill-Qwen-1.5B's shape.
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


def splice_cost(model: str | None, layer: int, d_sae: int | None = None, expansion: int = 64, k: int = 32,
                steps: int = 8, warmup: int = 2, limit: int = 16, device: str = "cpu", detach_sae: bool = False,
                dense: bool = False) -> dict:
    """Median seconds of `SAETuner.train_step` with the SAE spliced and without, alternating on the same sequences;
    the SAE a random TopK SAE of `d_sae` latents (else `expansion` x d_model) at `layer`'s resid_post."""
    import json

    from resa_interp.model.hooks import hook_name
    from resa_interp.model.loading import resolve_model_path
    from resa_interp.tuning import SAETuner, TuneConfig

    d_in = json.loads((resolve_model_path(model) / "config.json").read_text())["hidden_size"]
    d_sae = d_sae or d_in * expansion
    with tempfile.TemporaryDirectory() as tmp:
        sae = random_topk_sae(Path(tmp) / "sae", d_in, d_sae, k, hook_name("resid_post", layer))
        config = TuneConfig(model=model, sae=sae, limit=limit, steps=10_000, lr=1e-4, detach_sae=detach_sae,
                            save_every=None, device=device)
        tuner = SAETuner(config)
    spliced_sae = tuner.recon
    spliced_sae.sparse = spliced_sae.sparse and not dense
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
    for i in range(warmup + steps):
        for with_sae in (True, False):  # the same sequence for both
            elapsed = timed(i, with_sae)
            if i >= warmup:
                times[with_sae].append(elapsed)
        tokens.append(len(tuner.examples[tuner.schedule.indices(i, 0)[0]]))
    spliced, plain = statistics.median(times[True]), statistics.median(times[False])
    return {"device": str(tuner.accelerator.device), "dtype": str(tuner.subject.dtype).removeprefix("torch."),
            "model": tuner.subject.spec, "d_model": d_in, "layer": layer, "d_sae": d_sae, "k": k,
            "forward": "sparse TopK" if spliced_sae.sparse else "dense SAELens", "detach_sae": detach_sae,
            "steps": steps, "tokens_min": min(tokens), "tokens_max": max(tokens),
            "spliced_s": spliced, "plain_s": plain, "ratio": spliced / plain}


def main() -> None:
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
    cost = splice_cost(args.model, args.layer, args.d_sae, args.expansion, args.k, args.steps, args.warmup,
                       args.limit, args.device, args.detach_sae, args.dense)
    print(f"device {cost['device']}, dtype torch.{cost['dtype']}, torch threads {torch.get_num_threads()}")
    print(f"model {cost['model']} (d_model {cost['d_model']}), SAE at layer {args.layer}: d_sae {cost['d_sae']}, "
          f"k {args.k}, {cost['forward']} forward, detach {args.detach_sae}; sequences of "
          f"{cost['tokens_min']}-{cost['tokens_max']} tokens")
    print(f"KL-LoRA step with SAE spliced: median {cost['spliced_s'] * 1e3:.1f} ms over {args.steps} steps")
    print(f"KL-LoRA step without SAE:      median {cost['plain_s'] * 1e3:.1f} ms")
    print(f"ratio spliced / without: {cost['ratio']:.3f}x (goal <= 1.15x)")


if __name__ == "__main__":
    main()
