"""SAE training throughput: resa-interp's fused TopK step vs EleutherAI sparsify on identical activations, and
against the step's floor, the dense encoder product of the same shapes.

Both train a TopK SAE (d_in 576 = SmolLM2's width, k 32, batch 4096 tokens, float32, sign-descent lr 2.5e-4)
on the same synthetic activations (sums of sparse random directions). Steps alternate between the trainers and
the plain encoder matmuls (`F.linear`, fp32 and bf16) so load on the machine hits all alike; ratios are against
sparsify and against the matmul of the step's selection dtype, measured in this same run. A TopK step cannot be
faster than its dense encoder product (everything else is O(k * d_in) per token), so "of matmul" is the share of
the step spent on unavoidable work. The bf16 rows run only where the CPU multiplies bf16 natively (AMX or
AVX512-BF16; elsewhere bf16 is emulated and slower than fp32, and the trainer never selects in it) unless
`--bf16` forces them.

    pip install -e '.[bench]'          # eai-sparsify, not a runtime dependency
    python benchmarks/bench_sae_train.py [--latents 4608 36864] [--steps 12] [--threads 2] [--bf16] [--profile]

`--profile` adds where each of our steps' time goes (torch.profiler, top operators); `--seeds N` (default 3) times the
selection of N seeds' SAEs on one batch one after another against one stacked encoder product, the only part of a
step that several seeds could share. On a GPU, `scripts/gpu_check.py` times the same step functions at the paper's
width (sparsify with its Triton decoder), through `interleaved_medians`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from resa_interp.sae import LayerSAE
from resa_interp.sae.topk_kernel import fast_select_dtype


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


def matmul_fn(d_in: int, latents: int, dtype: torch.dtype, device: str | torch.device = "cpu"):
    """The step's floor: the dense encoder product x @ enc.T of the same shapes in `dtype` on `device` (bf16: the
    batch's conversion included, as in the step)."""
    enc = torch.nn.functional.normalize(torch.randn(latents, d_in, device=device), dim=-1).to(dtype)
    return lambda x: torch.nn.functional.linear(x.to(dtype), enc)


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


def profile_step(step, batches: list[torch.Tensor], name: str, top: int = 10) -> None:
    """Print the step's `top` operators by own time, as shares of the step (3 profiled steps)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(3):
            step(batches[i % len(batches)])
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"  where the {name} step's time goes:")
    for e in events[:top]:
        print(f"    {e.key:<32} {e.self_cpu_time_total / total:5.1%}  ({e.count // 3} calls per step)")


def seed_selection(d_in: int, latents: int, k: int, seeds: int, batches: list[torch.Tensor], steps: int) -> None:
    """Selection (fp32 encoder product + top-k) of `seeds` SAEs: one after another vs one stacked product."""
    encs = [torch.nn.functional.normalize(torch.randn(latents, d_in), dim=-1) for _ in range(seeds)]
    stacked = torch.cat(encs)

    def apart(x):
        return [torch.nn.functional.linear(x, enc).topk(k, dim=-1, sorted=False) for enc in encs]

    def together(x):
        return torch.nn.functional.linear(x, stacked).view(len(x), seeds, latents).topk(k, dim=-1, sorted=False)

    med = interleaved_medians({"apart": apart, "together": together}, batches, steps)
    apart_ms, together_ms = med["apart"] * 1e3, med["together"] * 1e3
    print(f"  {seeds} seeds' selection: one after another {apart_ms:.0f} ms, stacked {together_ms:.0f} ms "
          f"({apart_ms / together_ms:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, nargs="+", default=[4608, 36864])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also the bf16 rows where bf16 is not native")
    parser.add_argument("--profile", action="store_true", help="where each of our steps' time goes")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the stacked-selection comparison (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d_in, k, lr = 576, 32, 2.5e-4
    data = activations(args.batch * 4, d_in)
    batches = data.split(args.batch)
    bf16 = args.bf16 or fast_select_dtype(torch.device("cpu")) == torch.bfloat16
    print(f"d_in {d_in}, k {k}, batch {args.batch} tokens, {args.steps} timed steps each, {args.threads} threads, "
          f"bf16 rows {'on' if bf16 else 'off (no native bf16 on this CPU; --bf16 forces them)'}")
    for latents in args.latents:
        trainers = {
            "sparsify": sparsify_step_fn(d_in, latents, k, lr),
            "resa fp32 select": ours_step_fn(d_in, latents, k, lr, None, data),
            "matmul fp32": matmul_fn(d_in, latents, torch.float32),
        }
        if bf16:
            trainers["resa bf16 select"] = ours_step_fn(d_in, latents, k, lr, torch.bfloat16, data)
            trainers["matmul bf16"] = matmul_fn(d_in, latents, torch.bfloat16)
        med = interleaved_medians(trainers, list(batches), args.steps)
        print(f"\n{latents} latents")
        for name, value in med.items():
            floor = f"   {med['matmul ' + name.split()[1]] / value:4.0%} of matmul {name.split()[1]}" \
                if name.startswith("resa") else ""
            print(f"  {name:<18} {args.batch / value:>9.0f} tok/s   {med['sparsify'] / value:5.2f}x sparsify{floor}")
        if args.profile:
            for name in (n for n in trainers if n.startswith("resa")):
                profile_step(trainers[name], batches, name)
        if args.seeds > 1:
            seed_selection(d_in, latents, k, args.seeds, batches, args.steps)


if __name__ == "__main__":
    main()
