"""Activations at many hookpoints from ONE HF forward pass per batch.

Forward hooks on the HF modules keep a reference to each selected layer's output (no copy), and the pass
stops right after the deepest selected layer, so the final norm and the unembedding are never computed. The
values are exactly TransformerLens' (`blocks.{l}.hook_resid_post`, `hook_mlp_out`, ...; tests check it). Hooks
without an HF module are read from the TransformerLens view instead, in the same shapes.

Trigger texts all begin with the same R1 system prompt, about two thirds of each text. The token prefix that
every text shares is run once; each batch then runs only its suffixes on a copy of the prefix's KV cache, and
the prefix activations are repeated per text. The activations are the ones a full pass gives (causal
attention: a prefix position never sees the suffix), at about a third of the cost. Packed chunks
(`encode_packed`) start anywhere in the text stream, share no prefix and run as whole rows.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from resa_interp.data import pack_texts, system_prompt_length
from resa_interp.errors import ResaError
from resa_interp.model.hooks import NOT_PER_POSITION, hf_point, hook_name
from resa_interp.model.splice import rewrite_at


@dataclass(frozen=True)
class EncodedText:
    """Token ids of one trigger text (or packed chunk), and where its question/answer part starts (after the
    system prompt; a chunk's length, i.e. none, for a packed chunk, which straddles texts)."""

    ids: list[int]
    qa_start: int


@dataclass
class TextBatch:
    """Right-padded token batch (suffixes after `prefix_len` shared tokens) with the masks the stages need."""

    input_ids: Tensor
    attention_mask: Tensor
    train_mask: Tensor
    """Positions that count: real tokens, minus the first `exclude_first` positions of each full text."""
    qa_mask: Tensor
    """Subset of train_mask inside the question/answer part (after the R1 system prompt)."""
    prefix_len: int = 0

    @property
    def n_tokens(self) -> int:
        """Number of counted positions in the batch's own tokens (the shared prefix not included)."""
        return int(self.train_mask.sum())


def encode_texts(tokenizer, texts: Sequence[str], max_len: int = 1024) -> list[EncodedText]:
    """Tokenise texts (special tokens as the tokenizer adds them) and locate each question/answer part."""
    out = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, truncation=True, max_length=max_len)
        qa_char = system_prompt_length(text)
        offsets = enc["offset_mapping"]
        qa_start = next((i for i, (s, e) in enumerate(offsets) if e > s and s >= qa_char), len(offsets))
        out.append(EncodedText(list(enc["input_ids"]), qa_start))
    return out


def encode_packed(tokenizer, texts: Sequence[str], max_len: int) -> list[EncodedText]:
    """The texts packed as the authors' code does (`data.packing.pack_texts`): full-length chunks, no q/a part."""
    return [EncodedText(ids, len(ids)) for ids in pack_texts(tokenizer, texts, max_len)]


def shared_prefix_length(texts: Sequence[EncodedText]) -> int:
    """Length of the token prefix common to all texts, leaving every text at least one token of its own."""
    if not texts:
        return 0
    first = texts[0].ids
    length = min(len(t.ids) for t in texts) - 1
    for text in texts[1:]:
        i = 0
        while i < length and text.ids[i] == first[i]:
            i += 1
        length = i
    return max(length, 0)


def make_batch(texts: Sequence[EncodedText], pad_id: int, exclude_first: int = 1, prefix_len: int = 0) -> TextBatch:
    """Right-pad the texts' tokens after `prefix_len` into one batch; masks mark counted and q/a positions."""
    length = max(len(t.ids) for t in texts) - prefix_len
    ids = torch.full((len(texts), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(texts), length), dtype=torch.long)
    qa = torch.zeros((len(texts), length), dtype=torch.bool)
    for row, text in enumerate(texts):
        own = text.ids[prefix_len:]
        ids[row, : len(own)] = torch.tensor(own)
        attn[row, : len(own)] = 1
        qa[row, max(text.qa_start - prefix_len, 0) : len(own)] = True
    train = attn.bool().clone()
    train[:, : max(exclude_first - prefix_len, 0)] = False
    return TextBatch(ids, attn, train, qa & train, prefix_len)


def iter_batches(
    texts: Sequence[EncodedText],
    batch_size: int,
    pad_id: int,
    exclude_first: int = 1,
    start: int = 0,
    prefix_len: int = 0,
) -> Iterator[tuple[int, TextBatch]]:
    """(index of the batch's first text, batch) over `texts` from `start`, `batch_size` texts at a time."""
    for first in range(start, len(texts), batch_size):
        yield first, make_batch(texts[first : first + batch_size], pad_id, exclude_first, prefix_len)


class _StopForward(Exception):
    pass


def cache_kwarg(model: nn.Module) -> str:
    """transformers >= 5.2x calls the KV-cache argument `cache`; earlier releases `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class Prefix:
    """A shared token prefix run once: its activations per layer [len, d] and its KV cache."""

    ids: Tensor
    acts: dict[int, Tensor]
    cache: object
    logits: Tensor | None = None
    """[len, vocab] when asked for."""

    def counted(self, exclude_first: int) -> dict[int, Tensor]:
        """The prefix activations at counted positions (the first `exclude_first` dropped)."""
        return {layer: act[exclude_first:] for layer, act in self.acts.items()}


class Harvester:
    """Capture `hook` at `layers` in one forward pass, as layer -> [batch, seq, d] (attention heads flattened).

    Where the HF model computes the hook at every layer (`hooks.hf_point`), forward hooks on its modules read it
    and the pass stops after the deepest layer (unless `stop_early` is False and the logits are wanted too); else
    the TransformerLens `view` of the same weights runs with `run_with_cache` (batches right-padded, as
    `make_batch` builds them: causal attention keeps padding out of the real positions)."""

    def __init__(self, model: nn.Module, hook: str, layers: Sequence[int], stop_early: bool = True,
                 view: nn.Module | None = None):
        self.model = model
        self.stop_early = stop_early
        self.layers = sorted(layers)
        points = {layer: hf_point(model, hook, layer) for layer in self.layers}
        self.points = points if all(p is not None for p in points.values()) else None
        """Layer -> HF point (the fast path), or None: the view computes the activations."""
        self.view = view if self.points is None else None
        self.names = {layer: hook_name(hook, layer) for layer in self.layers}
        if self.points is None:
            if view is None:
                raise ResaError(f"hook {hook!r}: the HF model has no module for it and no TransformerLens view was "
                                "given (Subject.harvester supplies one)")
            missing = [name for name in self.names.values() if name not in view.hook_dict]
            if missing:
                first = f"blocks.{self.layers[0]}."
                have = sorted(n.removeprefix(first) for n in view.hook_dict
                              if n.startswith(first) and n.removeprefix(first) not in NOT_PER_POSITION)
                raise ResaError(f"hook {hook!r} is not a hook of the TransformerLens view of this model; its block "
                                f"hooks: {', '.join(have)}")
        self._last = self.layers[-1]
        self._seen: dict[int, Tensor] = {}

    def _hook(self, layer: int):
        def seen(x: Tensor) -> Tensor:
            self._seen[layer] = x
            if layer == self._last and self.stop_early:
                raise _StopForward
            return x

        return seen

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, prefix: Prefix | None = None):
        """Layer -> activation [batch, seq, d] for one batch (references to the model's own outputs)."""
        return self.capture(input_ids, attention_mask, prefix)[0]

    @torch.inference_mode()
    def capture(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, prefix: Prefix | None = None
    ) -> tuple[dict[int, Tensor], Tensor | None]:
        """(layer -> activation, logits or None when the pass stopped early) for one batch, continuing
        from `prefix` (shared by every row) when one is given."""
        device = next(self.model.parameters()).device
        input_ids = input_ids.to(device)
        if self.points is None:
            n, p = input_ids.shape[0], 0 if prefix is None else prefix.ids.shape[-1]
            ids = input_ids if prefix is None else torch.cat([prefix.ids.expand(n, -1), input_ids], dim=1)
            acts, logits = self._run_view(ids)
            return {layer: act[:, p:] for layer, act in acts.items()}, None if self.stop_early else logits[:, p:]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        kwargs: dict = {"use_cache": False}
        if prefix is not None:
            n, p = input_ids.shape[0], prefix.ids.shape[-1]
            cache = copy.deepcopy(prefix.cache)
            cache.batch_repeat_interleave(n)
            kwargs = {
                cache_kwarg(self.model): cache,
                "use_cache": True,
                "position_ids": torch.arange(p, p + input_ids.shape[1], device=device).expand(n, -1),
            }
            mask = torch.cat([torch.ones(n, p, dtype=mask.dtype, device=device), mask], dim=1)
        seen, out = self._run(input_ids=input_ids, attention_mask=mask, **kwargs)
        return seen, None if out is None else out.logits

    @torch.inference_mode()
    def run_prefix(self, ids: Sequence[int], keep_logits: bool = False) -> Prefix:
        """Run the shared prefix once (to the end, keeping its KV cache) and keep its activations."""
        device = next(self.model.parameters()).device
        tensor = torch.tensor([list(ids)], device=device)
        if self.points is None:
            acts, logits = self._run_view(tensor)
            return Prefix(tensor, {layer: act[0].clone() for layer, act in acts.items()}, None,
                          logits[0] if keep_logits else None)
        stop, self.stop_early = self.stop_early, False
        try:
            seen, out = self._run(input_ids=tensor, use_cache=True, logits_to_keep=0 if keep_logits else 1)
        finally:
            self.stop_early = stop
        cache = getattr(out, "cache", None) or out.past_key_values
        acts = {layer: act[0].clone() for layer, act in seen.items()}
        return Prefix(tensor, acts, cache, out.logits[0] if keep_logits else None)

    def capture_full(
        self, batch: TextBatch, prefix: Prefix | None
    ) -> tuple[dict[int, Tensor], Tensor | None]:
        """Like `capture` on a suffix batch, but returned over whole texts: the prefix's activations (and
        logits) repeated in front of every row."""
        acts, logits = self.capture(batch.input_ids, batch.attention_mask, prefix)
        if prefix is None:
            return acts, logits
        rows = batch.input_ids.shape[0]
        full = {
            layer: torch.cat([prefix.acts[layer].expand(rows, -1, -1), act], dim=1) for layer, act in acts.items()
        }
        if logits is not None and prefix.logits is not None:
            logits = torch.cat([prefix.logits.expand(rows, -1, -1), logits], dim=1)
        return full, logits

    def _run_view(self, ids: Tensor) -> tuple[dict[int, Tensor], Tensor]:
        """(layer -> activation [batch, seq, d], logits) from the TransformerLens view."""
        wanted = set(self.names.values())
        logits, cache = self.view.run_with_cache(ids, names_filter=lambda name: name in wanted)
        acts = {}
        for layer, name in self.names.items():
            if name not in cache:
                raise ResaError(f"hook {name!r}: the TransformerLens view of this model never computes it")
            act = cache[name]
            if act.shape[:2] != ids.shape:
                raise ResaError(f"hook {name!r} gives activations of shape {tuple(act.shape)}, not one vector per "
                                f"position of a {tuple(ids.shape)} batch")
            acts[layer] = act.flatten(2)
        return acts, logits

    def _run(self, **kwargs) -> tuple[dict[int, Tensor], object | None]:
        self._seen = {}
        # prepend: see each module's own activation, before any splice hook replaces it
        handles = [rewrite_at(point, self._hook(layer), prepend=True) for layer, point in self.points.items()]
        out = None
        try:
            out = self.model(**kwargs)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        seen, self._seen = self._seen, {}
        return seen, out
