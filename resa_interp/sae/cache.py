"""`cache-activations`: harvest Stage I's training activations once into an activation cache
(`sae.activations`), so that any number of SAE configs (a sweep over k or latents) train from disk
(`train-saes --activations CACHE`) without running the model again.

The harvest is Stage I's own (`ModelFeed` on `trigger_data`): the same texts, order, batches and counted
positions as `train-saes` with the same data settings, so a float32 cache trains the same SAEs.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from resa_interp.data import SYNTHETIC
from resa_interp.model import Subject, load_subject
from resa_interp.numbering import parse_layers
from resa_interp.sae.activations import DATA_SETTINGS, ModelFeed, warn_emulated_bf16, write_cache
from resa_interp.sae.config import SAETrainConfig
from resa_interp.sae.trigger_data import trigger_data
from resa_interp.shards import require_one_process


@dataclass(frozen=True)
class CacheResult:
    """What a harvest wrote."""

    path: Path
    tokens_per_layer: int
    layers: list[int]
    bytes: int
    """Bytes of all shards together."""
    wall_seconds: float


def cache_activations(cfg: SAETrainConfig, out: str | Path, dtype: str = "bfloat16",
                      subject: Subject | None = None) -> CacheResult:
    """Harvest the counted positions of `cfg.layers` at `cfg.hook` on Stage I's trigger data (`cfg.tokens` per
    layer, None: one epoch) into the cache folder `out`, stored as `dtype`. Only the data settings of `cfg`
    (`activations.DATA_SETTINGS`) matter; the SAE settings are chosen later, by each run that trains from it."""
    cfg.check()
    require_one_process("cache-activations")
    t0 = time.time()
    subject = subject or load_subject(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
    warn_emulated_bf16(subject)
    layers = parse_layers(cfg.layers, subject.facts.n_layers)
    data = trigger_data(cfg, subject)
    # synthetic data draws as many examples as the token budget needs: pin that number, so that a run with fewer
    # --tokens reads the same texts
    pinned = dataclasses.replace(cfg, n_examples=data.n_examples) if cfg.dataset == SYNTHETIC else cfg
    feed = ModelFeed(subject, cfg.hook, layers, data.train, data.prefix_len, cfg.seq_batch, 0 if cfg.keep_first else 1)
    record = {
        "model": subject.spec,
        "model_path": str(subject.path),
        "architecture": subject.facts.architecture,
        "n_layers": subject.facts.n_layers,
        "hook": cfg.hook,
        "dataset_fingerprint": data.fingerprint,
        "excluded_first_positions": 0 if cfg.keep_first else 1,
        "settings": {key: getattr(pinned, key) for key in DATA_SETTINGS},
    }
    manifest = write_cache(feed, out, layers, cfg.tokens, dtype, record)
    size = sum(shard["bytes"] for shard in manifest["shards"].values())
    return CacheResult(Path(out), manifest["tokens_per_layer"], layers, size, time.time() - t0)
