"""Activation harvest for all layers vs a plain HF forward pass on the same batch (embedded model).

Five timings per round, interleaved, medians reported:
  forward        plain float32 `model(input_ids)` (logits included), the baseline
  harvest        resa-interp's Harvester: all 30 resid_post hooks, stop after the last layer
  hooked         TransformerLens `run_with_cache` restricted to the 30 resid_post hooks (for reference)
  forward-bf16   the same plain forward with the model in bfloat16 (`--model-dtype bfloat16`)
  harvest-bf16   the Harvester on the bfloat16 model
then the bf16/fp32 ratios of the plain forward and of the harvest, with whether this machine multiplies bf16
natively (CUDA, or a CPU with AMX or AVX512-BF16; elsewhere PyTorch emulates it), and, on trigger texts, the
shared-prefix harvest in counted tokens per second.

    python benchmarks/bench_harvest.py [--batch 8] [--seq 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from resa_interp.data import format_trigger, synthetic_qa
from resa_interp.model import load_subject
from resa_interp.model.harvest import Harvester, encode_texts, make_batch, shared_prefix_length
from resa_interp.sae.topk_kernel import fast_select_dtype


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    subject = load_subject()
    half = load_subject(dtype="bfloat16")
    layers = list(range(subject.facts.n_layers))
    harvest = Harvester(subject.hf, "resid_post", layers)
    harvest_bf16 = Harvester(half.hf, "resid_post", layers)
    hooked = subject.hooked
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    ids = torch.randint(100, subject.facts.d_vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))

    def forward(model=subject.hf):
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)

    def tl():
        with torch.inference_mode():
            hooked.run_with_cache(ids, names_filter=lambda name: name in names)

    runs = {"forward": forward, "harvest": lambda: harvest(ids), "hooked": tl,
            "forward-bf16": lambda: forward(half.hf), "harvest-bf16": lambda: harvest_bf16(ids)}
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    tokens = args.batch * args.seq
    base = statistics.median(times["forward"])
    print(f"embedded model, batch {args.batch} x {args.seq} tokens, {args.rounds} rounds, medians")
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"  {name:<12} {tokens / med:>7.0f} tok/s   {base / med:5.2f}x plain forward")
    native = fast_select_dtype(torch.device("cpu")) is not None
    print(f"\nbf16 vs fp32 on this CPU (native bf16: {'yes' if native else 'no, emulated'}):")
    for kind in ("forward", "harvest"):
        ratio = statistics.median(times[kind]) / statistics.median(times[f"{kind}-bf16"])
        print(f"  {kind:<8} bf16 {ratio:5.2f}x fp32 (goal >= 1.5x where bf16 is native)")

    texts = [format_trigger(e.problem, e.answer) for e in synthetic_qa(args.batch * args.rounds, seed=1)]
    encoded = encode_texts(subject.tokenizer, texts)
    prefix_len = shared_prefix_length(encoded)
    prefix = harvest.run_prefix(encoded[0].ids[:prefix_len])
    shared_t, full_t, counted = [], [], 0
    for i in range(args.rounds):
        chunk = encoded[i * args.batch : (i + 1) * args.batch]
        full = make_batch(chunk, 0, 1)
        suffix = make_batch(chunk, 0, 1, prefix_len)
        counted += full.n_tokens
        full_t.append(timed(lambda b=full: harvest(b.input_ids, b.attention_mask)))
        shared_t.append(timed(lambda b=suffix: harvest(b.input_ids, b.attention_mask, prefix=prefix)))
    print(f"\ntrigger texts ({prefix_len} shared prefix tokens of ~{counted // (args.batch * args.rounds)}):")
    print(f"  harvest, whole texts   {counted / sum(full_t):>7.0f} counted tok/s")
    print(f"  harvest, shared prefix {counted / sum(shared_t):>7.0f} counted tok/s   "
          f"{sum(full_t) / sum(shared_t):5.2f}x whole texts")


if __name__ == "__main__":
    main()
