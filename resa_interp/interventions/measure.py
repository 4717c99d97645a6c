"""What an intervention does, measured against the clean model: teacher-forced changes of log-probability and KL,
greedy generations, bootstrap intervals over texts (`MEASURES` says how; it is written into effects.json)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from resa_interp.data import END_THINK
from resa_interp.interventions.hook import Intervention, LatentEdit
from resa_interp.model import Subject, cache_kwarg

if TYPE_CHECKING:
    from sae_lens import SAE

MEASURES = " ".join("""
What an intervention does, measured against the clean model.

Teacher-forced: on a fixed text, the change in log-probability of each next token (edited minus clean) at the
tokens of `<think>`/`</think>` ("marker" targets) and at every other token, and the KL divergence
KL(clean || edited) of the next-token distributions per position. Targets predicted from a position below
`keep_first` are left out (the intervention never edits there, so they cannot change).

Generation: greedy continuations of a prompt that ends inside an open `<think>`; the reasoning span is the
tokens generated before the first `</think>` (all of them when none is generated), the answer what follows.

Intervals: percentile bootstrap over texts (the text is the unit; positions within one text are not
independent).
""".split())
"""What the measurements are, in one line, written into effects.json."""


@dataclass(frozen=True)
class Estimate:
    """A mean over texts with its percentile-bootstrap interval."""

    mean: float
    lo: float
    hi: float
    n: int
    """Texts it averages (those where the quantity is defined)."""


def bootstrap(values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of `values` (NaN ones dropped) and the percentile-bootstrap interval of that mean."""
    x = np.asarray([v for v in values if not np.isnan(v)], dtype=float)
    if len(x) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    tail = (1 - level) / 2 * 100
    return Estimate(float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)),
                    len(x))


@dataclass
class TextEffect:
    """What one edit did to one teacher-forced text."""

    dlogp_marker: float
    """Mean change of the log-probability of marker tokens (NaN when the text has none after `keep_first`)."""
    dlogp_other: float
    """Mean change of the log-probability of every other token."""
    kl: float
    """Mean KL(clean || edited) of the next-token distribution over positions."""
    kl_per_position: list[float] = field(repr=False)
    """KL at each position p (the distribution of token p+1); 0 below `keep_first`."""
    dlogp_per_target: list[float] = field(repr=False)
    """Change of the log-probability of token p+1 at each position p."""


@torch.inference_mode()
def log_probs(subject: Subject, texts: Sequence[Sequence[int]]) -> list[Tensor]:
    """Next-token log-probabilities [T_i, vocab] of each text, in float32, from one right-padded forward pass
    (causal attention: padding after a text never reaches it); whatever context the caller opened (e.g. an
    `Intervention`) applies."""
    length = max(len(ids) for ids in texts)
    batch = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(texts):
        batch[row, : len(ids)] = torch.tensor(list(ids))
        mask[row, : len(ids)] = 1
    logits = subject.hf(input_ids=batch.to(subject.device), attention_mask=mask.to(subject.device)).logits
    return [torch.log_softmax(logits[row, : len(ids)].float(), dim=-1) for row, ids in enumerate(texts)]


def text_effect(
    clean: Tensor, edited: Tensor, ids: Sequence[int], markers: set[int], keep_first: int = 1
) -> TextEffect:
    """Compare next-token log-probabilities [T, vocab] of the clean and the edited model on text `ids`;
    `markers` are the token positions inside `<think>`/`</think>` spans."""
    targets = torch.tensor(list(ids[1:]), device=clean.device)
    rows = torch.arange(len(targets), device=clean.device)
    dlogp = (edited[rows, targets] - clean[rows, targets]).cpu()
    kl = (clean.exp() * (clean - edited)).sum(-1).clamp_min(0).cpu()
    counted = [p for p in range(len(targets)) if p >= keep_first]
    at_marker = [p for p in counted if p + 1 in markers]
    other = [p for p in counted if p + 1 not in markers]
    mean = lambda ps: float(dlogp[ps].mean()) if ps else float("nan")  # noqa: E731
    kl[:keep_first] = 0.0
    return TextEffect(mean(at_marker), mean(other), float(kl[counted].mean()) if counted else float("nan"),
                      [round(float(v), 6) for v in kl], [round(float(v), 6) for v in dlogp])


@torch.inference_mode()
def greedy(subject: Subject, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt_ids`, KV-cached, stopping after EOS (runs whatever context the caller
    opened, e.g. an `Intervention`, whose hooks see each step's absolute positions)."""
    model, eos = subject.hf, subject.tokenizer.eos_token_id
    step = torch.tensor([list(prompt_ids)], device=subject.device)
    cache, new = None, []
    for _ in range(max_new_tokens):
        kwargs = {cache_kwarg(model): cache} if cache is not None else {}
        out = model(input_ids=step, use_cache=True, **kwargs)
        cache = getattr(out, "cache", None) or out.past_key_values
        token = int(out.logits[0, -1].argmax())
        new.append(token)
        if token == eos:
            break
        step = torch.tensor([[token]], device=subject.device)
    return new


@dataclass
class Generation:
    """One greedy continuation, split at the first `</think>`."""

    text: str
    reasoning_tokens: int
    """Tokens before the first `</think>` (every generated token when there is none)."""
    closed: bool
    """Whether a `</think>` was generated."""
    answer: str
    """What follows the first `</think>` ('' when there is none)."""
    correct: bool | None = None
    """The grader's verdict on the answer (None: not graded)."""


def split_generation(subject: Subject, new_ids: Sequence[int], gold: str | None = None,
                     grade: Callable[[str, str], bool] | None = None) -> Generation:
    """A `Generation` of generated token ids, graded with `grade(answer, gold)` when both are given."""
    tokenizer = subject.tokenizer
    text = tokenizer.decode(new_ids)  # special tokens kept: a tokenizer may make </think> one
    if tokenizer.eos_token:
        text = text.replace(tokenizer.eos_token, "")
    if END_THINK not in text:
        return Generation(text, len(new_ids), False, "", False if grade and gold is not None else None)
    head, answer = text.split(END_THINK, 1)
    reasoning = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    correct = grade(answer, gold) if grade is not None and gold is not None else None
    return Generation(text, reasoning, True, answer, correct)



@dataclass(frozen=True)
class AblationEffect:
    """What ablating one latent alone does to one text (the dashboard's summary of `TextEffect`)."""

    dlogp_marker: float
    dlogp_other: float
    kl: float
    max_kl: float
    """The largest KL at any position."""


def ablation_effects(subject: Subject, hook: str, saes: Mapping[int, SAE], latents: Mapping[int, Sequence[int]],
                     ids: Sequence[int], markers: set[int], keep_first: int = 1
                     ) -> dict[tuple[int, int], AblationEffect]:
    """(layer, latent) -> the effect of ablating that latent alone on text `ids`: one forward pass per latent,
    cheap enough for every feature a dashboard shows."""
    clean = log_probs(subject, [ids])[0]
    out = {}
    for layer, chosen in latents.items():
        for latent in chosen:
            with Intervention(subject.hf, hook, saes, {layer: LatentEdit((int(latent),))}, keep_first):
                edited = log_probs(subject, [ids])[0]
            e = text_effect(clean, edited, ids, markers, keep_first)
            out[(layer, int(latent))] = AblationEffect(e.dlogp_marker, e.dlogp_other, e.kl, max(e.kl_per_position))
    return out
