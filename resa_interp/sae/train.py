"""Stage I: TopK SAEs at every selected layer of a source model, all trained from ONE forward pass per batch.

Data flow: CoT-free trigger texts -> one HF forward pass per batch of sequences (`model.harvest.Harvester`), or
the same batches read from an activation cache (`sae.activations`) -> per-layer shuffle buffers in memory ->
each layer's SAE steps on minibatches (`sae.topk_kernel`; or SAELens' own trainer and architectures,
`sae.saelens_trainer`, with --trainer saelens) -> SAELens SAE folders `RUN/saes/<hook_name>/` ->
held-out quality (`sae.metrics`).

Training works on inputs scaled to unit mean norm (one factor per layer, measured on the first buffer); the
factor is folded into the saved weights, so the saved SAEs read raw activations and reconstruct them in raw
units. The first (sink) position of every sequence is excluded unless asked; with packing (`pack`) a sequence
is a chunk of the EOS-joined text stream, so that is each chunk's first position, wherever it falls in a text.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resa_interp.checkpoints import load_state, refuse_pickled, save_state
from resa_interp.data.packing import chunk_length
from resa_interp.data.qa import SYNTHETIC, dataset_fingerprint, load_qa
from resa_interp.data.templates import TEMPLATES, format_trigger
from resa_interp.errors import ResaError, check_choice
from resa_interp.model.harvest import EncodedText, encode_packed, encode_texts, shared_prefix_length
from resa_interp.model.hooks import canonical_hook, hook_name
from resa_interp.model.loading import resolve_device
from resa_interp.model.subject import Subject, load_subject
from resa_interp.runs import atomic_dir, record_stage, run_relative, sha256_text
from resa_interp.sae.activations import ActivationCache, ActivationFeed, ModelFeed
from resa_interp.sae.folders import SAES_DIR, load_sae, record_firing, sae_dir
from resa_interp.sae.metrics import add_novel_quality, evaluate_saes, novel_texts, write_metrics
from resa_interp.sae.optimizers import Signum
from resa_interp.sae.pretrained import build_topk_sae, load_source_sae, to_training_form
from resa_interp.sae.ranks import RoutedFeed, barrier, gather_objects, layer_owners, most_per_rank, to_rank_zero
from resa_interp.sae.saelens_trainer import ARCHITECTURES, K_ARCHITECTURES, TRAINERS, SAELensLayer, trainer_label
from resa_interp.sae.topk_kernel import (
    fast_select_dtype,
    normalize_rows,
    project_out_parallel_grad,
    reconstruction_loss,
)
from resa_interp.shards import ONLY, Shard, launcher_shard, process_group

log = logging.getLogger(__name__)

MODES = ("scratch", "finetune", "pretrained")
OPTIMIZERS = ("adam", "signum")
SELECT_PRECISIONS = {"auto": None, "bfloat16": torch.bfloat16, "float32": None}
R1_DISTILL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
CHECKPOINT = ".checkpoint"
RANK_STATE = "rank"
"""A checkpoint of several launcher ranks holds each rank's state in rank-R/."""
PICKLED_CHECKPOINT = ".checkpoint.pt"
"""Where versions before safetensors checkpoints kept a pickle (refused, never read)."""
DEAD_WINDOW = 1_000_000
"""A latent is dead when it has not fired in this many training tokens (the paper's dead feature threshold),
or in the whole run when that is shorter."""


@dataclass
class SAETrainConfig:
    """Everything that determines a Stage I run (recorded in the manifest and every SAE's metadata)."""

    model: str | None = None
    """Source model spec; None is the embedded SmolLM2-135M-Instruct."""
    dataset: str = "synthetic"
    """Trigger data: 'synthetic' (built-in verified math), 'still', 'deepscaler', a hub id or a local file."""
    problem_column: str | None = None
    """Override for the question column of the dataset."""
    answer_column: str | None = None
    """Override for the answer column of the dataset."""
    template: str = "r1"
    """CoT-free template: 'r1' (R1 system prompt + User/Assistant turns, the authors' code) or 'short'."""
    layers: str = "all"
    """Layers to train: 'all', a range 'A-B' (inclusive), or a list 'L,L,...'."""
    hook: str = "resid_post"
    """'resid_post' (output of decoder layer l, the authors' code), 'mlp_out' (the paper's text), or any hook
    `model.hooks.canonical_hook` accepts (TransformerLens pattern such as 'blocks.{l}.attn.hook_z')."""
    source_hook: str | None = None
    """Hookpoint of the --from SAEs (--from-hook); None = the same as `hook`. The authors start from EleutherAI's
    MLP-output SAEs (`layers.N.mlp`, the only ones that release has) and train them on the residual stream:
    source_hook 'mlp_out' with hook 'resid_post'."""
    mode: str = "scratch"
    """'scratch', 'finetune' (start from --from and continue on the trigger data), 'pretrained' (import as is)."""
    source: str | None = None
    """Pretrained SAEs (--from): SAELens folder or run, sparsify folder, or SAELens RELEASE:SAE_ID."""
    k: int = 32
    """Active latents per token (TopK)."""
    expansion_factor: int = 8
    """Latents = expansion_factor * d_model unless `latents` is given. 8 keeps the 30-layer CPU default in
    minutes."""
    latents: int | None = None
    """Dictionary size as a number (--latents); overrides `expansion_factor`, as sparsify's num_latents does.
    The paper (Appendix A): 65,536. Fine-tuning keeps the source's size."""
    tokens: int | None = 98_304
    """Training tokens per SAE (counted positions); None = one epoch over the dataset."""
    batch_tokens: int = 1024
    """Tokens per optimizer step."""
    optimizer: str = "adam"
    """'adam' or 'signum' (sign of momentum, the paper's choice)."""
    lr: float = 2e-3
    """Learning rate, constant."""
    seq_batch: int = 16
    """Sequences per forward pass of the model."""
    buffer_tokens: int = 8192
    """Activations pooled and shuffled before they are trained on (per layer)."""
    max_seq_len: int = 1024
    """Texts are truncated to this many tokens."""
    keep_first: bool = False
    """Train on the first (sink) position too; by default it is excluded."""
    n_examples: int | None = None
    """Examples to draw from the dataset (synthetic: generated); None = as many as the token budget needs."""
    heldout: int = 16
    """Held-out examples for the quality metrics (never trained on)."""
    group_size: int | None = None
    """Layers trained together from one forward pass; None = as many as fit in memory."""
    checkpoint_every: int = 4
    """Save a resumable checkpoint every N flushed buffers (0 = never)."""
    seed: int = 0
    """Seed for data order, initialisation and shuffling."""
    seeds: tuple[int, ...] = ()
    """More SAEs per layer that differ from `seed`'s only in their initialisation seed (--seeds 0,1,2 gives seed 0
    and seeds (1, 2)): every batch of the one forward pass, shuffled once, steps them all. `seed`'s SAE stays at
    RUN/saes/<hook_name>/, the others go to RUN/saes/seed-<s>/<hook_name>/ (`features` matches them)."""
    device: str = "cpu"
    """Where the model and SAEs run: cpu, cuda, auto."""
    model_dtype: str = "float32"
    """dtype of the source model (SAEs always train in float32)."""
    select_precision: str = "auto"
    """Precision of the dense product that picks the top-k latents: 'auto' (bfloat16 where the hardware has
    it natively, CUDA or AMX/AVX512-BF16 CPUs), 'bfloat16' or 'float32'. Selected values and all gradients are
    always float32."""
    pack: bool = False
    """Pack the training texts as the authors' code does (sparsify's chunk_and_tokenize): joined with EOS and
    cut into chunks of exactly `max_seq_len` tokens (or the tokenizer's model_max_length when shorter), the
    remainder of every 2048 texts dropped. Off: one text per sequence, padded. Held-out texts stay unpacked."""
    trainer: str = "fused"
    """'fused' (our TopK kernel, the default and fastest) or 'saelens' (SAELens' own training SAEs and trainer step,
    `sae.saelens_trainer`; from scratch only, Adam)."""
    architecture: str = "topk"
    """SAE architecture with --trainer saelens: topk, batchtopk, jumprelu, matryoshka (batchtopk), standard or gated
    (the fused trainer is TopK only)."""
    sparsity_coefficient: float | None = None
    """--trainer saelens, jumprelu/standard/gated: the sparsity penalty's coefficient (l0 for jumprelu, l1 for
    standard and gated); None = SAELens' default. The k-architectures use `k`."""
    activations: str | None = None
    """Train from this activation cache (`cache-activations`) instead of forward passes; the model is loaded only
    for the held-out metrics at the end. The cache must hold this model, hook and layers and the same data
    settings."""

    def latents_for(self, d_in: int) -> int:
        """The dictionary size for inputs of width `d_in`: `latents`, else `expansion_factor` * d_in (the one place
        it is resolved; checked to be at least k)."""
        if self.latents is not None:
            check_latents(self.latents, self.k)
            return self.latents
        n = self.expansion_factor * d_in
        if n < max(self.k, 1):
            raise ResaError(f"--expansion-factor {self.expansion_factor}: {n} latents for d_model {d_in}, fewer than "
                            f"--k {self.k}; raise it or give --latents")
        return n

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """Every SAE seed of the run, `seed` first."""
        return (self.seed, *self.seeds)

    def resolved_source_hook(self) -> str:
        """The hookpoint the --from SAEs were trained at (`source_hook`, else `hook`)."""
        return self.source_hook or self.hook

    def check(self) -> None:
        """One-line errors for settings no run can use (before any model or data is loaded)."""
        self.hook = canonical_hook(self.hook)
        check_choice("--mode", self.mode, MODES)
        if self.mode != "scratch" and not self.source:
            raise ResaError(f"--mode {self.mode} needs --from (a SAELens folder, a sparsify folder or RELEASE:SAE_ID)")
        if self.source_hook is not None:
            self.source_hook = canonical_hook(self.source_hook, "--from-hook")
            if self.mode == "scratch":
                raise ResaError(f"--from-hook {self.source_hook}: only meaningful with --mode finetune or pretrained")
        if self.latents is not None:
            check_latents(self.latents, self.k)
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        check_choice("--template", self.template, TEMPLATES)
        check_choice("select precision", self.select_precision, SELECT_PRECISIONS)
        if self.tokens is not None and self.tokens < self.batch_tokens:
            raise ResaError(f"--tokens {self.tokens} is smaller than one batch ({self.batch_tokens} tokens); raise it")
        if self.seed in self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ResaError(f"--seeds {','.join(map(str, self.all_seeds))}: every seed must be different")
        if self.seeds and self.mode != "scratch":
            raise ResaError(f"--seeds with --mode {self.mode}: SAEs that start from --from weights do not depend on "
                            "their seed; train several seeds with --mode scratch")
        check_choice("--trainer", self.trainer, TRAINERS)
        check_choice("--architecture", self.architecture, ARCHITECTURES)
        if self.trainer == "fused" and self.architecture != "topk":
            raise ResaError(f"--architecture {self.architecture}: the fused trainer is topk only; add --trainer "
                            "saelens")
        if self.trainer == "saelens" and (self.mode != "scratch" or self.optimizer != "adam"):
            raise ResaError(f"--trainer saelens trains from scratch with SAELens' Adam, not --mode {self.mode} / "
                            f"--optimizer {self.optimizer}; use --trainer fused for those")
        if self.sparsity_coefficient is not None and self.architecture in K_ARCHITECTURES:
            raise ResaError(f"--sparsity-coefficient: --architecture {self.architecture} is sparse by --k; the "
                            "coefficient is for jumprelu, standard and gated")
        if self.activations and self.mode == "pretrained":
            raise ResaError("--activations: --mode pretrained imports SAEs without training, so it reads no cache")

    def semantic_hash(self) -> str:
        """Hash of the fields that change results (a checkpoint is only resumed under the same hash)."""
        return sha256_text(json.dumps(dataclasses.asdict(self), sort_keys=True))[:16]


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "model": R1_DISTILL,
        "dataset": "still",
        "layers": "1-26",
        "hook": "resid_post",
        "expansion_factor": 64,
        "latents": 65_536,
        "k": 32,
        "optimizer": "signum",
        "lr": 2.5e-4,
        "batch_tokens": 16 * 2048,
        "tokens": None,
        "device": "auto",
        "model_dtype": "bfloat16",
        "buffer_tokens": 131_072,
        "pack": True,
        "max_seq_len": 2048,
    }
}
"""--preset paper: Appendix A (TopK k=32, 65,536 latents, Signum 2.5e-4 constant, one epoch, batch 16 sequences
of 2048 tokens, packed as sparsify packs them) on R1-Distill with STILL at the residual stream after decoder
layers 1..26 (the paper's 2nd..27th, Table 6). The authors' recipe gives both sae_expansion_factor 64 and
sae_num_latents 65536, and sparsify's num_latents wins (recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/train_sae.yaml:8-9);
so do ours."""


def check_latents(latents: int, k: int) -> None:
    """Refuse a dictionary size that is not a positive number of latents at least k, in one line."""
    if latents <= 0 or latents < k:
        raise ResaError(f"--latents {latents}: needs a positive number of latents, at least --k {k}")


def parse_seeds(seed: int | None, seeds: str | None, n_seeds: int | None) -> tuple[int | None, tuple[int, ...] | None]:
    """(`seed`, further `seeds`) from --seed, --seeds 'S,S,...' (the first becomes `seed`) or --n-seeds N (`seed`
    and the N-1 seeds after it); (seed, None) when neither is given."""
    if seeds is not None and n_seeds is not None:
        raise ResaError("--seeds and --n-seeds: give one of them")
    if seeds is not None:
        try:
            values = [int(p) for p in seeds.split(",") if p.strip()]
        except ValueError:
            values = []
        if not values:
            raise ResaError(f"--seeds {seeds!r}: accepted a list of integers like 0,1,2")
        if seed is not None and seed != values[0]:
            raise ResaError(f"--seed {seed} and --seeds {seeds}: --seeds starts with the run's seed; give one of them")
        return values[0], tuple(values[1:])
    if n_seeds is not None:
        if n_seeds < 1:
            raise ResaError(f"--n-seeds {n_seeds}: needs at least 1 seed")
        first = seed or 0
        return first, tuple(range(first + 1, first + n_seeds))
    return seed, None


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all' | 'A-B' | 'L,L,...' -> sorted layer list, each checked against the model."""
    spec = spec.strip()
    try:
        if spec == "all":
            layers = list(range(n_layers))
        elif "-" in spec and "," not in spec:
            lo, hi = (int(p) for p in spec.split("-"))
            layers = list(range(lo, hi + 1))
        else:
            layers = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ResaError(f"--layers {spec!r}: accepted 'all', a range like 1-26, or a list like 3,12,24") from None
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ResaError(f"--layers {spec!r}: layer {bad[0] if bad else '?'} is outside the model (0..{n_layers - 1})")
    return sorted(set(layers))


# --------------------------------------------------------------------------------------------- one layer


class LayerSAE(nn.Module):
    """Training state of one hookpoint's SAE: weights in scaled units, optimizer, firing statistics."""

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int, select_dtype: torch.dtype | None = None):
        super().__init__()
        self.select_dtype = select_dtype
        gen = torch.Generator().manual_seed(seed)
        enc = torch.randn(d_sae, d_in, generator=gen)
        enc /= enc.norm(dim=-1, keepdim=True)
        self.k = k
        self.enc = nn.Parameter(enc)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.dec = nn.Parameter(enc.clone())
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("since_fired", torch.zeros(d_sae, dtype=torch.long))
        self.register_buffer("tokens_seen", torch.tensor(0, dtype=torch.long))
        self.register_buffer("initialised_flag", torch.tensor(False))
        self.optimizer: torch.optim.Optimizer | None = None
        self.source_notes: list[str] = []
        """What `from_source` folded to start from a pretrained SAE (recorded in the exported metadata)."""

    def data_init(self, x_raw: Tensor, from_pretrained: bool) -> None:
        """Fix the input scale from the first buffer; from scratch, also put b_dec at the data mean."""
        with torch.no_grad():
            self.initialised_flag.fill_(True)
            self.scale.fill_(1.0 / x_raw.norm(dim=-1).mean().clamp_min(1e-8).item())
            if from_pretrained:  # pretrained weights are in raw units: move the biases to scaled units
                self.b_enc.mul_(self.scale)
                self.b_dec.mul_(self.scale)
            else:
                self.b_dec.copy_(x_raw.mean(0) * self.scale)

    @property
    def initialised(self) -> bool:
        """Whether `data_init` has run (it runs once, on the first buffer)."""
        return bool(self.initialised_flag)

    def make_optimizer(self, name: str, lr: float) -> None:
        """Adam (betas 0.9/0.999) or Signum (momentum 0.9), constant lr."""
        params = [self.enc, self.b_enc, self.dec, self.b_dec]
        self.optimizer = torch.optim.Adam(params, lr=lr) if name == "adam" else Signum(params, lr=lr)

    def step(self, x_raw: Tensor) -> float:
        """One optimizer step on raw activations [n, d]; returns the batch's fraction of variance explained."""
        x = x_raw * self.scale
        loss, values, indices, _ = reconstruction_loss(
            x, self.enc, self.b_enc, self.dec, self.b_dec, self.k, self.select_dtype
        )
        loss.backward()
        project_out_parallel_grad(self.dec)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        normalize_rows(self.dec.data)
        with torch.no_grad():
            fired = torch.zeros_like(self.since_fired, dtype=torch.bool)
            fired[indices[values > 0]] = True
            self.since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
            self.tokens_seen.add_(x.shape[0])
            variance = (x - x.mean(0)).pow(2).sum(-1).mean()
        return 1.0 - loss.item() / max(variance.item(), 1e-12)

    @classmethod
    def from_source(cls, sae, source: str, seed: int, select_dtype: torch.dtype | None = None) -> LayerSAE:
        """A trainer that starts from a loaded TopK SAE (SAELens, raw units) and computes what it computes
        (`to_training_form`); `source_notes` lists what was folded. `data_init` then moves it to scaled units,
        which also keeps the function."""
        notes = to_training_form(sae, source)
        layer_sae = cls(sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k, seed, select_dtype).to(sae.W_enc.device)
        with torch.no_grad():
            layer_sae.enc.copy_(sae.W_enc.T)
            layer_sae.b_enc.copy_(sae.b_enc)
            layer_sae.dec.copy_(sae.W_dec)
            layer_sae.b_dec.copy_(sae.b_dec)
            normalize_rows(layer_sae.dec.data)
        layer_sae.source_notes = notes
        return layer_sae

    def dead_fraction(self, window: int) -> float:
        """Fraction of latents that did not fire in the last `window` training tokens."""
        return float((self.since_fired >= window).float().mean())

    def export(self, metadata: dict) -> Any:
        """The trained SAE as a SAELens TopKSAE in raw units (the input scale folded into the biases)."""
        s = self.scale.item()
        return build_topk_sae(
            W_enc=self.enc.detach().T.contiguous(),
            b_enc=self.b_enc.detach() / s,
            W_dec=self.dec.detach(),
            b_dec=self.b_dec.detach() / s,
            k=self.k,
            metadata=metadata,
            rescale_acts_by_decoder_norm=True,  # the rows are unit norm (normalize_rows after every step)
        )

    def full_state(self) -> dict:
        """Weights, buffers and optimizer state (for checkpoints)."""
        return {"module": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_full_state(self, state: dict) -> None:
        """Inverse of `full_state`."""
        self.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


# --------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated bytes for one group of layers, and the group size chosen."""

    per_layer_sae: int
    per_layer_buffer: int
    step: int
    group_size: int
    available: int | None
    seeds: int = 1
    """SAEs per layer (one per seed), all beside the layer's one buffer."""

    def describe(self, n_layers: int) -> str:
        """One line for the log."""
        gib = 1024**3
        total = self.group_size * (self.seeds * self.per_layer_sae + self.per_layer_buffer) + self.step
        avail = f" of {self.available / gib:.1f} GiB available" if self.available else ""
        seeds = f" x {self.seeds} seeds" if self.seeds > 1 else ""
        return (
            f"memory plan: {self.per_layer_sae / gib:.2f} GiB per SAE{seeds} (weights, grads, optimizer) + "
            f"{self.per_layer_buffer / gib:.2f} GiB activation buffer per layer + {self.step / gib:.2f} GiB per step; "
            f"{self.group_size} of {n_layers} layers per forward pass = {total / gib:.2f} GiB{avail}"
        )


def _available_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


MEMORY_HEADROOM = 0.8
"""Fraction of the free memory a group of layers may plan to use (the rest absorbs allocator slack)."""


def plan_memory(cfg: SAETrainConfig, d_in: int, n_layers: int, device: torch.device,
                available: int | None = None) -> MemoryPlan:
    """Estimate memory per layer and choose how many layers share one forward pass; `available` (bytes free)
    is measured on `device` unless given (a plan for a machine other than this one)."""
    d_sae = cfg.latents_for(d_in)
    params = 2 * d_sae * d_in + d_sae + d_in
    optimizer_copies = 2 if cfg.optimizer == "adam" else 1
    per_sae = 4 * params * (2 + optimizer_copies)  # weights + grads + optimizer state, float32
    per_buffer = 4 * d_in * (cfg.buffer_tokens + cfg.seq_batch * cfg.max_seq_len)
    step = 4 * cfg.batch_tokens * d_sae * 2  # pre-activations and their top-k workspace
    available = _available_memory(device) if available is None else available
    if cfg.group_size is not None:
        group = cfg.group_size
    elif available is None:
        group = n_layers
    else:
        per_layer = len(cfg.all_seeds) * per_sae + per_buffer
        group = max(1, min(n_layers, int((MEMORY_HEADROOM * available - step) // per_layer)))
    return MemoryPlan(per_sae, per_buffer, step, max(1, min(group, n_layers)), available, len(cfg.all_seeds))


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TriggerData:
    """Tokenised trigger texts for training and held-out evaluation, with a fingerprint of what was used."""

    train: list[EncodedText]
    heldout: list[EncodedText]
    fingerprint: str
    n_examples: int
    prefix_len: int
    """Tokens every training text starts with (the system prompt): run once, not once per text (0 when packed)."""


def trigger_data(cfg: SAETrainConfig, subject: Subject) -> TriggerData:
    """Load the QA data, write it in the CoT-free template, split off the held-out examples, tokenise (the
    training texts packed into chunks with `cfg.pack`)."""
    if cfg.dataset == SYNTHETIC:
        # ~110-150 tokens per example with the R1 template; generate enough for the budget
        need = cfg.n_examples or (math.ceil((cfg.tokens or 100_000) / 60) + cfg.heldout)
        examples = load_qa(SYNTHETIC, limit=need, seed=cfg.seed)
    else:
        examples = load_qa(
            cfg.dataset,
            problem_column=cfg.problem_column,
            answer_column=cfg.answer_column,
            limit=cfg.n_examples,
        )
    if len(examples) <= cfg.heldout:
        raise ResaError(f"dataset {cfg.dataset!r}: {len(examples)} examples, but {cfg.heldout} are held out")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    shuffled = [examples[i] for i in order]
    texts = [format_trigger(e.problem, e.answer, cfg.template) for e in shuffled]
    encode = encode_packed if cfg.pack else encode_texts
    train = encode(subject.tokenizer, texts[cfg.heldout :], cfg.max_seq_len)
    return TriggerData(
        train=train,
        heldout=encode_texts(subject.tokenizer, texts[: cfg.heldout], cfg.max_seq_len),
        fingerprint=dataset_fingerprint(cfg.dataset, examples),
        n_examples=len(examples),
        prefix_len=0 if cfg.pack else shared_prefix_length(train),
    )


# --------------------------------------------------------------------------------------------- training


@dataclass
class StageIResult:
    """What a Stage I run produced."""

    run: Path
    sae_dirs: dict[int, Path]
    metrics: list[dict] = field(default_factory=list)
    seed_dirs: dict[int, dict[int, Path]] = field(default_factory=dict)
    """Further seeds (`SAETrainConfig.seeds`): seed -> layer -> SAE folder."""
    seed_metrics: dict[int, list[dict]] = field(default_factory=dict)
    """Further seeds: seed -> their held-out metrics rows."""
    tokens_per_layer: int = 0
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    """Of the wall time, the training itself (activations in, SAE steps; no loading, export or metrics)."""


def prepends_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token first when it adds special tokens (SAELens' prepend_bos)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _sae_metadata(cfg: SAETrainConfig, origin: dict, layer: int, tokens: int) -> dict:
    return {
        "model_name": origin["model"],
        "model_path": origin["model_path"],
        "hook_name": hook_name(cfg.hook, layer),
        "hook_layer": layer,
        "model_class_name": "HookedTransformer",
        "dataset_path": cfg.dataset,
        "dataset_fingerprint": origin["dataset_fingerprint"],
        "template": cfg.template,
        "packed": cfg.pack,
        "training_tokens": tokens,
        "mode": cfg.mode,
        "source": cfg.source,
        "source_hook": cfg.resolved_source_hook() if cfg.source else None,
        "seed": cfg.seed,
        "excluded_first_positions": 0 if cfg.keep_first else 1,
        "seqpos_slice": [None] if cfg.keep_first else [1, None],
        "exclude_special_tokens": False,
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "trainer": trainer_label(cfg),
        "select_precision": cfg.select_precision,
    }


class _Checkpoint:
    """Resumable state of a run: RUN/saes/.checkpoint-N/, tensors in safetensors and the rest in JSON
    (`checkpoints.save_state`). Each save is a new folder renamed in whole, and older ones are removed only after
    it: whenever the process dies, a complete checkpoint is on disk. Across launcher ranks each rank writes its own
    state to .checkpoint-N.ranks/rank-R/, and rank 0 renames the folder to .checkpoint-N once all ranks have
    written theirs; it resumes only under the same number of ranks."""

    def __init__(self, run: Path, cfg_hash: str, shard: Shard = ONLY):
        self.root = run / SAES_DIR
        self.cfg_hash = cfg_hash
        self.shard = shard

    def saved(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        found = [p for p in self.root.glob(f"{CHECKPOINT}-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))

    def load(self) -> dict | None:
        refuse_pickled(self.root / PICKLED_CHECKPOINT, "delete it to start this run over, or use another --out")
        if self.shard.index == 0:  # a save that ranks never finished (no rank writes before rank 0 has loaded)
            for staged in self.root.glob(f"{CHECKPOINT}-*.ranks"):
                shutil.rmtree(staged, ignore_errors=True)
        saved = self.saved()
        if not saved:
            return None
        ranks = len(list(saved[-1].glob(f"{RANK_STATE}-*")))
        if ranks != (self.shard.count if self.shard.sharded else 0):
            by, how = (f"{ranks} launcher ranks", f"--nproc-per-node {ranks}") if ranks else ("one process",
                                                                                               "no launcher")
            this = self.shard.label if self.shard.sharded else "one process"
            raise ResaError(f"{saved[-1]} was written by {by}, this is {this}: resume it with {how}, or delete it "
                            "to start over")
        state = load_state(saved[-1] / f"{RANK_STATE}-{self.shard.index}" if ranks else saved[-1])
        if not isinstance(state, dict) or state.get("cfg_hash") != self.cfg_hash:
            raise ResaError(
                f"{self.root.parent} holds an interrupted Stage I run with a different configuration; "
                f"use another --out, or delete {saved[-1]} to start over"
            )
        return state

    def save(self, state: dict) -> None:
        saved = self.saved()
        number = int(saved[-1].name.rsplit("-", 1)[1]) + 1 if saved else 0
        final = self.root / f"{CHECKPOINT}-{number}"
        staged = final.with_name(f"{final.name}.ranks") if self.shard.sharded else final
        with atomic_dir(staged / f"{RANK_STATE}-{self.shard.index}" if self.shard.sharded else final) as tmp:
            save_state(tmp, {**state, "cfg_hash": self.cfg_hash})
        if self.shard.sharded:
            barrier("writing a checkpoint")
            if self.shard.index == 0:
                os.replace(staged, final)
        if self.shard.index == 0:
            for old in saved:
                shutil.rmtree(old, ignore_errors=True)
        if self.shard.sharded:
            barrier("writing a checkpoint")  # the next save numbers its folder from what is on disk now

    def clear(self) -> None:
        for folder in self.saved():
            shutil.rmtree(folder, ignore_errors=True)


def _train_group(
    cfg: SAETrainConfig,
    feed: ActivationFeed,
    layers: list[int],
    checkpoint: _Checkpoint,
    state: dict | None,
    progress,
    done: dict[int, float],
) -> dict[tuple[int, int], LayerSAE]:
    """Train the SAEs of `layers` together, one per (layer, seed) of `cfg.all_seeds`: each batch of `feed` (one
    forward pass, or a read from a cache) feeds every layer's buffer, and every seed's SAE of a layer steps on the
    same shuffled minibatches. Across launcher ranks `layers` are this rank's (maybe none: it still harvests its
    rows for the others) and every rank goes through the same batches, flushes and checkpoints."""
    d_in = feed.d_model
    device = feed.device
    saes: dict[tuple[int, int], LayerSAE] = {}
    for layer in layers:
        select_dtype = _select_dtype(cfg, device)
        if cfg.mode == "finetune":
            source = load_source_sae(cfg.source, layer, cfg.resolved_source_hook())
            _check_source(source, d_in, cfg.source)
            sae = LayerSAE.from_source(source.to(device), cfg.source, cfg.seed * 1000 + layer, select_dtype)
            log.info("layer %d: starting from %s (%d latents, k %d); %s", layer, source.cfg.metadata.source_path,
                     source.cfg.d_sae, source.cfg.k, "; ".join(sae.source_notes) or "nothing to fold")
            saes[layer, cfg.seed] = sae
        elif cfg.trainer == "saelens":
            for seed in cfg.all_seeds:
                saes[layer, seed] = SAELensLayer(cfg, d_in, cfg.latents_for(d_in), seed * 1000 + layer, device,
                                                 DEAD_WINDOW)
        else:
            for seed in cfg.all_seeds:
                saes[layer, seed] = LayerSAE(d_in, cfg.latents_for(d_in), cfg.k, seed * 1000 + layer,
                                             select_dtype).to(device)
    for sae in saes.values():
        sae.make_optimizer(cfg.optimizer, cfg.lr)

    budget = cfg.tokens if cfg.tokens is not None else math.inf
    pending: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    start, tokens_done, flushes, pending_tokens = 0, 0, 0, 0
    if state is not None and state.get("group") == layers:
        for key, sae in saes.items():
            sae.load_full_state(state["saes"][key])
        for layer in layers:
            pending[layer] = [state["pending"][layer].to(device)]
        start, tokens_done, flushes = state["next_text"], state["tokens_done"], state["flushes"]
        pending_tokens = state["pending_tokens"]
        progress.update(tokens_done)
        log.info("resuming layers %s at %d tokens", layers, tokens_done)

    def flush(next_text: int, final: bool) -> None:
        """Shuffle the pooled activations and step every SAE on whole batches; a remainder waits for the next
        flush (only the very last flush of a run takes a short final batch)."""
        nonlocal pending_tokens, tokens_done, flushes
        available = int(min(pending_tokens, budget - tokens_done))
        last = final or available >= budget - tokens_done
        take = available if last else available - available % cfg.batch_tokens
        perm = torch.randperm(pending_tokens, generator=torch.Generator().manual_seed(cfg.seed + 7919 * flushes))
        perm = perm.to(device)
        for layer in layers:
            acts = torch.cat(pending[layer]).float()[perm]
            for seed in cfg.all_seeds:
                sae = saes[layer, seed]
                if sae.tokens_seen.item() == 0 and not sae.initialised:
                    sae.data_init(acts[:take], from_pretrained=cfg.mode == "finetune")
                for i in range(0, take, cfg.batch_tokens):
                    ev = sae.step(acts[i : min(i + cfg.batch_tokens, take)])
            pending[layer] = [] if last else [acts[take:]]
            progress.set_postfix(layer=layer, ev=f"{ev:.3f}", refresh=False)
        tokens_done += take
        progress.update(take)
        pending_tokens = 0 if last else pending_tokens - take
        flushes += 1
        if cfg.checkpoint_every and flushes % cfg.checkpoint_every == 0 and not last:
            checkpoint.save(
                {
                    "done": done,
                    "group": layers,
                    "saes": {key: sae.full_state() for key, sae in saes.items()},
                    "pending": {layer: torch.cat(acts).cpu() for layer, acts in pending.items()},
                    "next_text": next_text,
                    "pending_tokens": pending_tokens,
                    "tokens_done": tokens_done,
                    "flushes": flushes,
                }
            )

    for first, chunks, n in feed.batches(start):
        for layer in layers:
            pending[layer].extend(chunks[layer])
        pending_tokens += n
        if pending_tokens >= min(cfg.buffer_tokens, budget - tokens_done):
            flush(next_text=first + cfg.seq_batch, final=False)
        if tokens_done >= budget:
            break
    if pending_tokens and tokens_done < budget:
        flush(next_text=-1, final=True)  # the last flush saves no checkpoint, so its resume point is never read
    if cfg.tokens is not None and tokens_done < cfg.tokens:
        log.warning("dataset exhausted after %d of %d tokens (one epoch)", tokens_done, cfg.tokens)
    return saes


def _select_dtype(cfg: SAETrainConfig, device: torch.device) -> torch.dtype | None:
    return fast_select_dtype(device) if cfg.select_precision == "auto" else SELECT_PRECISIONS[cfg.select_precision]


def _check_source(sae, d_in: int, source: str | None) -> None:
    if sae.cfg.d_in != d_in:
        raise ResaError(f"--from {source!r}: SAE d_in {sae.cfg.d_in} does not match the model's d_model {d_in}")
    if getattr(sae.cfg, "k", None) is None:
        raise ResaError(f"--from {source!r}: not a TopK SAE ({type(sae).__name__}); accepted: TopK SAEs")


def _sae_parts(sae_obj) -> tuple[dict, dict[str, Tensor]]:
    """A SAELens SAE as (cfg dict, CPU state dict): what travels between ranks (the module itself does not
    pickle)."""
    return {**sae_obj.cfg.to_dict(), "device": "cpu"}, {key: value.cpu() for key, value in sae_obj.state_dict().items()}


def _sae_from_parts(parts: tuple[dict, dict[str, Tensor]] | None):
    """Inverse of `_sae_parts` (None stays None: ranks other than 0 receive nothing)."""
    if parts is None:
        return None
    from sae_lens import SAE

    sae_obj = SAE.from_dict(parts[0])
    sae_obj.load_state_dict(parts[1])
    return sae_obj


def _export(sae_obj, path: Path) -> Path:
    with atomic_dir(path) as tmp:
        sae_obj.save_model(tmp)
    return path


def train_saes(
    cfg: SAETrainConfig, run: str | Path, subject: Subject | None = None, resume: bool = False
) -> StageIResult:
    """Train (or import) one SAE per selected layer into `run`/saes, then measure their held-out quality. With
    `cfg.activations` the SAEs train from that cache and the model is loaded only for the metrics. As one of
    several launcher ranks (torchrun, accelerate launch) the rank trains its share of the layers (`sae.ranks`)
    and sends each finished SAE to rank 0, which alone writes the SAE folders, measures them all and writes the
    metrics and the manifest; the other ranks return a result without metrics."""
    cfg.check()
    shard = launcher_shard()
    if shard.sharded and cfg.mode == "pretrained":
        raise ResaError(f"--mode pretrained under {shard.count} launcher ranks: importing SAEs trains nothing to "
                        "spread; run it in one process")
    with process_group(shard, resolve_device(cfg.device)):
        return _stage1(cfg, Path(run), subject, resume, shard)


def _stage1(cfg: SAETrainConfig, run: Path, subject: Subject | None, resume: bool, shard: Shard) -> StageIResult:
    from tqdm.auto import tqdm

    talks = shard.index == 0
    t0 = time.time()
    cache = ActivationCache(cfg.activations) if cfg.activations else None
    if cache is None:
        subject = subject or load_subject(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
        layers = parse_layers(cfg.layers, subject.facts.n_layers)
        data = trigger_data(cfg, subject)
        origin = {"model": subject.spec, "model_path": str(subject.path), "dataset_fingerprint": data.fingerprint}
        device, d_model = subject.device, subject.hook_width(cfg.hook)
    else:
        layers = parse_layers(cfg.layers, cache.manifest["n_layers"])
        cache.check(cfg, layers)
        origin = {key: cache.manifest[key] for key in ("model", "model_path", "dataset_fingerprint")}
        device, d_model = resolve_device(cfg.device), cache.d_model
    owners = layer_owners(layers, shard)
    checkpoint = _Checkpoint(run, cfg.semantic_hash(), shard)
    state = checkpoint.load()
    if resume and state is None:
        raise ResaError(f"--resume: {run} has no interrupted Stage I run to continue")
    plan = plan_memory(cfg, d_model, most_per_rank(owners), device)
    if talks:
        print(plan.describe(most_per_rank(owners)) + (f" on each of {shard.count} ranks" if shard.sharded else ""))
    if talks and cfg.mode != "scratch":
        print(f"--from {cfg.source}: the {cfg.resolved_source_hook()} SAEs"
              f"{' (--from-hook)' if cfg.resolved_source_hook() != cfg.hook else ''}, "
              f"{'fine-tuned' if cfg.mode == 'finetune' else 'imported'} at {cfg.hook}; their size and k replace "
              f"--latents/--k")

    done: dict[tuple[int, int], float] = dict(state["done"]) if state else {}
    """Finished (layer, seed) SAEs -> their dead fraction over the training window."""

    def folder(key: tuple[int, int]) -> Path:
        return sae_dir(run, cfg.hook, key[0], None if key[1] == cfg.seed else key[1])

    dirs: dict[tuple[int, int], Path] = {key: folder(key) for key in done}
    todo = [layer for layer in layers if any((layer, seed) not in done for seed in cfg.all_seeds)]
    tokens_trained, train_seconds = 0, 0.0
    if cfg.mode == "pretrained":

        for layer in todo:
            sae = load_source_sae(cfg.source, layer, cfg.resolved_source_hook())
            _check_source(sae, subject.hook_width(cfg.hook), cfg.source)
            for key, value in _sae_metadata(cfg, origin, layer, 0).items():
                setattr(sae.cfg.metadata, key, value)
            dirs[layer, cfg.seed] = _export(sae, folder((layer, cfg.seed)))
    else:
        # the ranks go through the same groups, each of them training its own layers of a group
        size = min(gather_objects(plan.group_size, "planning")) if shard.sharded else plan.group_size
        groups = [todo[i : i + size * shard.count] for i in range(0, len(todo), size * shard.count)]
        budget = cfg.tokens
        for group in groups:
            first = hook_name(cfg.hook, group[0])
            desc = f"SAEs {first}..{group[-1]}" if len(group) > 1 else first
            if len(cfg.all_seeds) > 1:
                desc += f" x {len(cfg.all_seeds)} seeds"
            mine = [layer for layer in group if owners[layer] == shard.index]
            if cache:
                feed = cache.feed(mine, device)
            else:
                harvest = dict(subject=subject, hook=cfg.hook, layers=group, texts=data.train,
                               prefix_len=data.prefix_len, seq_batch=cfg.seq_batch, exclude=0 if cfg.keep_first else 1)
                feed = RoutedFeed(**harvest, owners=owners, shard=shard) if shard.sharded else ModelFeed(**harvest)
            started = time.time()
            with tqdm(total=budget, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True,
                      disable=not talks) as progress:
                trained = _train_group(cfg, feed, mine, checkpoint, state, progress, done)
            train_seconds += time.time() - started
            for layer, seed in [(layer, seed) for layer in group for seed in cfg.all_seeds]:
                sae, exported = trained.get((layer, seed)), None
                if sae is not None:  # this rank's SAE
                    tokens_trained = int(sae.tokens_seen)
                    meta = {**_sae_metadata(cfg, origin, layer, tokens_trained), "seed": seed,
                            "source_folds": sae.source_notes}
                    exported = sae.export(meta)
                    done[layer, seed] = sae.dead_fraction(min(DEAD_WINDOW, max(tokens_trained, 1)))
                if shard.sharded:  # only rank 0 writes the run's files: the owner sends it the SAE (on the CPU)
                    exported = _sae_from_parts(to_rank_zero(
                        _sae_parts(exported) if exported is not None else None, shard,
                        f"sending the SAE of {hook_name(cfg.hook, layer)} (seed {seed}) to rank 0"))
                if talks:
                    dirs[layer, seed] = _export(exported, folder((layer, seed)))
            if shard.sharded:  # every rank learns which SAEs are finished (rank 0 has written them by now)
                for finished, tokens in gather_objects((done, tokens_trained), "collecting finished layers"):
                    done.update(finished)
                    tokens_trained = max(tokens_trained, tokens)
                dirs.update({key: folder(key) for key in done})
            state = None
            if group is not groups[-1]:
                checkpoint.save({"done": done, "group": None})
        if talks:
            checkpoint.clear()
    if not talks:  # rank 0 measures every layer's SAEs and writes the run's records
        return StageIResult(run, {layer: dirs[layer, cfg.seed] for layer in layers}, tokens_per_layer=tokens_trained,
                            wall_seconds=time.time() - t0, train_seconds=train_seconds)

    if cache is not None:  # the metrics need the model and the held-out texts, which the cache does not hold
        subject = subject or load_subject(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
        data = trigger_data(cfg, subject)
        if data.fingerprint != origin["dataset_fingerprint"]:
            log.warning("dataset %s changed since the cache was harvested; held-out metrics use today's texts",
                        cfg.dataset)
    context = chunk_length(subject.tokenizer, cfg.max_seq_len) if cfg.pack else cfg.max_seq_len
    facts = {"prepend_bos": prepends_bos(subject.tokenizer), "context_size": context}
    metrics: dict[int, list[dict]] = {}
    novel = novel_texts(subject.tokenizer, cfg.heldout, cfg.template, cfg.max_seq_len)
    for seed in cfg.all_seeds:
        final = {layer: load_sae(dirs[layer, seed], device=str(subject.device)) for layer in layers}
        firing: dict[int, Tensor] = {}
        # the spliced-in figures (a forward pass per layer) for the run's seed only: further seeds are there to be
        # matched, and their reconstruction figures say whether they are as good
        metrics[seed] = evaluate_saes(subject, final, cfg.hook, data.heldout, keep_first=cfg.keep_first,
                                      firing=firing, splice=seed == cfg.seed)
        add_novel_quality(metrics[seed], evaluate_saes(subject, final, cfg.hook, novel, keep_first=cfg.keep_first,
                                                       splice=False))
        for row in metrics[seed]:
            record_firing(dirs[row["layer"], seed], firing[row["layer"]], row["heldout_tokens"], facts)
            row["sae_path"] = run_relative(dirs[row["layer"], seed], run)
            row["dead_fraction_training"] = done.get((row["layer"], seed))
        write_metrics(run, metrics[seed], None if seed == cfg.seed else seed)
    wall = time.time() - t0
    record_stage(
        run,
        "train-saes",
        {
            "config": dataclasses.asdict(cfg),
            **origin,
            "activations": str(cache.path) if cache else None,
            "layers": layers,
            "seeds": list(cfg.all_seeds),
            "world_size": shard.count,
            "rank_of_layer": {str(layer): rank for layer, rank in owners.items()},
            "tokens_per_layer": tokens_trained,
            "wall_seconds": round(wall, 1),
            "train_seconds": round(train_seconds, 1),
            "device": str(subject.device),
            "select_precision": str(_select_dtype(cfg, subject.device) or torch.float32).removeprefix("torch."),
        },
    )
    extra = [seed for seed in metrics if seed != cfg.seed]
    return StageIResult(
        run,
        {layer: dirs[layer, cfg.seed] for layer in layers},
        metrics[cfg.seed],
        {seed: {layer: dirs[layer, seed] for layer in layers} for seed in extra},
        {seed: metrics[seed] for seed in extra},
        tokens_trained,
        wall,
        train_seconds,
    )
