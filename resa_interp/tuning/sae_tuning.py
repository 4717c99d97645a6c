"""Stage II, SAE-Tuning (paper section 2.1 and Appendix A): a frozen SAE is spliced into the target model at
the hookpoint it was trained on, and LoRA adapters are trained so that the spliced model's next-token
distributions match the untouched model's, KL(p_teacher || p_student). Afterwards the SAE is gone: the
adapter is saved, and merged into the target's weights for ordinary inference.

Teacher: the target with adapters disabled and no SAE, without gradients. Student: the target with the SAE
spliced in (`model.splice.spliced`) and adapters on. Data: CoT-free elicitation text (`data.templates.format_trigger`)
from question/answer pairs (`data.qa.load_qa`), one sequence per micro-batch, no padding: one text, or with `pack`
one full chunk of the EOS-joined text stream, as the authors' code trains (`data.packing`). With `no_sae` the
same LoRA is trained with plain next-token cross-entropy on the same text: the paper's CoT-free SFT baseline.

Runs under `accelerate launch` (DDP: each process takes every world-th example); checkpoints hold the
adapter, optimizer, schedule and every process's RNG state, and the data order is a pure function of the
seed, so `resume` continues to the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from resa_interp.checkpoints import STATE, load_state, refuse_pickled, save_state
from resa_interp.data.packing import pack_texts
from resa_interp.data.qa import dataset_fingerprint, load_qa
from resa_interp.data.templates import TEMPLATES, format_trigger
from resa_interp.errors import ResaError, check_choice
from resa_interp.model.adapters import attach, save_adapter
from resa_interp.model.hooks import MLP_NAMES, check_splice_hook, decoder_layers, parse_hook_name, splice_point
from resa_interp.model.loading import resolve_model_path
from resa_interp.model.splice import rewrite_at, spliced
from resa_interp.model.subject import load_subject
from resa_interp.presets import with_preset
from resa_interp.runs import atomic_dir, atomic_write_json, atomic_write_text, record_stage, run_relative
from resa_interp.sae.folders import check_sae_fits, load_sae, sae_dir
from resa_interp.sae.reconstruction import SAEReconstruction

if TYPE_CHECKING:
    from accelerate import Accelerator
    from sae_lens import SAE

    from resa_interp.model.subject import Subject

LORA_TARGETS = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "attn+mlp": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
"""Named LoRA target sets: the paper's table (query, key, value, dense) and the authors' code (+ MLP)."""
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
"""Names a decoder layer gives its attention across transformers' causal LMs."""
KL_REDUCTIONS = ("token", "batchmean")
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
STAGE = "tune"
_CONFIG_FILE = "tune_config.json"
_NOT_COMPARED_ON_RESUME = ("resume", "save_every", "device")


@dataclass(frozen=True)
class TuneConfig:
    """Everything that defines one SAE-Tuning (or `no_sae` SFT) run. Defaults are the paper's Appendix A."""

    model: str | None = None
    """Target model spec (HF folder, .gguf, hub id); None is the embedded SmolLM2-135M-Instruct."""
    sae: str | None = None
    """SAELens SAE folder to splice in. Alternative to `saes_run` + `layer`; unused with `no_sae`."""
    saes_run: str | None = None
    """Stage I run directory; the SAE is `saes_run/saes/<hook_name(hook, layer)>`."""
    layer: int | None = None
    """Layer of the hookpoint. With `sae` it is optional (read from the SAE's metadata) and checked."""
    hook: str = "resid_post"
    """'resid_post' (output of decoder layer `layer`, the authors' code), 'mlp_out' (its MLP, the paper's text), or
    another hook with an HF module to splice at (`model.hooks.SPLICE_HOOKS`)."""
    dataset: str = "synthetic"
    """Elicitation data: 'synthetic', 'still', 'deepscaler', a hub id or a local json/jsonl/csv/parquet file."""
    problem_column: str | None = None
    """Column with the question (default: matched by common names)."""
    answer_column: str | None = None
    """Column with the verified final answer (default: matched by common names)."""
    limit: int | None = None
    """Use only the first `limit` question/answer pairs (None: all)."""
    template: str = "r1"
    """Elicitation template: 'r1' (R1 system prompt + User/Assistant, the authors' code) or 'short' (the
    paper's text)."""
    max_length: int = 2048
    """Sequences are truncated to this many tokens; with `pack`, the chunk length (the authors' 2048)."""
    pack: bool = False
    """Pack the texts as the authors' code does (sparsify's chunk_and_tokenize): joined with EOS and cut into
    chunks of exactly `max_length` tokens, the remainder of every 2048 texts dropped; an 'example' is then a
    chunk. Off: one text per sequence."""
    epochs: int = 2
    """Passes over the data (paper: 2). Ignored when `steps` is set."""
    steps: int | None = None
    """Optimizer steps in total, cycling through the data as needed (overrides `epochs`)."""
    lr: float = 1e-6
    """Peak AdamW learning rate (paper: 1e-6)."""
    min_lr_rate: float = 0.1
    """The cosine schedule ends at `lr * min_lr_rate` (transformers' cosine_with_min_lr)."""
    warmup_ratio: float = 0.0
    """Fraction of the steps spent warming the learning rate up linearly from 0."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (paper: 0.9, 0.999)."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default, which the authors' code keeps)."""
    lora_r: int = 32
    """LoRA rank (paper: 32)."""
    lora_alpha: int = 128
    """LoRA alpha (paper: 128); the update is B @ A * alpha / r."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input (paper: 0.05)."""
    lora_targets: tuple[str, ...] = LORA_TARGETS["attn"]
    """Module names that get adapters (paper: q, k, v, o projections; the authors' code adds the MLP's)."""
    grad_accum: int = 1
    """Micro-batches (sequences) per optimizer step and process."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this total norm (the authors' code: 1.0)."""
    kl_reduction: str = "token"
    """'token': KL averaged over the sequence's positions. 'batchmean': summed over positions and divided by
    the batch size only, as the authors' code does (so long sequences weigh more)."""
    detach_sae: bool = False
    """Stop gradients at the SAE's input, as the authors' code does (its hook runs under no_grad), so only
    layers after the hookpoint adapt. Default: gradients flow through the frozen SAE, as the paper describes."""
    keep_first: int = 1
    """The first positions keep their clean activation (SAEs are trained without the sink position)."""
    no_sae: bool = False
    """The CoT-free SFT baseline: same data and LoRA, next-token cross-entropy, no SAE and no teacher."""
    save_every: int | None = 500
    """Save a checkpoint every this many optimizer steps (the authors' code: 500); None: only at the end."""
    resume: bool = False
    """Continue from the last checkpoint in the output directory."""
    seed: int = 42
    """Seed of LoRA initialisation, dropout and data order (the authors' recipe: 42)."""
    shuffle: bool = True
    """Shuffle the data every epoch (seeded); False keeps the dataset's order, as the authors' code."""
    device: str = "auto"
    """'auto' (CUDA if present, or each process's device under accelerate launch), 'cpu' or 'cuda'."""
    dtype: str = "auto"
    """Model weights' dtype: 'auto' is bfloat16 on CUDA and float32 on CPU. Adapters train in float32."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON."""
        return asdict(self)

    def check(self) -> None:
        """One-line errors for settings no run can use (before any model or data is loaded)."""
        check_choice("KL reduction", self.kl_reduction, KL_REDUCTIONS)
        check_choice("--template", self.template, TEMPLATES)
        for name in ("grad_accum", "lora_r", "max_length"):
            if getattr(self, name) < 1:
                raise ResaError(f"{name} {getattr(self, name)} must be at least 1")
        if self.steps is None and self.epochs < 1 or self.steps is not None and self.steps < 1:
            raise ResaError("the run needs at least one step: --steps N >= 1 or --epochs E >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ResaError(f"device {self.device!r}: accepted auto, cpu, cuda (one GPU per process)")


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "dataset": "still",
        "layer": 12,
        "epochs": 2,
        "lr": 1e-6,
        "pack": True,
    },
    "cpu": {"dataset": "synthetic", "layer": 12, "limit": 64, "steps": 60, "lr": 1e-4, "save_every": 30},
}
"""'paper': R1-Distill target, STILL, layer 12, Appendix A, packed 2048-token chunks as the authors' code (needs a
GPU and the hub). 'cpu': one text per sequence, the embedded
model on 64 synthetic pairs for 60 steps at lr 1e-4, where the paper's 1e-6 would move the KL too little to
see in a few minutes."""


def preset_config(preset: str | None, **overrides: Any) -> TuneConfig:
    """A config from a named preset (None: the paper's Appendix A defaults), then `overrides` (None values skipped)."""
    # an SAE folder names its own layer; the preset's would contradict it
    drop = ("layer",) if overrides.get("sae") is not None else ()
    return with_preset(TuneConfig, PRESETS, preset, drop, **overrides)


def lora_targets(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'attn' | 'attn+mlp' | module names (a list, or one comma-separated string) -> module names."""
    if isinstance(spec, str):
        if spec in LORA_TARGETS:
            return LORA_TARGETS[spec]
        spec = [s for s in spec.split(",")]
    names = tuple(s.strip() for s in spec if s.strip())
    if not names:
        raise ResaError(f"LoRA targets {spec!r}: none given; accepted: {', '.join(LORA_TARGETS)} or module names")
    return names


def model_lora_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    """`targets` where the model has modules of those names; a named set (`LORA_TARGETS`) on a model that names
    its projections otherwise (GPT-2's c_attn, GPT-NeoX's query_key_value) becomes the linear layers of its
    decoder layers' attention (and, for 'attn+mlp', MLP), as paths relative to the layer."""
    from transformers.pytorch_utils import Conv1D

    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if set(targets) & leaves or targets not in LORA_TARGETS.values():
        return targets
    parts = ATTENTION_NAMES + (MLP_NAMES if targets == LORA_TARGETS["attn+mlp"] else ())
    block = decoder_layers(model)[0]
    found = tuple(
        f"{part}.{name}"
        for part in parts
        if isinstance(getattr(block, part, None), torch.nn.Module)
        for name, module in getattr(block, part).named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))
    )
    return found or targets


@dataclass(frozen=True)
class SAEChoice:
    """The SAE a run splices in, where it goes, and what its metadata says about its origin."""

    path: Path
    hook: str
    layer: int
    source_model: str | None
    """The model the SAE was trained on (SAELens metadata `model_name`), if recorded."""


def resolve_sae(config: TuneConfig) -> SAEChoice:
    """Find the SAE folder from `sae` or `saes_run` + `layer`, and its hookpoint (checked against metadata)."""
    if config.sae is not None and config.saes_run is not None:
        raise ResaError("give either an SAE folder (--sae) or a Stage I run (--saes with --layer), not both")
    if config.sae is not None:
        path = Path(config.sae)
        cfg_file = path / "cfg.json"
        if not cfg_file.is_file():
            raise ResaError(f"SAE {str(path)!r}: no cfg.json there, so it is not an SAELens SAE folder")
        recorded = (json.loads(cfg_file.read_text()).get("metadata") or {}).get("hook_name")
        if recorded:
            hook, layer = parse_hook_name(recorded)
        elif config.layer is None:
            raise ResaError(f"SAE {str(path)!r} records no hook_name in its metadata; pass --layer (and --hook)")
        else:
            hook, layer = config.hook, config.layer
        return SAEChoice(path, check_splice_hook(hook), config.layer if config.layer is not None else layer, None)
    if config.saes_run is None:
        raise ResaError("no SAE given: pass --sae SAE_DIR, or --saes RUN with --layer L, or --no-sae for plain SFT")
    if config.layer is None:
        raise ResaError("--saes RUN needs --layer L (which of the run's SAEs to splice in)")
    hook = check_splice_hook(config.hook)
    return SAEChoice(sae_dir(config.saes_run, hook, config.layer), hook, config.layer, None)


# ------------------------------------------------------------------------------------------------ data


def encode_examples(config: TuneConfig, tokenizer) -> tuple[list[torch.Tensor], str]:
    """Token ids of every elicitation text (truncated to `max_length`), or of every packed chunk with `pack`,
    and the dataset's fingerprint."""
    examples = load_qa(
        config.dataset,
        problem_column=config.problem_column,
        answer_column=config.answer_column,
        limit=config.limit,
        seed=config.seed,
    )
    texts = [format_trigger(e.problem, e.answer, config.template) for e in examples]
    if config.pack:
        encoded = pack_texts(tokenizer, texts, config.max_length)
    else:
        encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=config.max_length)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in encoded], dataset_fingerprint(config.dataset, examples)


@dataclass(frozen=True)
class Schedule:
    """Which example each process reads at each micro-step: a pure function of the seed (resumable)."""

    n_examples: int
    world: int
    grad_accum: int
    total_steps: int
    seed: int
    shuffle: bool

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the data (a remainder smaller than one step is dropped)."""
        return self.n_examples // (self.world * self.grad_accum)

    def epoch_of(self, step: int) -> int:
        """Epoch (0-based) that optimizer step `step` (0-based) belongs to."""
        return step // self.steps_per_epoch

    def indices(self, step: int, rank: int) -> list[int]:
        """Example indices of the micro-batches of optimizer step `step` on process `rank`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self.shuffle:
            order = torch.randperm(self.n_examples, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.n_examples)
        first = within * self.grad_accum * self.world
        return [int(order[first + m * self.world + rank]) for m in range(self.grad_accum)]


# ------------------------------------------------------------------------------------------------ losses


def kl_per_token(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) of the next-token distributions at every position: [batch, seq]."""
    teacher = teacher_logits.float().log_softmax(-1)
    student = student_logits.float().log_softmax(-1)
    return F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)


def reduce_kl(kl: torch.Tensor, reduction: str) -> torch.Tensor:
    """'token': mean over positions (and batch); 'batchmean': sum over positions / batch size (authors' code)."""
    check_choice("KL reduction", reduction, KL_REDUCTIONS)
    return kl.mean() if reduction == "token" else kl.sum() / kl.shape[0]


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ids[t+1] from position t (the CoT-free SFT baseline)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


# ------------------------------------------------------------------------------------------------ the tuner


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, as written to train_log.jsonl."""

    step: int
    """1-based optimizer step."""
    epoch: int
    lr: float
    """Learning rate this step used."""
    grad_norm: float
    """Total gradient norm before clipping."""
    tokens: int
    """Tokens in this step, all processes."""
    kl: float | None = None
    """Mean per-token KL(teacher || student) (SAE-Tuning)."""
    sae_mse: float | None = None
    """Mean squared error of the SAE's reconstruction of the activation it read (past `keep_first`)."""
    ce: float | None = None
    """Mean next-token cross-entropy (`no_sae` SFT)."""

    @property
    def loss_value(self) -> float:
        """The logged objective: KL for SAE-Tuning, cross-entropy for SFT."""
        return self.ce if self.kl is None else self.kl

    def to_dict(self) -> dict[str, Any]:
        """Dict without the fields this kind of run does not have."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class SAETuner:
    """The model, SAE, optimizer and schedule of one run, and its optimizer step. `tune` drives it; tests and
    benchmarks call `train_step` directly."""

    def __init__(self, config: TuneConfig, accelerator: Accelerator | None = None):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import set_seed
        from transformers import AutoTokenizer

        config.check()
        self.config = config
        self.choice = None if config.no_sae else resolve_sae(config)
        # the data first: a dataset without answers is refused before a large model is loaded
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.model))
        self.examples, self.data_fingerprint = encode_examples(config, tokenizer)
        self.accelerator = accelerator or Accelerator(
            cpu=config.device == "cpu",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.detach_sae)],
        )
        device = self.accelerator.device
        self.device = "cpu" if device.type == "cpu" else str(device)
        """The process's device as a string libraries accept (multi-CPU runs report 'cpu:0')."""
        dtype = config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.type == "cuda" else "float32"
        set_seed(config.seed)
        self.subject: Subject = load_subject(config.model, dtype=dtype, device=self.device)
        self.sae: SAE | None = None
        self.recon: SAEReconstruction | None = None
        """What is spliced in: the SAE's reconstruction (sparse for TopK), recording its input and output."""
        if self.choice is not None:
            self.subject.check_layer(self.choice.layer)
            sae = load_sae(self.choice.path, device=self.device)
            check_sae_fits(sae, self.subject, self.choice.hook, self.choice.layer)
            self.choice = replace(self.choice, source_model=sae.cfg.metadata.model_name)
            self.sae = sae.to(dtype=self.subject.dtype).eval().requires_grad_(False)
            self.recon = SAEReconstruction(self.sae)
        self.model = self._peft_model()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        world = self.accelerator.num_processes
        steps_per_epoch = len(self.examples) // (world * config.grad_accum)
        if steps_per_epoch < 1:
            raise ResaError(
                f"dataset {config.dataset!r} gives {len(self.examples)} sequences, fewer than one optimizer step "
                f"needs ({world} process(es) x {config.grad_accum} accumulation)"
            )
        total = config.steps if config.steps is not None else config.epochs * steps_per_epoch
        self.schedule = Schedule(len(self.examples), world, config.grad_accum, total, config.seed, config.shuffle)
        self.scheduler = _cosine_with_min_lr(self.optimizer, config, total)
        self.wrapped = self.accelerator.prepare_model(self.model)

    def _peft_model(self):
        from peft import LoraConfig, get_peft_model

        config = self.config
        self.subject.hf.requires_grad_(False)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(model_lora_targets(self.subject.hf, config.lora_targets)),
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in 5.x
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                model = get_peft_model(self.subject.hf, lora)
        except ValueError as exc:
            raise ResaError(
                f"LoRA targets {', '.join(config.lora_targets)}: {str(exc).splitlines()[0]}; "
                f"accepted: {', '.join(LORA_TARGETS)} or module names of this model"
            ) from exc
        return model.train()

    @contextlib.contextmanager
    def _student(self) -> Iterator[None]:
        if self.recon is None:
            yield
            return
        hook, layer = self.choice.hook, self.choice.layer
        with contextlib.ExitStack() as stack:
            if self.config.detach_sae:  # runs before the splice's hook: the whole hookpoint output is cut off
                handle = rewrite_at(splice_point(self.model, hook, layer), torch.Tensor.detach)
                stack.callback(handle.remove)
            stack.enter_context(spliced(self.model, {(hook, layer): self.recon}, keep_first=self.config.keep_first))
            yield

    def _micro_loss(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one sequence (what is optimised) and the logged value (per-token KL or cross-entropy)."""
        config = self.config
        if config.no_sae:
            loss = next_token_loss(self.wrapped(input_ids=ids, use_cache=False).logits, ids)
            return loss, loss.detach()
        with torch.no_grad(), self.model.disable_adapter():
            teacher = self.model(input_ids=ids, use_cache=False).logits
        with self._student():
            student = self.wrapped(input_ids=ids, use_cache=False).logits
        kl = kl_per_token(teacher, student)
        return reduce_kl(kl, config.kl_reduction), kl.detach().mean()

    def train_step(self, step: int) -> StepRecord:
        """Optimizer step `step` (0-based): its micro-batches forward and backward, clip, AdamW, schedule."""
        accelerator, config = self.accelerator, self.config
        indices = self.schedule.indices(step, accelerator.process_index)
        values, tokens = [], 0
        for m, index in enumerate(indices):
            ids = self.examples[index].unsqueeze(0).to(accelerator.device)
            sync = m == len(indices) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(self.wrapped):
                loss, value = self._micro_loss(ids)
                accelerator.backward(loss / len(indices))
            values.append(value)
            tokens += ids.numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mse = self.recon.take_mse(config.keep_first) if self.recon else 0.0
        value = torch.stack(values).double().mean().item()
        stats = torch.tensor([value, mse, tokens], dtype=torch.float64, device=accelerator.device)
        mean = accelerator.reduce(stats, "mean").tolist()
        metric = {"ce": mean[0]} if config.no_sae else {"kl": mean[0], "sae_mse": mean[1]}
        return StepRecord(
            step=step + 1,
            epoch=self.schedule.epoch_of(step),
            lr=lr,
            grad_norm=float(grad_norm),
            tokens=int(round(mean[2] * accelerator.num_processes)),
            **metric,
        )


def _cosine_with_min_lr(optimizer, config: TuneConfig, total: int):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=int(round(config.warmup_ratio * total)),
        num_training_steps=total,
        min_lr_rate=config.min_lr_rate,
    )


# ------------------------------------------------------------------------------------------------ checkpoints


def _checkpoint_dirs(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    found = [p for p in root.glob("step-*") if (p / STATE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _refuse_pickled_checkpoints(out: Path) -> None:
    """Refuse the checkpoints of versions that pickled them (step-N/state.pt, rng-R.pt), without reading them."""
    for path in sorted((out / CHECKPOINTS).glob("step-*/*.pt")):
        refuse_pickled(path, f"rerun without --resume into another --out, or delete {out / CHECKPOINTS} to start over")


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(tuner: SAETuner, out: Path, step: int, elapsed_s: float) -> None:
    """CHECKPOINTS/step-N/: adapter/, the optimizer and schedule (state.json + tensors.safetensors) and each
    process's RNG state (rng-R/), the folder written atomically by the main process once every process has
    written its RNG state."""
    accelerator = tuner.accelerator
    target = out / CHECKPOINTS / f"step-{step:06d}"
    with atomic_dir(target.parent / f".rng-step-{step:06d}-rank{accelerator.process_index}") as tmp:
        save_state(tmp, _rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(target) as tmp:
            save_adapter(tuner.model, tmp / "adapter", tuner.subject.spec)
            for rank in range(accelerator.num_processes):
                (target.parent / f".rng-step-{step:06d}-rank{rank}").rename(tmp / f"rng-{rank}")
            save_state(
                tmp,
                {
                    "step": step,
                    "optimizer": tuner.optimizer.state_dict(),
                    "scheduler": tuner.scheduler.state_dict(),
                    "elapsed_s": elapsed_s,
                },
            )
    accelerator.wait_for_everyone()


def _load_checkpoint(tuner: SAETuner, checkpoint: Path) -> dict[str, Any]:
    """Restore the adapter, optimizer, schedule and this process's RNG state; every file is checked before any is
    applied."""
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = load_state(checkpoint)
    rng = checkpoint / f"rng-{tuner.accelerator.process_index}"
    if not rng.is_dir():
        raise ResaError(f"checkpoint {checkpoint} was written by fewer processes; resume with the same process count")
    rng_state = load_state(rng)
    adapter = checkpoint / "adapter" / "adapter_model.safetensors"
    if not adapter.is_file():
        raise ResaError(f"checkpoint {checkpoint} is incomplete (no adapter); delete it to start over")
    try:
        weights = load_file(str(adapter), device=tuner.device)
    except SafetensorError as err:
        raise ResaError(f"checkpoint {checkpoint}: {adapter.name} is not a safetensors file ({err}); delete it to "
                        f"start over") from None
    set_peft_model_state_dict(tuner.model, weights)
    tuner.optimizer.load_state_dict(state["optimizer"])
    tuner.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(rng_state)
    return state


# ------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class TuneResult:
    """What a finished run produced."""

    out: Path
    adapter: Path
    merged: Path
    steps: int
    first: float
    """Logged loss value (KL or cross-entropy) at the first step."""
    last: float
    """Logged loss value at the last step."""
    tokens: int
    wall_s: float
    records: list[StepRecord] = field(repr=False)


def changed_settings(config: TuneConfig, out: str | Path) -> list[str]:
    """Settings of `config` that differ from those the run in `out` was started with (none when `out` has no run);
    `resume`, `save_every` and `device` do not count."""
    saved = Path(out) / _CONFIG_FILE
    if not saved.exists():
        return []
    before = {k: v for k, v in json.loads(saved.read_text()).items() if k not in _NOT_COMPARED_ON_RESUME}
    now = {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k not in _NOT_COMPARED_ON_RESUME}
    return sorted(k for k in now if before.get(k) != now[k])


def prepare_out(config: TuneConfig, out: Path) -> Path | None:
    """Check the output directory against `resume`; return the checkpoint to resume from, if any."""
    if not config.resume:
        if (out / _CONFIG_FILE).exists() or (out / TRAIN_LOG).exists():
            raise ResaError(
                f"output {str(out)!r} already holds a tuning run; pass --resume to continue it, or another --out"
            )
        return None
    changed = changed_settings(config, out)
    if changed:
        raise ResaError(
            f"--resume: the run in {str(out)!r} was started with other settings ({', '.join(changed)}); "
            f"rerun with the same options, or use another --out"
        )
    _refuse_pickled_checkpoints(out)
    checkpoints = _checkpoint_dirs(out)
    return checkpoints[-1] if checkpoints else None


def tune(
    config: TuneConfig,
    out: str | Path,
    *,
    on_step: Callable[[StepRecord], None] | None = None,
    accelerator: Accelerator | None = None,
) -> TuneResult:
    """Run SAE-Tuning (or the `no_sae` SFT baseline) into `out`: adapter/, merged/, train_log.jsonl,
    checkpoints/, manifest.json. `on_step` is called after every optimizer step (on every process)."""
    from tqdm.auto import tqdm

    out = Path(out)
    checkpoint = prepare_out(config, out)
    tuner = SAETuner(config, accelerator)
    accelerator = tuner.accelerator
    main = accelerator.is_main_process
    records: list[StepRecord] = []
    start, elapsed_before = 0, 0.0
    if checkpoint is not None:
        state = _load_checkpoint(tuner, checkpoint)
        start, elapsed_before = state["step"], state["elapsed_s"]
        lines = (out / TRAIN_LOG).read_text().splitlines() if (out / TRAIN_LOG).exists() else []
        records = [StepRecord(**json.loads(line)) for line in lines if json.loads(line)["step"] <= start]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / _CONFIG_FILE, config.to_dict())
        atomic_write_text(out / TRAIN_LOG, "".join(json.dumps(r.to_dict()) + "\n" for r in records))
    total = tuner.schedule.total_steps
    began = time.perf_counter()
    bar = tqdm(total=total, initial=start, disable=not main, desc="sft" if config.no_sae else "sae-tuning", unit="step")
    with bar, (out / TRAIN_LOG).open("a") if main else contextlib.nullcontext() as log:
        for step in range(start, total):
            record = tuner.train_step(step)
            records.append(record)
            if main:
                log.write(json.dumps(record.to_dict()) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix({"ce" if config.no_sae else "kl": f"{record.loss_value:.4g}"})
            done = record.step
            if config.save_every and done % config.save_every == 0 and done < total:
                _save_checkpoint(tuner, out, done, elapsed_before + time.perf_counter() - began)
            if on_step is not None:
                on_step(record)
    wall = elapsed_before + time.perf_counter() - began
    tokens = sum(r.tokens for r in records)
    accelerator.wait_for_everyone()
    adapter, merged = out / "adapter", out / "merged"
    if main:
        save_adapter(tuner.model, adapter, tuner.subject.spec)
        attach(adapter, config.model, merged)
        record_stage(out, STAGE, _manifest(tuner, out, records, wall, tokens))
    accelerator.wait_for_everyone()
    first, last = records[0].loss_value, records[-1].loss_value
    return TuneResult(out, adapter, merged, total, first, last, tokens, wall, records)


def _manifest(tuner: SAETuner, out: Path, records: list[StepRecord], wall: float, tokens: int) -> dict[str, Any]:
    config, accelerator, subject = tuner.config, tuner.accelerator, tuner.subject
    device = str(accelerator.device)
    if accelerator.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(accelerator.device)})"
    sae = None
    if tuner.choice is not None:
        sae = {
            "path": run_relative(tuner.choice.path, out),
            "hook_name": tuner.sae.cfg.metadata.hook_name,
            "layer": tuner.choice.layer,
            "d_in": tuner.sae.cfg.d_in,
            "d_sae": tuner.sae.cfg.d_sae,
            "k": getattr(tuner.sae.cfg, "k", None),
            "architecture": tuner.sae.cfg.architecture(),
        }
    return {
        "objective": "next-token cross-entropy (CoT-free SFT)" if config.no_sae
        else "KL(teacher || SAE-spliced student)",
        "source_model": tuner.choice.source_model if tuner.choice else None,
        "target_model": subject.spec,
        "target_model_path": str(subject.path),
        "elicitation_dataset": config.dataset,
        "dataset_fingerprint": tuner.data_fingerprint,
        "n_examples": len(tuner.examples),
        "sae": sae,
        "config": config.to_dict(),
        "steps": len(records),
        "first": records[0].loss_value,
        "last": records[-1].loss_value,
        "tokens_seen": tokens,
        "wall_s": round(wall, 3),
        "s_per_step": round(wall / max(len(records), 1), 4),
        "device": device,
        "processes": accelerator.num_processes,
        "dtype": str(subject.dtype).removeprefix("torch."),
        "trainable_parameters": sum(p.numel() for p in tuner.trainable),
    }
