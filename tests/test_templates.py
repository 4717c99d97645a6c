"""Templates and marker spans, for single-token and multi-token markers."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from resa_interp.data.templates import R1_SYSTEM_PROMPT, format_trigger, marker_spans
from resa_interp.errors import ResaError


def test_r1_template_matches_the_authors_layout():
    text = format_trigger(" What is 2+3? ", "5")
    assert text.startswith(R1_SYSTEM_PROMPT + "\nUser:\n What is 2+3?\n\nAssistant:\n <think> 5 </think>\n")
    assert text.endswith("<answer> Answer: 5</answer>")
    assert format_trigger("Q?", "7", "short") == "Problem: Q? <think> 7 </think> <answer> Answer: 7 </answer>"
    with pytest.raises(ResaError, match="template 'long' is unknown"):
        format_trigger("Q", "A", "long")


def _decoded_spans(tokenizer, text):
    spans = marker_spans(text, tokenizer)
    return spans, {
        m: [tokenizer.decode(spans.token_ids[s:e]).strip() for s, e in found] for m, found in spans.spans.items()
    }


def test_single_token_markers(tiny_qwen2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    spans, decoded = _decoded_spans(tokenizer, R1_SYSTEM_PROMPT)
    assert all(e - s == 1 for found in spans.spans.values() for s, e in found)
    assert decoded == {"<think>": ["<think>"] * 2, "</think>": ["</think>"] * 2}
    assert not spans.bos_prepended


def test_multi_token_markers_in_the_embedded_tokenizer(embedded):
    spans, decoded = _decoded_spans(embedded.tokenizer, R1_SYSTEM_PROMPT)
    # measured on this tokenizer: 85 tokens, <think> = ' <' 'think' '>'
    assert len(spans.token_ids) == 85
    assert spans.spans == {"<think>": [(47, 50), (68, 71)], "</think>": [(50, 53), (74, 77)]}
    assert decoded == {"<think>": ["<think>"] * 2, "</think>": ["</think>"] * 2}
    assert spans.marker_positions == set(range(47, 53)) | set(range(68, 71)) | set(range(74, 77))


def test_bos_is_recorded_and_outside_spans(tiny_qwen2, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    tokenizer.bos_token = "<|im_start|>"
    # a post-processor that prepends BOS, like R1-Distill's tokenizer
    from tokenizers import processors

    bos_id = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos_id)]
    )
    spans = marker_spans("x <think> y </think>", tokenizer)
    assert spans.bos_prepended and spans.token_ids[0] == bos_id
    assert 0 not in spans.marker_positions
    assert len(spans.spans["<think>"]) == 1 and len(spans.spans["</think>"]) == 1
