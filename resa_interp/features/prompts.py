"""The prompts a features run reads: from --prompt / --prompt-file or the R1 system prompt (`read_prompts`), and
each one as it is run, tokenized with the spans of its `<think>` and `</think>` markers (`prompt_info`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resa_interp.data import SYSTEM_PROMPTS, marker_spans
from resa_interp.errors import ResaError, check_choice
from resa_interp.features.config import FeatureConfig, require_markers

if TYPE_CHECKING:
    from resa_interp.model import Subject


@dataclass
class PromptInfo:
    """One prompt as it was run."""

    text: str
    token_ids: list[int]
    marker_spans: dict[str, list[list[int]]]
    excluded_positions: list[int]


def prompt_info(text: str, subject: Subject, cfg: FeatureConfig) -> PromptInfo:
    """One prompt as it is run: its tokens, the token spans of its markers and the positions left out."""
    require_markers(text)
    spans = marker_spans(text, subject.tokenizer)
    excluded = [0] if spans.bos_prepended or cfg.exclude_first else []
    return PromptInfo(
        text=text,
        token_ids=spans.token_ids,
        marker_spans={m: [list(s) for s in found] for m, found in spans.spans.items()},
        excluded_positions=excluded,
    )


def read_prompts(prompt: str | None, prompt_file: str | None, style: str = "r1") -> list[str]:
    """--prompt TEXT, --prompt-file (one prompt per line, or JSONL with a 'prompt'/'text' field), or the R1 system
    prompt in `style` ('r1': the authors' code, 'r1-paper': the printed one-line form)."""
    check_choice("--prompt-style", style, SYSTEM_PROMPTS)
    if prompt is not None and prompt_file is not None:
        raise ResaError("--prompt and --prompt-file: give one of them, not both")
    if prompt is not None:
        return [prompt]
    if prompt_file is None:
        return [SYSTEM_PROMPTS[style]]
    path = Path(prompt_file)
    if not path.is_file():
        raise ResaError(f"--prompt-file {prompt_file!r}: no such file")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
                prompts.append(row.get("prompt") or row["text"])
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise ResaError(
                    f"--prompt-file {prompt_file!r}: line {number} is not JSON with 'prompt' or 'text'"
                ) from None
        else:
            prompts.append(line)
    if not prompts:
        raise ResaError(f"--prompt-file {prompt_file!r}: holds no prompts")
    return prompts
