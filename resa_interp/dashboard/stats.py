"""A latent's statistics over the harvested data: firing frequency, peak, mean when firing, the activation
histogram and the top-activating contexts, with sinks left out (see `harvest`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resa_interp.dashboard.config import DashboardConfig
from resa_interp.dashboard.harvest import Corpus
from resa_interp.dashboard.results import Context


class Tokens:
    """Token ids -> readable strings (each id decoded alone, newlines shown as ↵), cached."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, ids) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in self.cache:
                self.cache[i] = self.tokenizer.decode([i]).replace("\n", "↵")
            out.append(self.cache[i])
        return out


@dataclass
class LayerView:
    """One layer's harvested data with its sink mask: turns a latent's activations into its statistics."""

    corpus: Corpus
    text: np.ndarray
    position: np.ndarray
    weight: np.ndarray
    sinks: np.ndarray
    cfg: DashboardConfig
    threshold: float
    tokens: Tokens

    def __post_init__(self) -> None:
        prefix = np.flatnonzero(self.text == -1)
        # stored rows of each text in position order: the prefix rows, then the text's own
        self.rows = {-1: prefix} | {
            t: np.concatenate([prefix, np.flatnonzero(self.text == t)]) for t in range(len(self.corpus.texts))
        }

    def statistics(self, values: np.ndarray) -> dict:
        """Frequency, peak, mean when firing and the histogram of one latent's activations [rows]."""
        keep = ~self.sinks
        firing = keep & (values > self.threshold)
        peak = float(values[keep].max()) if keep.any() else 0.0
        counts, edges = np.histogram(
            values[firing], bins=self.cfg.bins, range=(self.threshold, max(peak, self.threshold + 1e-6)),
            weights=self.weight[firing],
        )
        return {
            "frequency": float(self.weight[firing].sum() / max(self.weight[keep].sum(), 1.0)),
            "max_activation": peak,
            "mean_when_firing": float(np.average(values[firing], weights=self.weight[firing])) if firing.any() else 0.0,
            "histogram_edges": [round(float(e), 5) for e in edges],
            "histogram_counts": [float(c) for c in counts],
        }

    def contexts(self, values: np.ndarray) -> list[Context]:
        """Top-activating windows, greedily by value, none inside another chosen window of the same text."""
        cfg, chosen = self.cfg, []
        taken: dict[int, list[tuple[int, int]]] = {}
        for row in np.argsort(-values, kind="stable"):
            if len(chosen) >= cfg.top or values[row] <= self.threshold:
                break
            t, p = int(self.text[row]), int(self.position[row])
            if self.sinks[row] or any(a <= p < b for a, b in taken.get(t, [])):
                continue
            ids = self.corpus.ids(t)
            lo, hi = max(0, p - cfg.context_before), min(len(ids), p + cfg.context_after + 1)
            window = self.rows[t][lo:hi]
            taken.setdefault(t, []).append((lo, hi))
            chosen.append(Context(
                t, p, float(values[row]), self.tokens(ids[lo:hi]), [round(float(v), 4) for v in values[window]],
                p - lo, p in self.corpus.markers[max(t, 0)], [bool(s) for s in self.sinks[window]],
            ))
        return chosen
