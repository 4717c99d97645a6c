"""The R1 system prompt, the CoT-free trigger/elicitation templates, and `<think>`/`</think>` token spans."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resa_interp.errors import ResaError, check_choice

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

R1_SYSTEM_PROMPT = (
    "\nA conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "The assistant first thinks about the reasoning process in the mind and then provides the user\n"
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and\n"
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think>\n"
    "<answer> answer here </answer>.\n"
)
"""DeepSeek-R1's system prompt exactly as the authors' code has it (`SAE_FINE_TUNE_SYSTEM_PROMPT` in
resa/utils/prompt.py: a leading and a trailing newline, line breaks inside): the head of every 'r1' trigger
text and the default prompt of prompt-only feature extraction."""

R1_PAPER_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)
"""The same prompt in its printed one-paragraph form (single spaces, no line breaks): 'r1-paper'."""

SYSTEM_PROMPTS = {"r1": R1_SYSTEM_PROMPT, "r1-paper": R1_PAPER_SYSTEM_PROMPT}
"""Named system prompts: 'r1' the authors' code (default), 'r1-paper' the printed form."""

_TURNS = "User:\n {problem}\n\nAssistant:\n <think> {answer} </think>\n<answer> Answer: {answer}</answer>"
_ELICIT = "User:\n {problem}\n\nAssistant:\n <think>"

TEMPLATES = {
    "r1": R1_SYSTEM_PROMPT + _TURNS,
    "r1-paper": R1_PAPER_SYSTEM_PROMPT + "\n" + _TURNS,
    "short": "Problem: {problem} <think> {answer} </think> <answer> Answer: {answer} </answer>",
    "r1-trace": R1_SYSTEM_PROMPT + _ELICIT + " {trace} </think>\n<answer> Answer: {answer}</answer>",
}
"""Text templates. CoT-free: 'r1', the authors' f-string (resa/sae/preprocess.py, make_conv_for_sae_grpo), system
prompt then User/Assistant turns; 'r1-paper': the printed system prompt, a newline, the same turns; 'short':
the template printed in the paper's section 2.1. With a chain of thought: 'r1-trace', the 'r1' turns with the
example's worked solution between `<think>` and `</think>` (what a transfer experiment's source is taught)."""
TRACE_TEMPLATES = ("r1-trace",)
"""Templates that need each example's `trace`."""
COT_FREE_TEMPLATES = tuple(name for name in TEMPLATES if name not in TRACE_TEMPLATES)
"""Templates without a chain of thought (Stage I's trigger text)."""
ELICITATION_PROMPTS = {"r1": R1_SYSTEM_PROMPT + _ELICIT, "r1-trace": R1_SYSTEM_PROMPT + _ELICIT}
"""What a model is given to answer one question in a template's format: the text up to and including the
assistant's opening `<think>` (the model writes the rest)."""

THINK, END_THINK = "<think>", "</think>"


def format_trigger(problem: str, answer: str, template: str = "r1", trace: str | None = None) -> str:
    """One text: the question, then between `<think>` and `</think>` only the final answer (CoT-free, inserted as
    given, as the authors' f-string does) or, for a template of `TRACE_TEMPLATES`, the worked solution `trace`."""
    check_choice("template", template, TEMPLATES)
    if template in TRACE_TEMPLATES and not trace:
        raise ResaError(f"template {template!r} puts a worked solution between <think> and </think>, and this "
                        f"example has none; give data with a trace column, or a CoT-free template "
                        f"({', '.join(COT_FREE_TEMPLATES)})")
    return TEMPLATES[template].format(problem=problem, answer=answer, trace=trace)


def elicitation_prompt(problem: str, template: str = "r1") -> str:
    """The prompt a model answers `problem` from, in `template`'s format, ending with the opening `<think>`."""
    check_choice("elicitation template", template, ELICITATION_PROMPTS)
    return ELICITATION_PROMPTS[template].format(problem=problem)


def system_prompt_length(text: str) -> int:
    """Characters of the named system prompt that `text` starts with (0 when it starts with none)."""
    return next((len(p) for p in SYSTEM_PROMPTS.values() if text.startswith(p)), 0)


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
