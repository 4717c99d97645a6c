"""Stage I's one declaration of its options: `SAETrainConfig` (a docstring under every field, which is also the
option's `--help`), its presets, the choices its fields accept, and the parsers of its specs (`parse_seeds`).

Layer specs ("all", "1-26", "3,12,24") are parsed by `numbering.parse_layers`, which every stage shares.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from resa_interp.data import COT_FREE_TEMPLATES
from resa_interp.errors import ResaError, check_choice
from resa_interp.model import canonical_hook
from resa_interp.presets import with_preset
from resa_interp.runs import sha256_text
from resa_interp.sae.activations import ActivationCache
from resa_interp.tracking import check_report_to

MODES = ("scratch", "finetune", "pretrained")
OPTIMIZERS = ("adam", "signum")
SELECT_PRECISIONS = ("auto", "bfloat16", "float32")
TRAINERS = ("fused", "saelens")
ARCHITECTURES = {
    "topk": "topk",
    "batchtopk": "batchtopk",
    "jumprelu": "jumprelu",
    "matryoshka": "matryoshka_batchtopk",
    "standard": "standard",
    "gated": "gated",
}
"""--architecture -> SAELens' training architecture name."""
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka")
"""Architectures whose sparsity is set by k (the others by `sparsity_coefficient`)."""
R1_DISTILL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


@dataclass
class SAETrainConfig:
    """Everything that determines a Stage I run (recorded in the manifest and every SAE's metadata)."""

    model: str | None = None
    """Source model: an HF directory, a .gguf file, a hub id (org/name) or 'smollm2-135m'; None is the embedded
    SmolLM2-135M-Instruct."""
    dataset: str = "synthetic"
    """Trigger data: 'synthetic' (built-in verified math), 'still', 'deepscaler', a hub id or a local
    .json/.jsonl/.csv/.parquet file."""
    problem_column: str | None = None
    """Override for the question column of the dataset."""
    answer_column: str | None = None
    """Override for the answer column of the dataset."""
    template: str = "r1"
    """CoT-free template: 'r1' (the authors' template and R1 system prompt, whitespace included), 'r1-paper' (the
    printed one-line system prompt) or 'short' (the paper's section 2.1 template)."""
    layers: str = "all"
    """Layers to train (hook indices, blocks.N): 'all', a range 'A-B' (inclusive), or a list 'L,L,...'."""
    hook: str = "resid_post"
    """Hookpoint: 'resid_post' (output of decoder layer l, the authors' code), 'mlp_out' (the paper's text),
    'resid_pre', 'resid_mid', 'attn_out', or any TransformerLens hook name pattern with the layer as {l}
    (blocks.{l}.attn.hook_z, blocks.{l}.mlp.hook_post, ...)."""
    source_hook: str | None = None
    """Hookpoint the --from SAEs were trained at, when it differs from `hook`; None: the same as `hook`. The
    EleutherAI R1-Distill release has only MLP-output SAEs (layers.N.mlp/); the authors fine-tuned those on the
    residual stream: --mode finetune --from-hook mlp_out --hook resid_post."""
    mode: str = "scratch"
    """'scratch', 'finetune' (start from --from and continue on the trigger data) or 'pretrained' (import --from as
    it is)."""
    source: str | None = None
    """Pretrained SAEs (--from): a SAELens folder or run, an EleutherAI sparsify folder (layers.N/), or SAELens'
    RELEASE:SAE_ID."""
    k: int = 32
    """Active latents per token (TopK)."""
    expansion_factor: int = 8
    """Latents per model dimension (latents = expansion_factor x d_model) unless `latents` is given. 8 keeps the
    30-layer CPU default in minutes."""
    latents: int | None = None
    """Dictionary size as a number, e.g. 65536 (the paper, Appendix A); overrides `expansion_factor`, as sparsify's
    num_latents does. At least `k`. Fine-tuning keeps the source's size."""
    tokens: int | None = 98_304
    """Training tokens per SAE (counted positions); None: one epoch over the dataset."""
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
    """Tokens per sequence: texts are truncated to it; with `pack`, the chunk length."""
    keep_first: bool = False
    """Train on the first (sink) position too; by default it is excluded."""
    n_examples: int | None = None
    """Examples to draw from the dataset (synthetic: generated); None: as many as the token budget needs."""
    heldout: int = 16
    """Held-out examples for the quality metrics (never trained on)."""
    group_size: int | None = None
    """Layers trained together from one shared forward pass; None: as many as fit in memory."""
    checkpoint_every: int = 4
    """Save a resumable checkpoint every N flushed buffers (0: never)."""
    seed: int = 0
    """Seed for data order, initialisation and shuffling (same seed, same SAEs on CPU)."""
    seeds: tuple[int, ...] = ()
    """More SAEs per layer that differ from `seed`'s only in their initialisation seed (--seeds 0,1,2 gives seed 0
    and seeds (1, 2)): every batch of the one forward pass, shuffled once, steps them all. `seed`'s SAEs stay at
    RUN/saes/<hook_name>/, the others go to RUN/saes/seed-<s>/<hook_name>/ (`features` matches them)."""
    device: str = "cpu"
    """Where the model and SAEs run: cpu, cuda, cuda:N or auto (CUDA when present; under a launcher each rank's own
    GPU)."""
    model_dtype: str = "float32"
    """dtype of the source model: float32, bfloat16 or float16 (SAEs always train in float32)."""
    select_precision: str = "auto"
    """Precision of the dense product that picks the top-k latents: 'auto' (bfloat16 where the hardware has
    it natively, CUDA or AMX/AVX512-BF16 CPUs), 'bfloat16' or 'float32'. Selected values and all gradients are
    always float32."""
    pack: bool = False
    """Pack the training texts as the authors' code does (sparsify's chunk_and_tokenize): joined with EOS and
    cut into chunks of exactly `max_seq_len` tokens (or the tokenizer's model_max_length when shorter), the
    remainder of every 2048 texts dropped. Off: one text per sequence, padded. Held-out texts stay unpacked."""
    trainer: str = "fused"
    """'fused' (our TopK kernel, the default and fastest) or 'saelens' (SAELens' own training SAEs and trainer step
    on the same activations, `sae.saelens_trainer`; from scratch only, Adam)."""
    architecture: str = "topk"
    """SAE architecture with --trainer saelens: topk, batchtopk, jumprelu, matryoshka (batchtopk), standard or gated
    (the fused trainer is TopK only). The k-architectures use `k`; jumprelu, standard and gated
    `sparsity_coefficient`."""
    sparsity_coefficient: float | None = None
    """--trainer saelens, jumprelu/standard/gated: the sparsity penalty's coefficient (l0 for jumprelu, l1 for
    standard and gated); None: SAELens' default. The k-architectures use `k`."""
    activations: str | None = None
    """Train from this activation cache (`cache-activations`) instead of forward passes; the model is loaded only
    for the held-out metrics at the end. The cache must hold this model, hook and layers and the same data
    settings, which default to the cache's."""
    report_to: str = "none"
    """Experiment tracking: 'wandb' (a run under OUT/wandb/; WANDB_MODE=offline works without a network),
    'tensorboard' (OUT/tensorboard/) or 'none'. Per step each SAE's loss, explained variance, L0, dead fraction,
    lr and grad norm, with tokens/s; the config; the held-out metrics at the end (extra 'track'). The same
    curves are in OUT/saes/train_log.jsonl either way."""

    @classmethod
    def from_options(cls, preset: str | None = None, **given: Any) -> SAETrainConfig:
        """The config of a command line: the fields' defaults, then `PRESETS[preset]`, then (with `activations`)
        the cache's data settings (`ActivationCache.defaults`), then every `given` value that is not None.

        Two rules of the options: an `expansion_factor` given without `latents` replaces the preset's `latents`
        (which would otherwise override it), and `tokens=0` means one epoch over the dataset (None)."""
        tokens = given.pop("tokens", None)
        drop = ("latents",) if given.get("expansion_factor") is not None and given.get("latents") is None else ()
        if preset is not None:
            check_choice("--preset", preset, PRESETS)
        activations = given.get("activations")
        base = {**PRESETS.get(preset, {}), **(ActivationCache(activations).defaults() if activations else {})}
        cfg = with_preset(cls, {"base": base}, "base", drop, **given)
        if tokens is not None:
            cfg.tokens = tokens or None
        return cfg

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
        check_choice("--template", self.template, COT_FREE_TEMPLATES)
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
        check_report_to(self.report_to)

    def semantic_hash(self) -> str:
        """Hash of the fields that change results (a checkpoint is only resumed under the same hash); where the run
        reports (`report_to`) does not."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "report_to"}
        return sha256_text(json.dumps(fields, sort_keys=True))[:16]


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
