"""Where Stage I's activations come from: forward passes of the model (`ModelFeed`), or an activation cache on disk
(`ActivationCache`) that a harvest wrote once and any number of SAE configs then train from.

Both give the same stream: per harvest batch of `seq_batch` texts, the counted positions of every layer in the
order the trainer pools them (the shared prefix's rows, then the batch's own masked positions). Training feeds
its shuffle buffers from either one, so a float32 cache trains the same SAEs as the forward pass, bit for bit.

A cache folder holds `manifest.json` and one raw row-major file per layer, `layer-L.bin` ([tokens, d_model] in
the cache's dtype, no header), read through `numpy.memmap`: a batch is a slice of the map, so only the rows
being trained on are read, and the page cache serves repeated runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from resa_interp.errors import ResaError, check_choice
from resa_interp.model import (
    HOOKS,
    EncodedText,
    Harvester,
    Prefix,
    TextBatch,
    hook_name,
    iter_batches,
    model_shape,
    resolve_model_path,
)
from resa_interp.runs import MANIFEST, atomic_dir, atomic_write_json, library_versions
from resa_interp.sae.topk_kernel import fast_select_dtype

if TYPE_CHECKING:
    from resa_interp.model import Subject

log = logging.getLogger(__name__)

CACHE_FORMAT = "resa-interp activation cache"
CACHE_VERSION = 1
STORAGE = {"bfloat16": (torch.bfloat16, np.int16), "float16": (torch.float16, np.float16),
           "float32": (torch.float32, np.float32)}
"""Cache dtypes -> (torch dtype, numpy dtype of the same width that stores its bits)."""
DATA_SETTINGS = ("model", "dataset", "problem_column", "answer_column", "template", "hook", "tokens", "seq_batch",
                 "max_seq_len", "keep_first", "n_examples", "heldout", "seed", "pack", "model_dtype")
"""The Stage I settings that decide which activations a run trains on, in which order."""

Batch = tuple[int, dict[int, list[Tensor]], int]
"""(index of the batch's first text, layer -> its activation rows [n, d] in pooling order, counted positions n)."""


def warn_emulated_bf16(subject: Subject) -> None:
    """Log a warning when `subject` runs in bfloat16 on a CPU that only emulates it (no AMX or AVX512-BF16): its
    harvest is then slower than in float32, not faster (docs/performance.md, "bf16 harvest")."""
    if subject.dtype == torch.bfloat16 and subject.device.type == "cpu" and fast_select_dtype(subject.device) is None:
        log.warning("the model runs in bfloat16 on a CPU without native bf16 (no AMX or AVX512-BF16): PyTorch "
                    "emulates it, so the harvest is slower than in float32 here (the default)")


class ActivationFeed(Protocol):
    """A stream of harvest batches for a set of layers."""

    d_model: int
    device: torch.device

    def batches(self, start: int) -> Iterator[Batch]:
        """The batches from the one whose first text is `start` (a multiple of `seq_batch`) to the end."""
        ...


def pad_id(tokenizer) -> int:
    """The token that right-pads a batch: the tokenizer's pad token, else EOS, else 0."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


@dataclass
class ModelFeed:
    """Activations from one forward pass of the model per batch, all `layers` at once (`model.harvest`)."""

    subject: Subject
    hook: str
    layers: list[int]
    texts: Sequence[EncodedText]
    prefix_len: int
    """Tokens every text starts with, run once (0: none)."""
    seq_batch: int
    exclude: int
    """Leading positions of every text that are not counted (1: the sink position)."""

    @property
    def d_model(self) -> int:
        """Width of the activations."""
        return self.subject.hook_width(self.hook)

    @property
    def device(self) -> torch.device:
        """Where the activations are."""
        return self.subject.device

    def batches(self, start: int) -> Iterator[Batch]:
        """Harvest batch after batch from text `start`."""
        harvest = self.subject.harvester(self.hook, self.layers)
        prefix = harvest.run_prefix(self.texts[0].ids[: self.prefix_len]) if self.prefix_len else None
        shared = prefix.counted(self.exclude) if prefix else None
        rows_of = iter_batches(self.texts, self.seq_batch, pad_id(self.subject.tokenizer), self.exclude, start=start,
                               prefix_len=self.prefix_len)
        for first, batch in rows_of:
            acts = self.counted(harvest, batch, prefix)
            rows = batch.input_ids.shape[0]
            chunks = {layer: ([shared[layer].repeat(rows, 1)] if shared else []) + [acts[layer]]
                      for layer in self.kept}
            yield first, chunks, batch.n_tokens + (rows * shared[self.layers[0]].shape[0] if shared else 0)

    @property
    def kept(self) -> list[int]:
        """The layers whose activations `batches` delivers (all of `layers`)."""
        return self.layers

    def counted(self, harvest: Harvester, batch: TextBatch, prefix: Prefix | None) -> dict[int, Tensor]:
        """Layer -> the batch's counted activations [n, d], row after row (one forward pass)."""
        acts = harvest(batch.input_ids, batch.attention_mask, prefix=prefix)
        mask = batch.train_mask.to(self.device)
        return {layer: acts[layer][mask] for layer in self.kept}


# --------------------------------------------------------------------------------------------- the cache


def write_cache(feed: ActivationFeed, out: str | Path, layers: list[int], budget: int | None, dtype: str,
                record: dict[str, Any]) -> dict[str, Any]:
    """Harvest `feed` until `budget` counted positions per layer (None: to the end) into the cache folder `out`,
    written whole or not at all (`runs.atomic_dir`; an interrupted harvest starts over). `record` (model, data
    and settings) goes into the manifest, which is returned."""
    check_choice("--dtype", dtype, STORAGE)
    torch_dtype, np_dtype = STORAGE[dtype]
    out = Path(out)
    sizes: list[int] = []
    with atomic_dir(out) as tmp, contextlib.ExitStack() as stack:
        files = {layer: stack.enter_context(open(tmp / _shard(layer), "wb")) for layer in layers}
        for _, chunks, n in feed.batches(0):
            for layer, handle in files.items():
                for chunk in chunks[layer]:
                    handle.write(chunk.to(torch_dtype).cpu().contiguous().view(_view(np_dtype)).numpy().tobytes())
            sizes.append(n)
            if budget is not None and sum(sizes) >= budget:
                break
        stack.close()
        total, width = sum(sizes), feed.d_model
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            **record,
            "d_model": width,
            "layers": layers,
            "hook_names": [hook_name(record["hook"], layer) for layer in layers],
            "dtype": dtype,
            "tokens_per_layer": total,
            "batch_tokens": sizes,
            "shards": {str(layer): {"file": _shard(layer), "shape": [total, width],
                                    "bytes": total * width * np.dtype(np_dtype).itemsize} for layer in layers},
            "versions": library_versions(),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest



def _shard(layer: int) -> str:
    return f"layer-{layer}.bin"


def _view(np_dtype) -> torch.dtype:
    return {np.int16: torch.int16, np.float16: torch.float16, np.float32: torch.float32}[np_dtype]


class ActivationCache:
    """A cache folder written by `write_cache`, checked on opening (format, complete shards)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ResaError(f"--activations {str(path)!r}: no readable {MANIFEST} there ({type(exc).__name__}); "
                            "write a cache with resa-interp cache-activations") from None
        if self.manifest.get("format") != CACHE_FORMAT or self.manifest.get("version") != CACHE_VERSION:
            raise ResaError(f"--activations {str(path)!r}: not a version-{CACHE_VERSION} {CACHE_FORMAT}")
        self.torch_dtype, self.np_dtype = STORAGE[self.manifest["dtype"]]
        for shard in self.manifest["shards"].values():
            found = (self.path / shard["file"]).stat().st_size if (self.path / shard["file"]).is_file() else None
            if found != shard["bytes"]:
                raise ResaError(f"--activations {str(path)!r}: {shard['file']} has {found} bytes, the manifest says "
                                f"{shard['bytes']}; harvest the cache again")

    @property
    def layers(self) -> list[int]:
        """Layers the cache holds."""
        return list(self.manifest["layers"])

    @property
    def d_model(self) -> int:
        """Width of the cached activations."""
        return int(self.manifest["d_model"])

    def defaults(self) -> dict[str, Any]:
        """The Stage I settings that reproduce the cache's data (its layers included): the defaults of a run
        that trains from it."""
        return {**self.manifest["settings"], "layers": ",".join(map(str, self.layers))}

    def check(self, cfg: Any, layers: list[int]) -> None:
        """Refuse, in one line, a Stage I config (`SAETrainConfig`) that this cache cannot feed: another model,
        hook, width, layers the cache lacks, other data settings, or more tokens than it holds."""
        where, settings = f"--activations {self.path}", self.manifest["settings"]
        if cfg.hook != settings["hook"]:
            raise ResaError(f"{where} holds {settings['hook']} activations, not --hook {cfg.hook}")
        if str(resolve_model_path(cfg.model)) != self.manifest["model_path"]:
            raise ResaError(f"{where} was harvested from {self.manifest['model']!r} ({self.manifest['model_path']}), "
                            f"not from --model {cfg.model!r}")
        if settings["hook"] in HOOKS and model_shape(cfg.model).d_model != self.d_model:
            raise ResaError(f"{where} holds d_model {self.d_model}, the model has {model_shape(cfg.model).d_model}")
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise ResaError(f"{where} holds layers {','.join(map(str, self.layers))}, not layer "
                            f"{','.join(map(str, missing))}; pick --layers among them or harvest those too")
        for key in DATA_SETTINGS:
            if key not in ("model", "hook", "tokens") and getattr(cfg, key) != settings[key]:
                raise ResaError(f"{where} was harvested with {key}={settings[key]!r}, this run asks {key}="
                                f"{getattr(cfg, key)!r}; leave it unset (the cache's is the default) or harvest again")
        if settings["tokens"] is not None and (cfg.tokens is None or cfg.tokens > settings["tokens"]):
            raise ResaError(f"{where} holds {settings['tokens']:,} tokens per layer, --tokens {cfg.tokens or 'epoch'} "
                            "asks for more; harvest a larger cache")

    def feed(self, layers: list[int], device: torch.device) -> CacheFeed:
        """The cache's batches of `layers`, delivered as float32 on `device`."""
        return CacheFeed(self, layers, device)

    def rows(self, layer: int) -> np.memmap:
        """The memory-mapped shard of `layer`, [tokens, d_model] in the storage dtype."""
        shape = tuple(self.manifest["shards"][str(layer)]["shape"])
        return np.memmap(self.path / _shard(layer), dtype=self.np_dtype, mode="r", shape=shape)


@dataclass
class CacheFeed:
    """Batches read from an `ActivationCache`, the same ones (in the same order) its harvest produced."""

    cache: ActivationCache
    layers: list[int]
    device: torch.device

    @property
    def d_model(self) -> int:
        """Width of the activations."""
        return self.cache.d_model

    def batches(self, start: int) -> Iterator[Batch]:
        """Slices of the memory-mapped shards, batch by batch, from the batch whose first text is `start`."""
        seq_batch = self.cache.manifest["settings"]["seq_batch"]
        sizes = self.cache.manifest["batch_tokens"]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        maps = {layer: self.cache.rows(layer) for layer in self.layers}
        for index in range(start // seq_batch, len(sizes)):
            lo, hi = offsets[index], offsets[index + 1]
            chunks = {layer: [torch.from_numpy(np.array(rows[lo:hi])).view(self.cache.torch_dtype)
                              .to(self.device).float()] for layer, rows in maps.items()}
            yield index * seq_batch, chunks, hi - lo
