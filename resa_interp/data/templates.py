"""The R1 system prompt, the CoT-free trigger/elicitation templates, and `<think>`/`</think>` token spans."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resa_interp.errors import ResaError, check_choice

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)
"""DeepSeek-R1's system prompt: the prompt of prompt-only feature extraction and the head of every trigger text."""

TEMPLATES = {
    "r1": R1_SYSTEM_PROMPT
    + "\nUser:\n {problem}\n\nAssistant:\n <think> {answer} </think>\n<answer> Answer: {answer}</answer>",
    "short": "Problem: {problem} <think> {answer} </think> <answer> Answer: {answer} </answer>",
}
"""CoT-free templates: 'r1' is the authors' code (system prompt, User/Assistant turns), 'short' the paper's text."""

THINK, END_THINK = "<think>", "</think>"


def format_trigger(problem: str, answer: str, template: str = "r1") -> str:
    """One CoT-free text: the question, then only the final answer between `<think>` and `</think>`."""
    check_choice("template", template, TEMPLATES)
    return TEMPLATES[template].format(problem=problem.strip(), answer=answer.strip())


@dataclass(frozen=True)
class MarkerSpans:
    """Token ids of a text and the half-open token spans of each `<think>` and `</think>` occurrence."""

    token_ids: list[int]
    spans: dict[str, list[tuple[int, int]]]
    bos_prepended: bool
    """True when the tokenizer put a BOS token at position 0 that is not part of the text."""

    @property
    def marker_positions(self) -> set[int]:
        """Every token position inside some marker span."""
        return {p for spans in self.spans.values() for s, e in spans for p in range(s, e)}


def marker_spans(text: str, tokenizer: PreTrainedTokenizerBase, add_special_tokens: bool = True) -> MarkerSpans:
    """Locate every `<think>`/`</think>` in `text` by character offsets (single- or multi-token markers).

    A token belongs to a marker's span when its character range overlaps the marker's characters; tokens
    with empty ranges (BOS and other inserted specials) belong to none.
    """
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    spans: dict[str, list[tuple[int, int]]] = {}
    for marker in (THINK, END_THINK):
        found = []
        for match in re.finditer(re.escape(marker), text):
            a, b = match.span()
            hit = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
            if not hit:
                raise ResaError(f"marker {marker} at character {a} maps to no token; the tokenizer gave no offsets")
            found.append((hit[0], hit[-1] + 1))
        spans[marker] = found
    bos = tokenizer.bos_token_id
    bos_prepended = bool(ids) and bos is not None and ids[0] == bos and offsets[0] == (0, 0) and add_special_tokens
    return MarkerSpans(token_ids=ids, spans=spans, bos_prepended=bos_prepended)
