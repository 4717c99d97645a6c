"""ReasonScore (Galichin et al. 2025, "I Have Covered All the Bases Here"; the authors' `extraction/compute_score.py`):
the field's other way to find reasoning features, from what latents do around reasoning words in reasoning text
rather than at the prompt's `<think>`/`</think>` (`features.extract`). `SCORE_DEFINITION` says it in full; it is
written into features.json.

The maths is the authors' (re-implemented here, not copied): per latent i, mu_w the mean activation over the
windows of word w, mu+ over the union of every word's windows, mu- over every other position; p_w = mu_w / sum_w
mu_w, H = -sum_w p_w log p_w / log(#words) (1 with a single word), and

    score_i = (mu+_i / sum_j mu+_j) * H_i ** alpha - mu-_i / sum_j mu-_j

(sums over the SAE's latents, each with 1e-12 added). Activations are scaled by each latent's decoder norm, as the
authors' `fold_W_dec_norm` does. A feature is a latent whose score is above the `quantile` of its SAE's scores
(or among the `top_k` highest).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from resa_interp.errors import ResaError
from resa_interp.features.config import REASON_WORDS, FeatureConfig
from resa_interp.features.extract import LayerFeatures
from resa_interp.model import Subject, hook_name

if TYPE_CHECKING:
    from sae_lens import SAE

EPSILON = 1e-12
"""Added to every denominator, as the authors do."""
SCORE_DEFINITION = " ".join("""
Definition (also written into features.json): ReasonScore (Galichin et al. 2025) over the reasoning texts. Each
reasoning word (spellings that differ by a leading space or case are one word) is found in the tokens of every
text as the token sequence its spelling encodes to; its window is the tokens it covers, `window_before` tokens
before and `window_after` after (cut at the text's ends). The tokenizer's BOS and EOS tokens count nowhere. Per
latent (its activation scaled by its decoder norm): mu_w its mean over word w's windows, mu+ over the union of
all windows, mu- over every other token; H its entropy over p_w = mu_w / sum_w mu_w, divided by log(#words) (1
with one word); score = mu+ / sum(mu+ over the SAE's latents) * H^alpha - mu- / sum(mu- over the SAE's latents).
A latent is a reasoning feature at layer l when its score is above the `quantile` of the SAE's scores (with
`top_k`: when it is among the k highest).
""".split())
"""ReasonScore as features.json records it (a constant string, so it survives `python -OO`)."""


@dataclass(frozen=True)
class WordGroup:
    """One reasoning word: its normalised form and the token sequences of its spellings."""

    word: str
    sequences: tuple[tuple[int, ...], ...]


@dataclass
class LayerScores:
    """ReasonScore at one layer."""

    scores: torch.Tensor
    """[d_sae] every latent's score."""
    cutoff: float
    """The score a feature must exceed (the quantile's value; with top_k, the k-th highest score)."""
    word_share: dict[str, dict[str, float]] = field(default_factory=dict)
    """Feature id -> word -> its share p_w of the feature's activation mass over the words."""


def read_reason_texts(path: str | Path) -> list[str]:
    """The 'text' of every row of a JSONL file (one-line errors for a row without one and for no rows)."""
    texts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append(str(row["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ResaError(f"--texts {str(path)!r}: line {number} is not JSON with a 'text'") from None
    if not texts:
        raise ResaError(f"--texts {str(path)!r}: holds no texts; accepted JSONL, a 'text' per row")
    return texts


def read_reason_words(path: str | Path | None) -> tuple[str, ...]:
    """The reasoning-word strings of a JSON list file (None: `REASON_WORDS`, the authors' list)."""
    if path is None:
        return REASON_WORDS
    try:
        words = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResaError(f"--reason-words {str(path)!r}: not JSON ({exc}); accepted a JSON list of strings") from None
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise ResaError(f"--reason-words {str(path)!r}: accepted a non-empty JSON list of non-blank strings")
    return tuple(words)


def normalised(word: str) -> str:
    """The word a spelling belongs to: without leading spaces, lower case (the authors' grouping)."""
    return word.lstrip().lower()


def words_in_texts(texts: Sequence[str], words: Sequence[str]) -> dict[str, int]:
    """Per normalised word, how many times any of its spellings occurs in the texts as a substring (an upper bound
    on the token-level matches, cheap enough to refuse texts before any model is loaded)."""
    counts = {normalised(w): 0 for w in words}
    for w in words:
        counts[normalised(w)] += sum(text.count(w) for text in texts)
    return counts


def require_reason_words(texts: Sequence[str], words: Sequence[str], source: str) -> dict[str, int]:
    """`words_in_texts`, or a one-line error when no reasoning word occurs in any text."""
    counts = words_in_texts(texts, words)
    if not any(counts.values()):
        shown = ", ".join(list(counts)[:6]) + (", ..." if len(counts) > 6 else "")
        raise ResaError(f"--texts {source!r}: none of its {len(texts)} texts holds a reasoning word ({shown}); "
                        "ReasonScore needs texts with them")
    return counts


def word_groups(words: Sequence[str], tokenizer) -> list[WordGroup]:
    """The words, each with the token sequences of its spellings (encoded alone, without special tokens)."""
    grouped: dict[str, list[tuple[int, ...]]] = {}
    for w in words:
        ids = tuple(tokenizer.encode(w, add_special_tokens=False))
        if ids and ids not in grouped.setdefault(normalised(w), []):
            grouped[normalised(w)].append(ids)
    return [WordGroup(word, tuple(seqs)) for word, seqs in grouped.items()]


def window_masks(ids: Sequence[int], groups: Sequence[WordGroup], before: int, after: int,
                 ignore: set[int] = frozenset()) -> tuple[torch.Tensor, torch.Tensor]:
    """(windows [G, T], ignored [T]) booleans: every word's windows in the token ids (each match's tokens, `before`
    before them and `after` after, cut at the ends), ignored tokens (`ignore` ids) left out of every window."""
    n = len(ids)
    ignored = torch.tensor([t in ignore for t in ids], dtype=torch.bool)
    masks = torch.zeros(len(groups), n, dtype=torch.bool)
    for g, group in enumerate(groups):
        hit = torch.zeros(n, dtype=torch.bool)
        for seq in group.sequences:
            k = len(seq)
            for start in range(n - k + 1):
                if tuple(ids[start:start + k]) == seq:
                    hit[start:start + k] = True
        covered = hit.clone()
        for shift in range(1, before + 1):  # a hit at p covers p - before .. p + after
            covered[:-shift] |= hit[shift:]
        for shift in range(1, after + 1):
            covered[shift:] |= hit[:-shift]
        masks[g] = covered & ~ignored
    return masks, ignored


class ScoreStats:
    """Running sums over texts of each latent's activation in each word's windows, in all windows and elsewhere."""

    def __init__(self, n_words: int, d_sae: int):
        self.word_sum = torch.zeros(n_words, d_sae, dtype=torch.float64)
        self.word_count = torch.zeros(n_words, dtype=torch.float64)
        self.pos_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.pos_count = 0
        self.neg_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.neg_count = 0

    def update(self, latents: torch.Tensor, windows: torch.Tensor, ignored: torch.Tensor) -> None:
        """Add one text: its latents [T, d_sae] and `window_masks`' windows [G, T] and ignored tokens [T]."""
        acts = latents.detach().to("cpu", torch.float64)
        self.word_sum += windows.to(torch.float64) @ acts
        self.word_count += windows.sum(1)
        positive = windows.any(0)
        negative = ~positive & ~ignored
        self.pos_sum += acts[positive].sum(0)
        self.pos_count += int(positive.sum())
        self.neg_sum += acts[negative].sum(0)
        self.neg_count += int(negative.sum())

    def means(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu_w [G, d_sae], mu+ [d_sae], mu- [d_sae]); a mean over no tokens is 0, as in the authors' code."""
        word = self.word_sum / self.word_count.clamp(min=1)[:, None]
        return word, self.pos_sum / max(self.pos_count, 1), self.neg_sum / max(self.neg_count, 1)


def word_entropy(word_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p [G, d_sae], H [d_sae]): each latent's share of its activation mass per word and the entropy of those
    shares divided by log(#words) (1 for a single word)."""
    p = word_means / (word_means.sum(0, keepdim=True) + EPSILON)
    h = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(0)
    if word_means.shape[0] < 2:
        return p, torch.ones_like(h)
    return p, h / math.log(word_means.shape[0])


def reason_score(word_means: torch.Tensor, pos_mean: torch.Tensor, neg_mean: torch.Tensor,
                 alpha: float) -> torch.Tensor:
    """Every latent's ReasonScore [d_sae] from `ScoreStats.means`."""
    _, h = word_entropy(word_means)
    return pos_mean / (pos_mean.sum() + EPSILON) * h ** alpha - neg_mean / (neg_mean.sum() + EPSILON)


def select_latents(scores: torch.Tensor, quantile: float, top_k: int | None = None) -> tuple[list[int], float]:
    """(latent ids ascending, cutoff): the latents scoring above the `quantile` of `scores`, or the `top_k` highest
    (cutoff: the lowest kept score)."""
    if top_k is not None:
        top = torch.topk(scores, min(top_k, len(scores)))
        return sorted(top.indices.tolist()), float(top.values.min())
    cutoff = float(torch.quantile(scores.to(torch.float64), quantile))
    return (scores > cutoff).nonzero().flatten().tolist(), cutoff


@torch.inference_mode()
def reasonscore_features(
    subject: Subject,
    saes: dict[int, SAE],
    hook: str,
    texts: Sequence[str],
    cfg: FeatureConfig,
    sae_paths: dict[int, str] | None = None,
    quality: dict[int, dict] | None = None,
) -> tuple[list[LayerFeatures], dict[int, LayerScores], dict[str, int]]:
    """ReasonScore's reasoning features per layer over `texts`, every layer's scores, and how many windows each
    word has in the texts' tokens (one-line error when none has any)."""
    tokenizer = subject.tokenizer
    groups = word_groups(read_reason_words(cfg.reason_words), tokenizer)
    ignore = {t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None}
    harvest = subject.harvester(hook, list(saes))
    norms = {layer: sae.W_dec.detach().norm(dim=1) for layer, sae in saes.items()}
    stats = {layer: ScoreStats(len(groups), sae.cfg.d_sae) for layer, sae in saes.items()}
    found = {g.word: 0 for g in groups}
    for text in tqdm(texts, desc=f"ReasonScore, {len(saes)} layers", unit="text", leave=False):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        windows, ignored = window_masks(ids, groups, cfg.window_before, cfg.window_after, ignore)
        for g, group in enumerate(groups):
            found[group.word] += _runs(windows[g])
        acts = harvest(torch.tensor([ids], device=subject.device))
        for layer, sae in saes.items():
            stats[layer].update(sae.encode(acts[layer][0].to(sae.dtype)) * norms[layer], windows, ignored)
    if not any(found.values()):
        raise ResaError(f"--texts {cfg.texts!r}: no reasoning word's tokens occur in the {len(texts)} tokenized "
                        "texts; ReasonScore needs texts with them")
    results, scored = [], {}
    for layer in sorted(saes):
        word_means, pos, neg = stats[layer].means()
        scores = reason_score(word_means, pos, neg, cfg.alpha).float()
        ids, cutoff = select_latents(scores, cfg.quantile, cfg.top_k)
        p, _ = word_entropy(word_means)
        share = {str(i): {g.word: round(float(p[w, i]), 6) for w, g in enumerate(groups)} for i in ids}
        scored[layer] = LayerScores(scores, cutoff, share)
        results.append(LayerFeatures(layer=layer, hook_name=hook_name(hook, layer),
                                     sae_path=(sae_paths or {}).get(layer, ""), count=len(ids), features=ids,
                                     marker_activations={}, sae_quality=(quality or {}).get(layer, {})))
    return results, scored, found


def _runs(mask: torch.Tensor) -> int:
    """How many separate runs of True a boolean row holds (windows that touch count once)."""
    m = mask.to(torch.int8)
    return int((m[1:] > m[:-1]).sum()) + int(m[:1].sum()) if len(m) else 0
