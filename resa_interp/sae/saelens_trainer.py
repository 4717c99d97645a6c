"""Stage I with SAELens' own trainer (`train-saes --trainer saelens`): SAELens' training SAEs (topk, batchtopk,
jumprelu, matryoshka batchtopk, standard, gated), their losses and auxiliary losses, and SAELens' `SAETrainer`
step (Adam, lr scheduler, coefficient warm-ups, gradient clipping, dead-latent tracking), fed with the same pooled
and shuffled batches of harvested activations as the fused kernel.

`SAELensLayer` is the training state of one hookpoint with the interface `trainer.GroupTrainer` drives (`data_init`,
`step`, `full_state`, `export`, ...), so the activation stream, pooling, shuffling, checkpoints and the held-out
metrics are the fused trainer's own. What SAELens decides: the initialisation, the input scaling
(`normalize_activations="expected_average_only_in"`: inputs scaled to mean norm sqrt(d_in), the factor estimated
on the first buffer and folded into the weights at the end, as SAELens' runner does), the step and the inference
form each architecture is saved in (batchtopk and matryoshka as JumpReLU SAEs with their learned threshold).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from resa_interp.sae.config import ARCHITECTURES, K_ARCHITECTURES, SAETrainConfig

if TYPE_CHECKING:
    from sae_lens import SAE

MATRYOSHKA_LEVELS = 4
"""Nested widths of a matryoshka SAE: d_sae/8, d_sae/4, d_sae/2, d_sae."""


def trainer_label(cfg: SAETrainConfig) -> str:
    """What trained an SAE, as its metadata records it (`trainer`)."""
    if cfg.trainer == "fused":
        return "resa-interp fused TopK (topk_kernel)"
    import sae_lens

    return f"sae_lens {sae_lens.__version__} {cfg.architecture}"


def training_config(cfg: SAETrainConfig, d_in: int, d_sae: int) -> Any:
    """SAELens' training config of `cfg.architecture` for inputs of width `d_in`: k for the k-architectures, the
    sparsity coefficient (l1 for standard/gated, l0 for jumprelu; SAELens' default unless set) for the others."""
    from sae_lens.registry import get_sae_training_class

    _, config_class = get_sae_training_class(ARCHITECTURES[cfg.architecture])
    options: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "normalize_activations": "expected_average_only_in"}
    if cfg.architecture in K_ARCHITECTURES:
        options["k"] = cfg.k
    elif cfg.sparsity_coefficient is not None:
        options["l0_coefficient" if cfg.architecture == "jumprelu" else "l1_coefficient"] = cfg.sparsity_coefficient
    if cfg.architecture == "matryoshka":
        options["matryoshka_widths"] = sorted({max(1, d_sae >> shift) for shift in range(MATRYOSHKA_LEVELS)})
    return config_class(**options)


class SAELensLayer:
    """Training state of one hookpoint's SAE under SAELens: its `TrainingSAE` and the `SAETrainer` that steps it."""

    def __init__(self, cfg: SAETrainConfig, d_in: int, d_sae: int, seed: int, device: torch.device,
                 dead_window: int):
        from sae_lens.registry import get_sae_training_class

        sae_class, _ = get_sae_training_class(ARCHITECTURES[cfg.architecture])
        with torch.random.fork_rng(devices=[]):  # SAELens initialises from the global generator, on the CPU
            torch.manual_seed(seed)
            self.sae = sae_class(training_config(cfg, d_in, d_sae)).to(device)
        self.cfg = cfg
        self.device = device
        self.dead_window = dead_window
        """Training tokens after which a silent latent counts as dead."""
        self.trainer: Any = None
        self.initialised = False
        """Whether `data_init` has run (it runs once, on the first buffer)."""
        self.source_notes: list[str] = []
        """Nothing is folded: the SAELens trainer starts from scratch only."""

    def make_optimizer(self, name: str, lr: float) -> None:
        """SAELens' `SAETrainer` around the SAE: its Adam (betas 0.9/0.999, `check` refuses other optimizers), a
        constant lr, its coefficient schedulers; dead latents are those silent for the paper's window."""
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        assert name == "adam"
        batch = self.cfg.batch_tokens
        window = max(1, math.ceil(self.dead_window / batch))
        config = SAETrainerConfig(
            total_training_samples=max(self.cfg.tokens or batch, batch),
            train_batch_size_samples=batch,
            lr=lr,
            lr_end=lr,  # SAELens' runner sets it in post-init; a constant schedule never reaches it
            device=str(self.device),
            dead_feature_window=window,
            feature_sampling_window=window,
        )
        self.trainer = SAETrainer(config, self.sae, data_provider=iter(()))

    @property
    def tokens_seen(self) -> Tensor:
        """Training tokens stepped on so far."""
        return torch.tensor(self.trainer.n_training_samples)

    def data_init(self, x_raw: Tensor, from_pretrained: bool) -> None:
        """SAELens' input scaling factor (mean norm -> sqrt(d_in)), estimated on the first buffer `x_raw`."""
        assert not from_pretrained
        batches = list(x_raw.split(self.cfg.batch_tokens))
        self.trainer.activation_scaler.estimate_scaling_factor(
            d_in=self.sae.cfg.d_in, data_provider=iter(batches), n_batches_for_norm_estimate=len(batches)
        )
        self.initialised = True

    def step(self, x_raw: Tensor) -> dict[str, float]:
        """One SAELens training step on raw activations [n, d]; returns the batch's `loss` (SAELens' total, in its
        scaled units), `explained_variance` and `l0` (before the update) and the `lr` the step used. SAELens'
        trainer clips the gradient and keeps no norm of it, so there is no `grad_norm`."""
        lr = self.trainer.optimizer.param_groups[0]["lr"]
        out = self.trainer.step(x_raw)
        self.trainer.n_training_steps += 1
        with torch.no_grad():
            x = out.sae_in.float()
            variance = (x - x.mean(0)).pow(2).sum()
            error = (out.sae_out.float() - x).pow(2).sum()
            l0 = out.feature_acts.bool().float().sum(-1).to_dense().mean()
            loss, variance_value, error_value, l0_value = torch.stack(
                [out.loss.detach().float(), variance, error, l0]).tolist()
        return {"loss": loss, "explained_variance": 1.0 - error_value / max(variance_value, 1e-12), "l0": l0_value,
                "lr": lr}

    def dead_fraction(self, window: int) -> float:
        """Fraction of latents that did not fire in the last `window` training tokens (whole steps)."""
        steps = math.ceil(window / self.cfg.batch_tokens)
        return float((self.trainer.n_forward_passes_since_fired >= steps).float().mean())

    def export(self, metadata: dict) -> SAE:
        """The trained SAE in SAELens' inference form for raw activations: the input scale folded into the weights
        (`fold_activation_norm_scaling_factor`), the state dict processed as `save_inference_model` does, and
        `metadata` recorded. The training state is left as it is."""
        from sae_lens import SAE

        trained = copy.deepcopy(self.sae)
        if self.trainer.activation_scaler.scaling_factor is not None:
            trained.fold_activation_norm_scaling_factor(self.trainer.activation_scaler.scaling_factor)
        state = {name: tensor.detach().clone() for name, tensor in trained.state_dict().items()}
        trained.process_state_dict_for_saving_inference(state)
        sae = SAE.from_dict(trained.cfg.get_inference_sae_cfg_dict())
        sae.load_state_dict(state)
        for key, value in metadata.items():
            setattr(sae.cfg.metadata, key, value)
        return sae.to(self.device)

    def full_state(self) -> dict:
        """Everything a resumed run needs (for `checkpoints.save_state`: tensors and JSON values, no pickles)."""
        trainer = self.trainer
        return {
            "module": self.sae.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "lr_scheduler": trainer.lr_scheduler.state_dict(),
            "coefficients": {name: s.state_dict() for name, s in trainer.coefficient_schedulers.items()},
            "scaling_factor": trainer.activation_scaler.scaling_factor,
            "samples": trainer.n_training_samples,
            "steps": trainer.n_training_steps,
            "act_freq_scores": trainer.act_freq_scores,
            "since_fired": trainer.n_forward_passes_since_fired,
            "frac_active_samples": trainer.n_frac_active_samples,
            "initialised": self.initialised,
        }

    def load_full_state(self, state: dict) -> None:
        """Inverse of `full_state`."""
        trainer = self.trainer
        self.sae.load_state_dict(state["module"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
        for name, scheduler in trainer.coefficient_schedulers.items():
            scheduler.load_state_dict(state["coefficients"][name])
        trainer.activation_scaler.scaling_factor = state["scaling_factor"]
        trainer.n_training_samples, trainer.n_training_steps = state["samples"], state["steps"]
        trainer.act_freq_scores = state["act_freq_scores"].to(self.device)
        trainer.n_forward_passes_since_fired = state["since_fired"].to(self.device)
        trainer.n_frac_active_samples = state["frac_active_samples"]
        self.initialised = state["initialised"]
