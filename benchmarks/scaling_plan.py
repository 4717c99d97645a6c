"""Stage I past one machine, on paper: memory per SAE, SAEs per GPU, tokens/s and wall time on 1, 8 and 64 GPUs.

For R1-Distill-Qwen-1.5B at the paper's settings (`train-saes --preset paper`: 65,536 latents, k 32, Signum,
batch 16 x 2,048 tokens) and, with the same SAEs, a Qwen2.5-7B-shaped and a Llama-3-70B-shaped model; one SAE
per decoder layer. Memory comes from the trainer's own `plan_memory`, parameter counts from the transformers
models built on the meta device, FLOPs per token from the fused kernel's operation count, and the FLOP rate
from a dense bf16 peak times an assumed utilisation (the kernel's achieved rate on this CPU is measured and
printed next to it). Every assumption is a named constant or an option and is printed with the table.

    .venv/bin/python benchmarks/scaling_plan.py [--json plan.json] [--no-measure] [--utilisation 0.4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

from resa_interp.presets import with_preset
from resa_interp.sae import MEMORY_HEADROOM, PRESETS, SAETrainConfig, plan_memory
from resa_interp.sae.topk_kernel import fast_select_dtype, reconstruction_loss

GB = 1e9
STILL_EXAMPLES = 33_000
"""Rows of RUC-AIBOX/STILL-3-Preview-RL-Data (an estimate: its card says 10K-100K rows, the STILL-3 and Tina
write-ups about 33k problems)."""
TOKENS_PER_EXAMPLE = 200
"""An estimate for one example in the authors' template with R1-Distill's tokenizer: the system prompt (~91 of
~140 tokens of a synthetic example with the embedded tokenizer, docs/guide/stage1-saes.md) plus a competition
problem and its answer written twice."""
PRETRAINING_TOKENS = 1_000_000_000
"""A second budget for scale: SAEs pretrained on a general corpus see billions of tokens."""
GPUS_PER_NODE = 8
NVLINK_BYTES_S = 450e9
"""NVLink 4 within a node, per GPU and direction (H100/H200 SXM: 900 GB/s both ways)."""
NETWORK_BYTES_S = 50e9
"""Between nodes, per GPU: one 400 Gb/s InfiniBand NDR link."""


@dataclass(frozen=True)
class ModelShape:
    """A source model's shape: enough to build its HF config and count its parameters."""

    name: str
    family: str
    """'qwen2' or 'llama' (which transformers config to build)."""
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    vocab: int

    def hf_config(self) -> PretrainedConfig:
        """The transformers config of this shape (untied embeddings, as in all three models)."""
        cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[self.family]
        return cls(vocab_size=self.vocab, hidden_size=self.d_model, intermediate_size=self.d_ff,
                   num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
                   num_key_value_heads=self.n_kv_heads, tie_word_embeddings=False)


MODELS = (
    ModelShape("R1-Distill-Qwen-1.5B", "qwen2", 28, 1536, 8960, 12, 2, 151_936),
    ModelShape("Qwen2.5-7B shape", "qwen2", 28, 3584, 18_944, 28, 4, 152_064),
    ModelShape("Llama-3-70B shape", "llama", 80, 8192, 28_672, 64, 8, 128_256),
)


@dataclass(frozen=True)
class GPU:
    """An accelerator: memory as sold (decimal GB, below what torch reports, so conservative) and dense bf16 peak."""

    name: str
    memory: float
    """Bytes."""
    bf16_flops: float
    """Dense bf16 tensor-core peak, FLOP/s (no structured sparsity)."""


GPUS = (GPU("H100 80GB", 80 * GB, 989.4e12), GPU("H200 141GB", 141 * GB, 989.4e12))


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a model, counted on the meta device."""

    total: int
    decoder_layers: int
    """In the decoder layers: what a harvest runs through (embedding lookups and the skipped lm_head excluded)."""


def count_params(shape: ModelShape) -> ParamCount:
    """Build the model on the meta device (no memory) and count its parameters."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.hf_config(), dtype=torch.bfloat16)
    return ParamCount(sum(p.numel() for p in model.parameters()),
                      sum(p.numel() for p in model.model.layers.parameters()))


@dataclass(frozen=True)
class SAEMemory:
    """Bytes for one layer's SAE in the trainer (float32 throughout), from `plan_memory`."""

    params: int
    """2 d n + n + d: encoder and decoder matrices, their biases."""
    weights: int
    grads: int
    optimizer: int
    """Adam's two moments or Signum's one momentum buffer."""
    buffer: int
    """The layer's shuffle buffer plus one forward pass's activations, float32."""
    step: int
    """Pre-activations and top-k workspace of one optimizer step (one step runs at a time per GPU)."""

    @property
    def per_sae(self) -> int:
        """What every further SAE on a GPU adds."""
        return self.weights + self.grads + self.optimizer + self.buffer


def sae_memory(cfg: SAETrainConfig, d_model: int) -> SAEMemory:
    """`plan_memory`'s estimate for one SAE, split into its parts (the split sums to the plan's figure)."""
    plan = plan_memory(cfg, d_model, 1, torch.device("cpu"), available=0)
    d_sae = cfg.latents_for(d_model)
    params = 2 * d_model * d_sae + d_sae + d_model
    weights = grads = 4 * params
    return SAEMemory(params, weights, grads, plan.per_layer_sae - weights - grads, plan.per_layer_buffer, plan.step)


def kernel_flops_per_token(d_in: int, d_sae: int, k: int) -> float:
    """FLOPs of one token through `reconstruction_loss` and its backward (`resa_interp.sae.topk_kernel`).

    The dense encoder product that selects the latents (2 d n) dominates; the rest touches the k selected rows
    only: values recomputed in float32, decoder forward, and four backward products (12 k d in all)."""
    return 2 * d_in * d_sae + 12 * k * d_in


def sae_flops_per_token(cfg: SAETrainConfig, d_model: int) -> float:
    """FLOPs of one training token through one SAE: the kernel, plus the optimizer and decoder renormalisation
    (~10 FLOPs per parameter) once per step of `batch_tokens`."""
    d_sae = cfg.latents_for(d_model)
    params = 2 * d_model * d_sae + d_sae + d_model
    return kernel_flops_per_token(d_model, d_sae, cfg.k) + 10 * params / cfg.batch_tokens


def forward_flops_per_token(shape: ModelShape, params: ParamCount, seq_len: int) -> float:
    """The source model's forward pass per token: 2 per decoder-layer parameter plus causal attention scores and
    their weighted sum (4 d x the average context, seq_len / 2, per layer)."""
    return 2 * params.decoder_layers + 4 * shape.n_layers * shape.d_model * seq_len / 2


@dataclass(frozen=True)
class KernelRate:
    """The fused kernel's achieved FLOP/s on this machine, next to a dense matmul of the same shape and dtype."""

    d_in: int
    d_sae: int
    tokens: int
    select_dtype: str
    step_flops: float
    dense_flops: float

    @property
    def ratio(self) -> float:
        """Fraction of the dense matmul rate the whole step reaches."""
        return self.step_flops / self.dense_flops


def measure_kernel(d_in: int = 1536, d_sae: int = 16_384, tokens: int = 2048, k: int = 32,
                   repeats: int = 3) -> KernelRate:
    """Time `reconstruction_loss` + backward (the hardware's selection dtype) and the dense selection product
    alone, medians of `repeats` after one warm-up; about 10 s on 2 cores."""
    gen = torch.Generator().manual_seed(0)
    select = fast_select_dtype(torch.device("cpu"))
    x = torch.randn(tokens, d_in, generator=gen)
    enc, dec = (torch.randn(d_sae, d_in, generator=gen).requires_grad_() for _ in range(2))
    b_enc, b_dec = torch.zeros(d_sae, requires_grad=True), torch.zeros(d_in, requires_grad=True)

    def step() -> None:
        loss, *_ = reconstruction_loss(x, enc, b_enc, dec, b_dec, k, select)
        loss.backward()

    x_select, enc_select = x.to(select or x.dtype), enc.detach().to(select or x.dtype)

    def dense() -> None:
        torch.nn.functional.linear(x_select, enc_select)

    def median_seconds(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return KernelRate(d_in, d_sae, tokens, str(select or torch.float32).removeprefix("torch."),
                      kernel_flops_per_token(d_in, d_sae, k) * tokens / median_seconds(step),
                      2 * d_in * d_sae * tokens / median_seconds(dense))


@dataclass(frozen=True)
class Assumptions:
    """What the estimates take as given."""

    utilisation: float = 0.4
    """Fraction of the dense bf16 peak that both the model forward and the SAE step reach (an assumption)."""
    budgets: tuple[int, ...] = (STILL_EXAMPLES * TOKENS_PER_EXAMPLE, PRETRAINING_TOKENS)
    """Training tokens per SAE: one epoch of STILL (estimated), and a pretraining-scale budget."""
    gpu_counts: tuple[int, ...] = (1, 8, 64)
    """Job sizes to plan for (8 GPUs to a node)."""


@dataclass(frozen=True)
class Placement:
    """Where a model's weights live for the harvest on one GPU of an N-GPU job."""

    scheme: str
    """'replica' (every GPU holds the model) or 'HSDP/S' (FSDP-sharded over S GPUs of a node, replicated across
    nodes)."""
    weight_bytes: float
    """bf16 weights resident on each GPU (plus one gathered layer when sharded)."""
    gather_bytes_per_token: float
    """Weights all-gathered per local token (sharded only; within a node)."""


def harvest_bytes(shape: ModelShape, cfg: SAETrainConfig, n_gpus: int) -> float:
    """Forward workspace of one GPU's harvest of `seq_batch` x `max_seq_len` tokens in bf16 (MLP intermediates
    and residual-sized tensors; flash attention keeps no score matrix), plus one layer's activations in flight
    to their owners when there are other GPUs."""
    tokens = cfg.seq_batch * cfg.max_seq_len
    in_flight = shape.d_model if n_gpus > 1 else 0
    return 2 * tokens * (3 * shape.d_ff + 4 * shape.d_model + in_flight)


def placements(shape: ModelShape, params: ParamCount, n_gpus: int, cfg: SAETrainConfig) -> list[Placement]:
    """The weight layouts to try: a full bf16 replica per GPU (`device_map={"": rank}`), and with several GPUs
    FSDP within a node (HYBRID_SHARD over min(N, 8) GPUs, replicated across nodes), whose weight gathers stay on
    NVLink. Which fits, and which is faster, `plan_row` decides."""
    full = 2 * params.total
    found = [Placement("replica", full, 0.0)]
    shards = min(n_gpus, GPUS_PER_NODE)
    if shards > 1:
        layer = 2 * params.decoder_layers / shape.n_layers
        gathered_per_token = full * (shards - 1) / shards / (cfg.seq_batch * cfg.max_seq_len)
        # its own shard, plus the gathered layer and the next one prefetched
        found.append(Placement(f"HSDP/{shards}", full / shards + 2 * layer, gathered_per_token))
    return found


@dataclass(frozen=True)
class PlanRow:
    """One model on N GPUs of one kind."""

    model: str
    gpu: str
    n_gpus: int
    placement: str
    """The chosen `Placement.scheme`, or 'does not fit'."""
    saes_per_gpu: int
    """SAEs one GPU holds at once (0: not even one fits)."""
    passes: int
    """Harvests over the data: layers are trained in groups when a GPU cannot hold all of its layers."""
    tokens_per_s: float
    """Training tokens per second through every layer's SAE, whole job."""
    hours: tuple[float, ...]
    """Wall time per token budget (Assumptions.budgets); empty when it does not fit."""
    activation_bytes_per_token: float
    """Sent to the GPUs owning the layers, whole job: layers x d_model x 2 bytes x (N - 1) / N."""
    link_load: float
    """Per GPU, seconds of link time per second of compute: activations (NVLink within a node, InfiniBand
    across), HSDP weight gathers and the all-reduce of replicated SAEs' float32 gradients (both NVLink, the
    replicas of a layer being placed in one node). Above 1 the links set the pace (`tokens_per_s` includes it)."""


def _row(shape: ModelShape, params: ParamCount, gpu: GPU, n_gpus: int, cfg: SAETrainConfig, assume: Assumptions,
         placement: Placement) -> PlanRow | None:
    """The row for one placement, or None when the weights and one SAE do not fit."""
    mem = sae_memory(cfg, shape.d_model)
    owned = math.ceil(shape.n_layers / n_gpus)
    replicas = max(1, n_gpus // shape.n_layers)
    free = gpu.memory - placement.weight_bytes - harvest_bytes(shape, cfg, n_gpus)
    plan = plan_memory(cfg, shape.d_model, owned, torch.device("cpu"), available=max(0, int(free)))
    if plan.group_size * mem.per_sae + mem.step > MEMORY_HEADROOM * free:
        return None
    passes = math.ceil(owned / plan.group_size)
    forward = forward_flops_per_token(shape, params, cfg.max_seq_len)
    sae = sae_flops_per_token(cfg, shape.d_model)
    # seconds of one GPU per token of the whole job: its share of every pass's harvest, and its SAEs
    flops = passes * forward / n_gpus + (owned * sae if n_gpus <= shape.n_layers else sae / replicas)
    compute_rate = gpu.bf16_flops * assume.utilisation / flops
    on_node = (min(n_gpus, GPUS_PER_NODE) - 1) / n_gpus
    off_node = max(0, n_gpus - GPUS_PER_NODE) / n_gpus
    # every layer's activations of a harvested token go to their owner once, whatever the number of passes
    per_local_token = (shape.n_layers * shape.d_model * 2 * (on_node / NVLINK_BYTES_S + off_node / NETWORK_BYTES_S)
                       + passes * placement.gather_bytes_per_token / NVLINK_BYTES_S)
    link = compute_rate / n_gpus * per_local_token
    if replicas > 1:  # ring all-reduce of float32 gradients, once per step of batch_tokens
        link += compute_rate / cfg.batch_tokens * 2 * (replicas - 1) / replicas * 4 * mem.params / NVLINK_BYTES_S
    tokens_per_s = compute_rate / max(1.0, link)
    return PlanRow(shape.name, gpu.name, n_gpus, placement.scheme, min(plan.group_size, owned), passes, tokens_per_s,
                   tuple(b / tokens_per_s / 3600 for b in assume.budgets),
                   shape.n_layers * shape.d_model * 2 * (n_gpus - 1) / n_gpus, link)


def plan_row(shape: ModelShape, params: ParamCount, gpu: GPU, n_gpus: int, cfg: SAETrainConfig,
             assume: Assumptions) -> PlanRow:
    """Layers spread over GPUs: each GPU harvests its own batches (data parallel, the weights placed as in
    `placements`) and sends each layer's activations to the GPU that owns the layer; with more GPUs than layers
    each SAE is data parallel over N // layers GPUs. The fastest placement that fits wins."""
    rows = [r for p in placements(shape, params, n_gpus, cfg)
            if (r := _row(shape, params, gpu, n_gpus, cfg, assume, p)) is not None]
    if not rows:
        return PlanRow(shape.name, gpu.name, n_gpus, "does not fit", 0, 0, 0.0, (), 0.0, 0.0)
    return max(rows, key=lambda r: r.tokens_per_s)


@dataclass(frozen=True)
class ModelFacts:
    """Per model: parameters, memory of one SAE and of the model, FLOPs per token."""

    model: str
    n_layers: int
    d_model: int
    params: ParamCount
    sae: SAEMemory
    model_bf16: float
    harvest: float
    """One GPU's harvest workspace (single GPU)."""
    sae_flops: float
    forward_flops: float


def model_facts(shape: ModelShape, cfg: SAETrainConfig) -> ModelFacts:
    """What a plan row is built from, for the memory table."""
    params = count_params(shape)
    return ModelFacts(shape.name, shape.n_layers, shape.d_model, params, sae_memory(cfg, shape.d_model),
                      2 * params.total, harvest_bytes(shape, cfg, 1), sae_flops_per_token(cfg, shape.d_model),
                      forward_flops_per_token(shape, params, cfg.max_seq_len))


def saes_on_one_gpu(facts: ModelFacts, gpu: GPU) -> int:
    """SAEs one GPU holds beside a full bf16 replica of the model and its harvest (0 when none fits)."""
    free = MEMORY_HEADROOM * (gpu.memory - facts.model_bf16 - facts.harvest) - facts.sae.step
    return max(0, int(free // facts.sae.per_sae))


def paper_config() -> SAETrainConfig:
    """`train-saes --preset paper`."""
    return with_preset(SAETrainConfig, PRESETS, "paper")


def build_plan(assume: Assumptions, cfg: SAETrainConfig | None = None) -> tuple[list[ModelFacts], list[PlanRow]]:
    """Facts per model and one row per model x GPU x GPU count."""
    cfg = cfg or paper_config()
    facts, rows = [], []
    for shape in MODELS:
        fact = model_facts(shape, cfg)
        facts.append(fact)
        rows += [plan_row(shape, fact.params, gpu, n, cfg, assume) for gpu in GPUS for n in assume.gpu_counts]
    return facts, rows


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:,.1f} h"


def _millions(tokens: int) -> str:
    return f"{tokens / 1e6:,.1f}".removesuffix(".0") + " M"


def format_markdown(facts: list[ModelFacts], rows: list[PlanRow], assume: Assumptions, cfg: SAETrainConfig,
                    kernel: KernelRate | None) -> str:
    """The assumptions, a memory table per model and the scaling table, as Markdown."""
    gib = 1024**3
    out = [
        f"- SAEs: {cfg.latents:,} latents, k {cfg.k}, {cfg.optimizer}, batch {cfg.batch_tokens:,} tokens, one per "
        f"decoder layer; float32 weights, grads and optimizer state (`plan_memory`), {MEMORY_HEADROOM:.0%} of free "
        "memory planned. GPUs: " + ", ".join(f"{g.name} ({g.memory / GB:.0f} GB, {g.bf16_flops / 1e12:.0f} TFLOP/s "
                                              "dense bf16)" for g in GPUS)
        + f", assumed utilisation {assume.utilisation:.0%} of peak for the forward and the SAE steps.",
        "- Budgets (tokens through every SAE): " + ", ".join(f"{b:,}" for b in assume.budgets)
        + f" (the default: one STILL epoch, {STILL_EXAMPLES:,} examples x ~{TOKENS_PER_EXAMPLE} tokens, an estimate;"
        " and a pretraining-scale 1 B).",
    ]
    if kernel is not None:
        out.append(f"- Measured here (CPU, {torch.get_num_threads()} threads, d_in {kernel.d_in}, {kernel.d_sae:,} "
                   f"latents, {kernel.tokens:,} tokens, {kernel.select_dtype} selection): the fused step reaches "
                   f"{kernel.step_flops / 1e9:,.0f} GFLOP/s, {kernel.ratio:.0%} of a dense matmul of the selection's "
                   f"shape ({kernel.dense_flops / 1e9:,.0f} GFLOP/s); were a GPU step as far below its matmul rate, "
                   "SAE time would be correspondingly longer than assumed.")
    out += ["", "| model | params | SAE params | weights | grads | optimizer | buffer | per SAE | step workspace | "
            "model bf16 | harvest | SAE GFLOP/token | forward GFLOP/token | " +
            " | ".join(f"SAEs on one {g.name}" for g in GPUS) + " |", "|---" * (13 + len(GPUS)) + "|"]
    for f in facts:
        s = f.sae
        cells = [f.model, f"{f.params.total / 1e9:.2f} B", f"{s.params / 1e6:.1f} M"]
        cells += [f"{b / gib:.2f} GiB" for b in (s.weights, s.grads, s.optimizer, s.buffer, s.per_sae, s.step,
                                                 f.model_bf16, f.harvest)]
        cells += [f"{f.sae_flops / 1e9:.3f}", f"{f.forward_flops / 1e9:.2f}"]
        cells += [str(saes_on_one_gpu(f, g)) + f" of {f.n_layers}" for g in GPUS]
        out.append("| " + " | ".join(cells) + " |")
    budgets = " | ".join(f"wall, {_millions(b)} tokens" for b in assume.budgets)
    out += ["", f"| model | GPU | GPUs | model placement | SAEs per GPU | passes | tokens/s | per GPU | {budgets} | "
            "activations sent, KB/token | link load |", "|---" * (10 + len(assume.budgets)) + "|"]
    for r in rows:
        rate = [f"{r.tokens_per_s:,.0f}", f"{r.tokens_per_s / r.n_gpus:,.0f}"] if r.tokens_per_s else ["-", "-"]
        cells = [r.model, r.gpu, str(r.n_gpus), r.placement, str(r.saes_per_gpu), str(r.passes), *rate,
                 *(map(_duration, r.hours) if r.hours else ["-"] * len(assume.budgets)),
                 f"{r.activation_bytes_per_token / 1e3:,.0f}", f"{r.link_load:.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--utilisation", type=float, default=Assumptions.utilisation)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(Assumptions.budgets), help="token budgets")
    parser.add_argument("--no-measure", action="store_true", help="skip the ~10 s CPU timing of the kernel")
    args = parser.parse_args()
    assume = Assumptions(args.utilisation, tuple(args.tokens))
    cfg = paper_config()
    kernel = None if args.no_measure else measure_kernel()
    facts, rows = build_plan(assume, cfg)
    print(format_markdown(facts, rows, assume, cfg, kernel))
    if args.json:
        record = {"assumptions": dataclasses.asdict(assume), "kernel": kernel and dataclasses.asdict(kernel),
                  "gpus": [dataclasses.asdict(g) for g in GPUS], "models": [dataclasses.asdict(f) for f in facts],
                  "rows": [dataclasses.asdict(r) for r in rows]}
        args.json.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
