"""SAE training throughput: resa-interp's fused TopK step vs EleutherAI sparsify on identical activations.

Both train a TopK SAE (d_in 576 = SmolLM2's width, k 32, batch 4096 tokens, float32, sign-descent lr 2.5e-4)
on the same synthetic activations (sums of sparse random directions). Steps alternate between the trainers
so load on the machine hits both alike; the ratio is reported against sparsify measured in this same run.

    pip install -e '.[bench]'          # eai-sparsify, not a runtime dependency
    python benchmarks/bench_sae_train.py [--latents 4608 36864] [--steps 12] [--threads 2]

On a GPU, `scripts/gpu_check.py` times the same step functions at the paper's width (sparsify with its Triton
decoder), through `interleaved_medians`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from resa_interp.sae import LayerSAE


def activations(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Sums of 16 sparse random unit directions from a dictionary of 8192, with random magnitudes."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(8192, d, generator=gen), dim=-1)
    idx = torch.randint(0, 8192, (n, 16), generator=gen)
    mags = torch.rand(n, 16, generator=gen) * 3
    return torch.einsum("nk,nkd->nd", mags, dictionary[idx])


def sparsify_step_fn(d_in: int, latents: int, k: int, lr: float, device: str = "cpu",
                     autocast: torch.dtype | None = None):
    """sparsify's SparseCoder step as its trainer takes it (float32 weights, SignSGD); with `autocast`, its
    forward under `torch.autocast` of that dtype (the cheapest precision it runs in)."""
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=latents, k=k), device=device)
    opt = SignSGD(sae.parameters(), lr=lr)

    def step(x: torch.Tensor) -> float:
        cast = (torch.autocast(torch.device(device).type, dtype=autocast) if autocast is not None
                else contextlib.nullcontext())
        with cast:
            out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        return 1 - out.fvu.item()

    return step


def ours_step_fn(d_in: int, latents: int, k: int, lr: float, select: torch.dtype | None, x0: torch.Tensor):
    """The fused trainer's step (`LayerSAE.step`, Signum) on the device of `x0`, selecting in `select`."""
    sae = LayerSAE(d_in, latents, k, seed=0, select_dtype=select).to(x0.device)
    sae.data_init(x0, from_pretrained=False)
    sae.make_optimizer("signum", lr)
    return sae.step


def interleaved_medians(trainers: dict[str, Callable[[torch.Tensor], object]], batches: list[torch.Tensor],
                        steps: int, sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds per step of each trainer: one warm-up step each, then `steps` rounds in which every trainer
    steps once on the same batch, so that load on the machine hits them alike (`sync` waits for the device)."""
    for step in trainers.values():
        step(batches[0])
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for i in range(steps):
        for name, step in trainers.items():
            sync()
            start = time.perf_counter()
            step(batches[i % len(batches)])
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, nargs="+", default=[4608, 36864])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d_in, k, lr = 576, 32, 2.5e-4
    data = activations(args.batch * 4, d_in)
    batches = data.split(args.batch)
    print(f"d_in {d_in}, k {k}, batch {args.batch} tokens, {args.steps} timed steps each, {args.threads} threads")
    for latents in args.latents:
        trainers = {
            "sparsify": sparsify_step_fn(d_in, latents, k, lr),
            "resa fp32 select": ours_step_fn(d_in, latents, k, lr, None, data),
            "resa bf16 select": ours_step_fn(d_in, latents, k, lr, torch.bfloat16, data),
        }
        medians = interleaved_medians(trainers, list(batches), args.steps)
        base = medians["sparsify"]
        print(f"\n{latents} latents")
        for name, med in medians.items():
            print(f"  {name:<18} {args.batch / med:>9.0f} tok/s   {base / med:5.2f}x sparsify")


if __name__ == "__main__":
    main()
