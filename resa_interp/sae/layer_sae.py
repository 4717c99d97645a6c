"""The fused trainer's SAE under training (`LayerSAE`): one hookpoint's TopK SAE in scaled units, its optimizer
and firing statistics, stepped by the fused kernel (`sae.topk_kernel`) and exported as a SAELens TopK SAE in raw
units. `sae.saelens_trainer.SAELensLayer` has the same interface for SAELens' trainer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from resa_interp.sae.optimizers import Signum
from resa_interp.sae.pretrained import build_topk_sae, to_training_form
from resa_interp.sae.topk_kernel import normalize_rows, project_out_parallel_grad, reconstruction_loss


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
        """Adam (betas 0.9/0.999; torch's fused kernel, one pass over each parameter instead of about a dozen) or
        Signum (momentum 0.9), constant lr."""
        params = [self.enc, self.b_enc, self.dec, self.b_dec]
        self.optimizer = torch.optim.Adam(params, lr=lr, fused=True) if name == "adam" else Signum(params, lr=lr)

    def step(self, x_raw: Tensor) -> dict[str, float]:
        """One optimizer step on raw activations [n, d]; returns the batch's `loss` (squared error per token, scaled
        units), `explained_variance`, `l0` (active latents per token) before the update, and the `lr` and total
        `grad_norm` (after the parallel part of the decoder's is removed) of the update."""
        x = x_raw * self.scale
        loss, values, indices, _ = reconstruction_loss(
            x, self.enc, self.b_enc, self.dec, self.b_dec, self.k, self.select_dtype
        )
        loss.backward()
        project_out_parallel_grad(self.dec)
        with torch.no_grad():
            grads = [p.grad for p in (self.enc, self.b_enc, self.dec, self.b_dec) if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        normalize_rows(self.dec.data)
        with torch.no_grad():
            fired = torch.zeros_like(self.since_fired, dtype=torch.bool)
            active = values > 0
            fired[indices[active]] = True
            self.since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
            self.tokens_seen.add_(x.shape[0])
            variance = (x - x.mean(0)).pow(2).sum(-1).mean()
            # one transfer from the device for all four numbers
            loss_value, variance_value, l0, norm = torch.stack(
                [loss.detach(), variance, active.sum(-1).float().mean(), grad_norm]).tolist()
        return {"loss": loss_value, "explained_variance": 1.0 - loss_value / max(variance_value, 1e-12), "l0": l0,
                "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": norm}

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
