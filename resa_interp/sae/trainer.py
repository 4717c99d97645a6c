"""The Stage I trainer (`GroupTrainer`): the SAEs of a group of layers, one per (layer, seed), trained together from
one stream of harvest batches. It owns the loop's state (per-layer shuffle buffers, tokens done, flushes) and
gives it as a `state_dict` for checkpoints; the runner (`sae.train`) drives it group by group."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from resa_interp.sae.activations import ActivationFeed
from resa_interp.sae.config import SAETrainConfig
from resa_interp.sae.layer_sae import LayerSAE
from resa_interp.sae.pretrained import check_source_sae, load_source_sae
from resa_interp.sae.saelens_trainer import SAELensLayer
from resa_interp.sae.topk_kernel import fast_select_dtype

log = logging.getLogger(__name__)

DEAD_WINDOW = 1_000_000
"""A latent is dead when it has not fired in this many training tokens (the paper's dead feature threshold),
or in the whole run when that is shorter."""


@dataclass(frozen=True)
class TrainSteps:
    """The optimizer steps of one flush: a record per step and SAE, as RUN/saes/train_log.jsonl holds it, and each
    step's throughput (which `train_log.jsonl` leaves out: timings differ run to run)."""

    records: list[dict]
    """{step (the group's, 1-based), layer, seed, tokens (trained so far per SAE), loss, explained_variance, l0,
    dead_fraction, lr[, grad_norm]}, in step order."""
    tokens_per_s: dict[int, float]
    """The group's step -> its batch's tokens over the seconds this process's SAEs spent stepping on it."""


def select_dtype(cfg: SAETrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype of the product that picks the top-k latents on `device` (None: float32)."""
    if cfg.select_precision == "auto":
        return fast_select_dtype(device)
    return torch.bfloat16 if cfg.select_precision == "bfloat16" else None


class GroupTrainer:
    """Trains the SAEs of `layers` together, one per (layer, seed) of `cfg.all_seeds`: each batch of a feed (one
    forward pass, or a read from a cache) goes into every layer's buffer, and every seed's SAE of a layer steps on
    the same shuffled minibatches. Across launcher ranks `layers` are this rank's (maybe none: it still harvests its
    rows for the others) and every rank goes through the same batches, flushes and checkpoints."""

    def __init__(self, cfg: SAETrainConfig, layers: list[int], d_in: int, device: torch.device):
        self.cfg = cfg
        self.layers = layers
        self.device = device
        self.saes: dict[tuple[int, int], Any] = {}
        """(layer, seed) -> its SAE under training (`LayerSAE`, or `SAELensLayer` with --trainer saelens)."""
        for layer in layers:
            dtype = select_dtype(cfg, device)
            if cfg.mode == "finetune":
                source = load_source_sae(cfg.source, layer, cfg.resolved_source_hook())
                check_source_sae(source, d_in, cfg.source)
                sae = LayerSAE.from_source(source.to(device), cfg.source, cfg.seed * 1000 + layer, dtype)
                log.info("layer %d: starting from %s (%d latents, k %d); %s", layer, source.cfg.metadata.source_path,
                         source.cfg.d_sae, source.cfg.k, "; ".join(sae.source_notes) or "nothing to fold")
                self.saes[layer, cfg.seed] = sae
            elif cfg.trainer == "saelens":
                for seed in cfg.all_seeds:
                    self.saes[layer, seed] = SAELensLayer(cfg, d_in, cfg.latents_for(d_in), seed * 1000 + layer,
                                                          device, DEAD_WINDOW)
            else:
                for seed in cfg.all_seeds:
                    self.saes[layer, seed] = LayerSAE(d_in, cfg.latents_for(d_in), cfg.k, seed * 1000 + layer,
                                                      dtype).to(device)
        for sae in self.saes.values():
            sae.make_optimizer(cfg.optimizer, cfg.lr)
        self.budget = cfg.tokens if cfg.tokens is not None else math.inf
        """Training tokens per SAE (inf: one epoch)."""
        self.pending: dict[int, list[Tensor]] = {layer: [] for layer in layers}
        """Per layer, the activations pooled since the last flush."""
        self.pending_tokens = 0
        self.tokens_done = 0
        self.steps = 0
        """Optimizer steps taken (every SAE of the group takes each of them)."""
        self.flushes = 0
        self.next_text = 0
        """The first text of the next batch to read (where a resumed run continues)."""
        self.resumed = False

    def state_dict(self) -> dict:
        """The group's state for a checkpoint (`checkpoints.save_state`: tensors and JSON values)."""
        return {
            "group": self.layers,
            "saes": {key: sae.full_state() for key, sae in self.saes.items()},
            "pending": {layer: torch.cat(acts).cpu() for layer, acts in self.pending.items()},
            "next_text": self.next_text,
            "pending_tokens": self.pending_tokens,
            "tokens_done": self.tokens_done,
            "flushes": self.flushes,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's `state_dict` of this group."""
        for key, sae in self.saes.items():
            sae.load_full_state(state["saes"][key])
        for layer in self.layers:
            self.pending[layer] = [state["pending"][layer].to(self.device)]
        self.next_text, self.tokens_done, self.flushes = state["next_text"], state["tokens_done"], state["flushes"]
        self.pending_tokens = state["pending_tokens"]
        # a checkpoint is saved only after a flush that is not the last, which takes whole batches
        self.steps = self.tokens_done // self.cfg.batch_tokens
        self.resumed = True

    def flush(self, progress: Any, final: bool) -> tuple[bool, TrainSteps]:
        """Shuffle the pooled activations and step every SAE on whole batches; a remainder waits for the next
        flush (only the very last flush of a run takes a short final batch). Returns whether this was the last,
        and its steps."""
        cfg = self.cfg
        available = int(min(self.pending_tokens, self.budget - self.tokens_done))
        last = final or available >= self.budget - self.tokens_done
        take = available if last else available - available % cfg.batch_tokens
        generator = torch.Generator().manual_seed(cfg.seed + 7919 * self.flushes)
        perm = torch.randperm(self.pending_tokens, generator=generator).to(self.device)
        records: list[dict] = []
        seconds: dict[int, float] = {}
        sizes: dict[int, int] = {}
        for layer in self.layers:
            acts = torch.cat(self.pending[layer]).float()[perm]
            for seed in cfg.all_seeds:
                sae = self.saes[layer, seed]
                if sae.tokens_seen.item() == 0 and not sae.initialised:
                    sae.data_init(acts[:take], from_pretrained=cfg.mode == "finetune")
                for n, i in enumerate(range(0, take, cfg.batch_tokens)):
                    end, step = min(i + cfg.batch_tokens, take), self.steps + n + 1
                    began = time.perf_counter()
                    stats = sae.step(acts[i:end])
                    seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - began
                    sizes[step] = end - i
                    tokens = self.tokens_done + end
                    records.append({"step": step, "layer": layer, "seed": seed, "tokens": tokens, **stats,
                                    "dead_fraction": sae.dead_fraction(min(DEAD_WINDOW, tokens))})
            self.pending[layer] = [] if last else [acts[take:]]
            if records:
                progress.set_postfix(layer=layer, ev=f"{records[-1]['explained_variance']:.3f}", refresh=False)
        self.tokens_done += take
        self.steps += math.ceil(take / cfg.batch_tokens)
        progress.update(take)
        self.pending_tokens = 0 if last else self.pending_tokens - take
        self.flushes += 1
        rates = {step: sizes[step] / max(spent, 1e-9) for step, spent in seconds.items()}
        return last, TrainSteps(sorted(records, key=lambda r: (r["step"], r["layer"], r["seed"])), rates)

    def fit(self, feed: ActivationFeed, progress: Any, save: Callable[[dict], None],
            on_steps: Callable[[TrainSteps], None] | None = None) -> dict[tuple[int, int], Any]:
        """Train on `feed` until the token budget or the data runs out, updating `progress` (a tqdm bar), giving
        `save` the `state_dict` every `cfg.checkpoint_every` flushes and `on_steps` every flush's steps (on every
        rank, at the same flushes); returns the SAEs."""
        cfg = self.cfg
        if self.resumed:
            progress.update(self.tokens_done)
            log.info("resuming layers %s at %d tokens", self.layers, self.tokens_done)
        for first, chunks, n in feed.batches(self.next_text):
            for layer in self.layers:
                self.pending[layer].extend(chunks[layer])
            self.pending_tokens += n
            if self.pending_tokens >= min(cfg.buffer_tokens, self.budget - self.tokens_done):
                last, steps = self.flush(progress, final=False)
                if on_steps is not None:
                    on_steps(steps)
                if cfg.checkpoint_every and self.flushes % cfg.checkpoint_every == 0 and not last:
                    self.next_text = first + cfg.seq_batch
                    save(self.state_dict())
            if self.tokens_done >= self.budget:
                break
        if self.pending_tokens and self.tokens_done < self.budget:
            _, steps = self.flush(progress, final=True)  # the last flush saves no checkpoint, so no resume point
            if on_steps is not None:
                on_steps(steps)
        if cfg.tokens is not None and self.tokens_done < cfg.tokens:
            log.warning("dataset exhausted after %d of %d tokens (one epoch)", self.tokens_done, cfg.tokens)
        return self.saes
