"""Sequence packing as the authors' code does it (sparsify's `chunk_and_tokenize`): texts joined with the EOS
token into one stream, cut into chunks of exactly the chunk length.

Per group of `PACK_GROUP` texts (the `datasets.map` batch of the original): the text
`EOS + text_1 + EOS + text_2 + ...` is tokenised once, with truncation at the chunk length and the overflow
returned as further chunks (a fast tokenizer adds its special tokens, e.g. R1-Distill's BOS, to every chunk,
so the chunk holds that many fewer stream tokens); the group's last chunk is always dropped, full or not.
Attention is not masked at the text boundaries and positions are not reset: a chunk is one ordinary sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from resa_interp.errors import ResaError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PACK_GROUP = 2048
"""Texts tokenised together; each group drops its last chunk (sparsify maps batches of 2048 texts)."""
DEFAULT_SEPARATOR = "<|endoftext|>"
"""Separator when the tokenizer has no EOS token (sparsify's fallback)."""


def chunk_length(tokenizer: PreTrainedTokenizerBase, max_len: int) -> int:
    """The chunk length: `max_len`, or the tokenizer's `model_max_length` when that is shorter."""
    return min(int(tokenizer.model_max_length), max_len)


def pack_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int, group: int = PACK_GROUP
) -> list[list[int]]:
    """Token ids of the chunks, every one exactly `chunk_length(tokenizer, max_len)` long, in stream order."""
    if not tokenizer.is_fast:
        raise ResaError(f"packing needs a fast tokenizer; {type(tokenizer).__name__} is a slow one")
    size = chunk_length(tokenizer, max_len)
    separator = tokenizer.eos_token or DEFAULT_SEPARATOR
    chunks: list[list[int]] = []
    total = 0
    for first in range(0, len(texts), group):
        stream = separator.join(["", *texts[first : first + group]])
        encoded = tokenizer(
            stream, max_length=size, truncation=True, return_overflowing_tokens=True, return_attention_mask=False
        )
        total += sum(len(ids) for ids in encoded["input_ids"])
        chunks.extend(list(ids) for ids in encoded["input_ids"][:-1])
    if not chunks:
        raise ResaError(
            f"packing: {len(texts)} texts give {total} tokens, no full chunk of {size} besides the last one, which "
            f"is always dropped (as sparsify does); use more examples or a shorter chunk length"
        )
    return chunks
