"""Templates and marker spans, for single-token and multi-token markers."""

from __future__ import annotations

import hashlib

import pytest
from transformers import AutoTokenizer

from resa_interp.data.templates import (
    R1_PAPER_SYSTEM_PROMPT,
    R1_SYSTEM_PROMPT,
    SYSTEM_PROMPTS,
    format_trigger,
    marker_spans,
    system_prompt_length,
)
from resa_interp.errors import ResaError

# Digests of the authors' strings, computed from shangshang-wang/Resa at commit
# 4fe74becfaaa67fbae0d290cc5184824a3459b48 (git -C /work/.mirror/shangshang-wang+Resa/repo show HEAD:<file>):
#   AUTHORS_PROMPT: sha256 of the value of SAE_FINE_TUNE_SYSTEM_PROMPT in resa/utils/prompt.py, read with
#     ast.literal_eval of that assignment, encoded as UTF-8;
#   AUTHORS_EXAMPLE: sha256 of the f-string of resa/sae/preprocess.py:19 (make_conv_for_sae_grpo), taken from
#     that file's AST and evaluated with that prompt, problem=EXAMPLE[0], answer=EXAMPLE[1].
AUTHORS_PROMPT = "7eb47c3a2ca58c016ef1c47f1296c5556a3bbf2f69670525a1279f4d8c5f6005"
AUTHORS_EXAMPLE = "f3724437ac1a6a939b37d660e9dcb0eaefde5a6883add8e67eef560aef96dc43"
EXAMPLE = (" Let f(x) = {x^2}. Find f(3).\n", "9")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_r1_prompt_and_template_are_the_authors_strings():
    assert _sha256(R1_SYSTEM_PROMPT) == AUTHORS_PROMPT
    assert _sha256(format_trigger(*EXAMPLE)) == AUTHORS_EXAMPLE
    assert _sha256(format_trigger(*EXAMPLE, "r1")) == AUTHORS_EXAMPLE
    # the printed form differs only in whitespace, and is a named alternative
    assert R1_PAPER_SYSTEM_PROMPT != R1_SYSTEM_PROMPT
    assert R1_PAPER_SYSTEM_PROMPT.split() == R1_SYSTEM_PROMPT.split()
    assert "\n" not in R1_PAPER_SYSTEM_PROMPT and "  " not in R1_PAPER_SYSTEM_PROMPT


@pytest.mark.parametrize("problem, answer", [("What is 2+3?", "5"), (" a {b} c\t", " {0} "), ("", "x\ny")])
def test_templates_follow_the_authors_f_string(problem, answer):
    for style, prompt in SYSTEM_PROMPTS.items():
        SAE_FINE_TUNE_SYSTEM_PROMPT = prompt if style == "r1" else prompt + "\n"  # noqa: N806
        # resa/sae/preprocess.py:19 verbatim
        expected = f"{SAE_FINE_TUNE_SYSTEM_PROMPT}User:\n {problem}\n\nAssistant:\n <think> {answer} </think>\n<answer> Answer: {answer}</answer>"  # noqa: E501
        text = format_trigger(problem, answer, style)
        assert text == expected
        assert system_prompt_length(text) == len(prompt)
    short = f"Problem: {problem} <think> {answer} </think> <answer> Answer: {answer} </answer>"
    assert format_trigger(problem, answer, "short") == short
    assert system_prompt_length(short) == 0
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


@pytest.mark.parametrize(
    "prompt, n_tokens, think, end_think",
    [  # measured on this tokenizer: <think> = ' <' 'think' '>'
        (R1_SYSTEM_PROMPT, 91, [(50, 53), (72, 75)], [(53, 56), (78, 81)]),
        (R1_PAPER_SYSTEM_PROMPT, 85, [(47, 50), (68, 71)], [(50, 53), (74, 77)]),
    ],
    ids=["r1", "r1-paper"],
)
def test_multi_token_markers_in_the_embedded_tokenizer(embedded, prompt, n_tokens, think, end_think):
    spans, decoded = _decoded_spans(embedded.tokenizer, prompt)
    assert prompt.count("<think>") == prompt.count("</think>") == 2
    assert decoded == {"<think>": ["<think>"] * 2, "</think>": ["</think>"] * 2}  # every marker found, exactly
    assert len(spans.token_ids) == n_tokens
    assert spans.spans == {"<think>": think, "</think>": end_think}


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
