"""Data: question/answer pairs (the built-in synthetic set, hub datasets, local files) and the `<think>` templates
that turn them into CoT-free trigger text (or, for a source model, text with a worked solution).

Takes a dataset spec; gives `QAExample`s, trigger strings (`format_trigger`), the token spans of `<think>` and
`</think>` in a prompt (`marker_spans`) and texts packed into fixed-length token chunks (`pack_texts`). Every later
stage reads its text through here.
"""

from resa_interp.data.example import QAExample
from resa_interp.data.packing import chunk_length, pack_texts
from resa_interp.data.qa import SYNTHETIC, SYNTHETIC_SIZE, dataset_fingerprint, final_answer, load_qa
from resa_interp.data.synthetic import NOVEL_KINDS, synthetic_qa
from resa_interp.data.templates import (
    COT_FREE_TEMPLATES,
    ELICITATION_PROMPTS,
    END_THINK,
    R1_PAPER_SYSTEM_PROMPT,
    R1_SYSTEM_PROMPT,
    SYSTEM_PROMPTS,
    TEMPLATES,
    THINK,
    TRACE_TEMPLATES,
    MarkerSpans,
    elicitation_prompt,
    format_trigger,
    marker_spans,
    system_prompt_length,
)
from resa_interp.data.traces import TRACE_KINDS, traced_qa

__all__ = [
    "COT_FREE_TEMPLATES",
    "ELICITATION_PROMPTS",
    "TRACE_KINDS",
    "TRACE_TEMPLATES",
    "END_THINK",
    "MarkerSpans",
    "NOVEL_KINDS",
    "QAExample",
    "R1_PAPER_SYSTEM_PROMPT",
    "R1_SYSTEM_PROMPT",
    "SYNTHETIC",
    "SYNTHETIC_SIZE",
    "SYSTEM_PROMPTS",
    "TEMPLATES",
    "THINK",
    "chunk_length",
    "dataset_fingerprint",
    "final_answer",
    "elicitation_prompt",
    "format_trigger",
    "load_qa",
    "marker_spans",
    "pack_texts",
    "synthetic_qa",
    "system_prompt_length",
    "traced_qa",
]
