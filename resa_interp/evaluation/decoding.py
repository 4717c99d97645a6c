"""Greedy decoding of a padded batch that drops every row from the batch at the step it stops.

`model.generate` keeps a finished row in the batch until the last row stops, decoding padding for it; when most
answers are short and a few run to `max_new_tokens` (tuned models that never close their answer), that padding is
most of the decode. Here each step runs only the rows still going: the key/value cache, the attention mask, the
positions and the tokens so far are cut to those rows (`Cache.batch_select_indices`). Every step is the
computation `generate` makes for a row (positions from the attention mask, logits of the last position only, the
argmax of the float32 logits, the same stopping criteria), so a row's tokens do not depend on when the others stop.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, StoppingCriteriaList


@dataclass(frozen=True)
class Decoded:
    """One row's greedy continuation."""

    tokens: list[int]
    """The generated tokens, up to and including the one that stopped the row (none after it)."""
    scores: torch.Tensor | None = None
    """[steps, vocabulary] float32 next-token logits of every step, when asked for."""


def _cache_of(out: Any) -> tuple[str, Any]:
    """The name transformers gives the cache (`cache` from 5.x, `past_key_values` before) and the cache."""
    keyword = "cache" if "cache" in out else "past_key_values"
    return keyword, out[keyword]


def greedy_decode(
    model: PreTrainedModel,
    inputs: dict[str, Any],
    max_new_tokens: int,
    stopping: StoppingCriteriaList,
    keep_scores: bool = False,
) -> list[Decoded]:
    """Greedy continuations of every row of `inputs` (`input_ids`, `attention_mask` and optionally a cache of their
    first tokens, as `PromptPrefix.batch` gives them): at most `max_new_tokens` tokens a row, a row leaving the
    batch at the step `stopping` (transformers' criteria, one verdict per row) says it stops. `keep_scores` keeps
    every step's logits per row (memory: steps x vocabulary floats a row)."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    keyword = next((k for k in ("cache", "past_key_values") if k in inputs), None)
    cache = inputs.get(keyword) if keyword else None
    cached = cache.get_seq_length() if cache is not None else 0
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    rows = list(range(ids.shape[0]))  # the input row of each row still in the batch
    tokens: list[list[int]] = [[] for _ in rows]
    scores: list[list[torch.Tensor]] = [[] for _ in rows]
    step_ids, step_positions = ids[:, cached:], positions[:, cached:]
    with torch.no_grad():
        for step in range(max_new_tokens):
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, use_cache=True,
                        **({keyword: cache} if cache is not None else {}), **extra)
            keyword, cache = _cache_of(out)
            logits = out.logits[:, -1].to(dtype=torch.float32, copy=True)
            chosen = logits.argmax(dim=-1)
            ids = torch.cat([ids, chosen[:, None]], dim=-1)
            for i, (row, token) in enumerate(zip(rows, chosen.tolist())):
                tokens[row].append(token)
                if keep_scores:
                    scores[row].append(logits[i])
            going = ~stopping(ids, logits)
            if step == max_new_tokens - 1 or not going.any():
                break
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            step_positions = step_positions[:, -1:] + 1
            if not going.all():
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                ids, mask, step_positions, chosen = ids[keep], mask[keep], step_positions[keep], chosen[keep]
                rows = [rows[i] for i in keep.tolist()]
            step_ids = chosen[:, None]
    return [Decoded(t, torch.stack(s) if keep_scores else None) for t, s in zip(tokens, scores)]
