"""Sequence packing as sparsify's chunk_and_tokenize: EOS-joined stream, exact-length chunks, the last chunk of
every group dropped; markers and masks in packed chunks; packing in the paper presets only."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import processors
from transformers import AutoTokenizer

from resa_interp.data.packing import pack_texts
from resa_interp.data.synthetic import synthetic_qa
from resa_interp.data.templates import END_THINK, THINK, format_trigger, marker_spans
from resa_interp.errors import ResaError
from resa_interp.model.harvest import encode_packed, make_batch

TEXTS = [format_trigger(e.problem, e.answer) for e in synthetic_qa(30, seed=3)]


@pytest.fixture
def tokenizer(tiny_qwen2):
    return AutoTokenizer.from_pretrained(tiny_qwen2)


def _stream(tokenizer, texts: list[str]) -> list[int]:
    """EOS, text 1, EOS, text 2, ...: each text tokenised on its own (an independent route to the joined stream)."""
    ids = []
    for text in texts:
        ids += [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def _expected(stream: list[int], size: int) -> list[list[int]]:
    """Every `size`-long piece of the stream but the last piece (dropped even when it happens to be full)."""
    return [stream[i * size : (i + 1) * size] for i in range(math.ceil(len(stream) / size) - 1)]


@pytest.mark.parametrize("group", [2048, 7])
def test_chunks_are_the_eos_joined_stream_cut_to_length(tokenizer, group):
    chunks = pack_texts(tokenizer, TEXTS, 64, group=group)
    expected = []
    for first in range(0, len(TEXTS), group):
        stream = _stream(tokenizer, TEXTS[first : first + group])
        kept = _expected(stream, 64)
        assert 0 < len(stream) - 64 * len(kept) <= 64  # the remainder dropped: at most one chunk's worth
        expected += kept
    assert chunks == expected
    assert all(len(chunk) == 64 for chunk in chunks)
    assert chunks[0][0] == tokenizer.eos_token_id  # the stream starts with EOS
    if group == 7:  # five groups, each dropping its own remainder
        assert len(chunks) < len(pack_texts(tokenizer, TEXTS, 64))


def test_a_bos_adding_tokenizer_puts_bos_in_front_of_every_chunk(tokenizer):
    # like R1-Distill's tokenizer: a post-processor prepends BOS to every encoding, overflow pieces included
    tokenizer.bos_token = "<|im_start|>"
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    chunks = pack_texts(tokenizer, TEXTS, 64)
    assert chunks == [[bos] + piece for piece in _expected(_stream(tokenizer, TEXTS), 63)]


def test_chunk_length_is_capped_by_the_tokenizer_and_short_data_is_refused(tokenizer):
    tokenizer.model_max_length = 48
    assert {len(chunk) for chunk in pack_texts(tokenizer, TEXTS, 64)} == {48}
    with pytest.raises(ResaError, match=r"packing: 1 texts give \d+ tokens, no full chunk of 48"):
        pack_texts(tokenizer, ["1+1=2"], 64)


def test_markers_and_masks_in_packed_chunks(tokenizer):
    size = 256
    chunks = encode_packed(tokenizer, TEXTS, size)
    flat = torch.tensor([t.ids for t in chunks]).flatten()
    # every marker of every text, found by character offsets in that text alone, moved to its stream position
    start, expected = 0, {THINK: [], END_THINK: []}
    for text in TEXTS:
        start += 1  # the EOS in front of the text
        spans = marker_spans(text, tokenizer, add_special_tokens=False)
        for marker, found in spans.spans.items():
            expected[marker] += [start + s for s, _ in found if start + s < flat.numel()]
        start += len(spans.token_ids)
    for marker in (THINK, END_THINK):
        marker_id = tokenizer.convert_tokens_to_ids(marker)
        assert (flat == marker_id).nonzero().flatten().tolist() == expected[marker]
    assert len(expected[THINK]) >= 3 * (len(TEXTS) - 2)  # three per text; only the dropped tail is missing
    assert all(tokenizer.eos_token_id in t.ids[1:] for t in chunks)  # every chunk straddles a text boundary
    batch = make_batch(chunks[:5], tokenizer.eos_token_id, exclude_first=1)
    assert batch.input_ids.shape == (5, size) and bool(batch.attention_mask.all())  # no padding
    assert batch.train_mask[:, 0].sum() == 0 and bool(batch.train_mask[:, 1:].all())  # only each chunk's sink
    assert batch.n_tokens == 5 * (size - 1) and not bool(batch.qa_mask.any())


def test_packing_is_on_in_the_paper_presets_only():
    from resa_interp.presets import with_preset
    from resa_interp.sae import PRESETS, SAETrainConfig
    from resa_interp.tuning import preset_config

    paper = with_preset(SAETrainConfig, PRESETS, "paper")
    assert (paper.pack, paper.max_seq_len, paper.batch_tokens) == (True, 2048, 16 * 2048)
    assert not SAETrainConfig().pack
    assert with_preset(SAETrainConfig, PRESETS, "paper", pack=False).pack is False  # --no-pack wins
    assert preset_config("paper").pack and preset_config("paper").max_length == 2048
    assert not preset_config("cpu").pack
