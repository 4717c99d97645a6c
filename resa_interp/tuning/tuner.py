"""The SAE-Tuning trainer: `SAETuner` owns one run's spliced model (target, frozen SAE, LoRA), optimizer, schedule
and data, and takes one optimizer step at a time on KL(teacher || student) (or, with `no_sae`, next-token
cross-entropy); the losses it optimises."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from resa_interp.errors import ResaError, check_choice, first_line
from resa_interp.model import Subject, load_subject, resolve_model_path, rewrite_at, splice_point, spliced
from resa_interp.sae import SAEReconstruction, check_sae_fits, load_sae
from resa_interp.tuning.config import KL_REDUCTIONS, LORA_TARGETS, TuneConfig
from resa_interp.tuning.data import Schedule, encode_examples
from resa_interp.tuning.targets import model_lora_targets, resolve_sae
from resa_interp.tuning.teacher import Teacher

if TYPE_CHECKING:
    from accelerate import Accelerator
    from sae_lens import SAE


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
        model_dir = resolve_model_path(config.model)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
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
        self.teacher = Teacher(self.model, model_dir, self.device, config.teacher_cache)
        if not config.no_sae:
            self.teacher.check(self.examples[0].unsqueeze(0).to(self.device))
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
                f"LoRA targets {', '.join(config.lora_targets)}: {first_line(exc)}; "
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
        teacher = self.teacher(ids)
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
