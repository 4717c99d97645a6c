"""Harvesting a dashboard's data: the trigger texts as one corpus, the chosen latents' activations at every
position, the sink positions, and the features prompt.

Data: trigger texts (by default the dataset and template the run's SAEs were trained on) harvested at every
needed layer in one HF forward pass per batch; the token prefix all texts share (the R1 system prompt) is run
once and its KV cache reused (`model.harvest`). That prefix is one context, so it is ranked once among the
top-activating contexts; in frequencies and histograms it counts once per text, as often as it occurs in the
data.

Sinks: high-norm "attention sink" positions carry huge activations that say nothing about a latent. Unless
`include_sinks`, position 0 of every text (which Stage I never trains on) and every position whose activation
norm exceeds `sink_ratio` times the median norm at that layer are left out of contexts, histograms and
frequencies. In SmolLM2 position 0 sits at 6-180x the median norm, and the first two " the" of the system
prompt at 7-9x in layers 3-6; ordinary tokens stay below 2x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from resa_interp.dashboard.config import DashboardConfig
from resa_interp.data import R1_SYSTEM_PROMPT, format_trigger, load_qa, marker_spans
from resa_interp.model import EncodedText, Subject, encode_texts, iter_batches, shared_prefix_length

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass
class Corpus:
    """Trigger texts as positions: the shared prefix once, then each text's own tokens."""

    texts: list[EncodedText]
    prefix_len: int
    markers: list[set[int]]
    """Per text, the positions inside a `<think>` or `</think>`."""

    def index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per stored row: its text (-1 for the prefix), its position in that text, and its weight (how often
        the position occurs in the data)."""
        text = [-1] * self.prefix_len
        position = list(range(self.prefix_len))
        for i, t in enumerate(self.texts):
            own = len(t.ids) - self.prefix_len
            text += [i] * own
            position += list(range(self.prefix_len, len(t.ids)))
        weight = np.where(np.array(text) < 0, len(self.texts), 1).astype(float)
        return np.array(text), np.array(position), weight

    def ids(self, text: int) -> list[int]:
        """Token ids of a whole text (the prefix alone for -1)."""
        return self.texts[0].ids[: self.prefix_len] if text < 0 else self.texts[text].ids


@dataclass
class LayerLatents:
    """The chosen latents' activations and the activation norm at every stored position of the corpus."""

    values: torch.Tensor
    """[rows, n_features]"""
    norms: torch.Tensor
    """[rows]"""


@torch.inference_mode()
def harvest_latents(
    subject: Subject,
    saes: dict[int, SAE],
    features: dict[int, list[int]],
    hook: str,
    corpus: Corpus,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[int, LayerLatents]:
    """Run the corpus through the model once (the prefix once) and encode every stored position at each layer."""
    from tqdm.auto import tqdm

    harvest = subject.harvester(hook, list(saes))
    cols = {layer: torch.tensor(ids, device=subject.device) for layer, ids in features.items()}
    values: dict[int, list[torch.Tensor]] = {layer: [] for layer in saes}
    norms: dict[int, list[torch.Tensor]] = {layer: [] for layer in saes}

    def add(acts: dict[int, torch.Tensor]) -> None:
        for layer, sae in saes.items():
            x = acts[layer].float()
            values[layer].append(sae.encode(x.to(sae.dtype))[:, cols[layer]].float().cpu())
            norms[layer].append(x.norm(dim=-1).cpu())

    prefix = None
    if corpus.prefix_len:
        prefix = harvest.run_prefix(corpus.texts[0].ids[: corpus.prefix_len])
        add(prefix.acts)
    pad = subject.tokenizer.pad_token_id if subject.tokenizer.pad_token_id is not None else 0
    batches = iter_batches(corpus.texts, batch_size, pad, exclude_first=0, prefix_len=corpus.prefix_len)
    with tqdm(total=len(corpus.texts), desc="dashboard: harvest", unit="text", disable=not progress) as bar:
        for _, batch in batches:
            acts = harvest(batch.input_ids, batch.attention_mask, prefix=prefix)
            real = batch.attention_mask.bool().to(subject.device)
            add({layer: act[real] for layer, act in acts.items()})  # row-major: text by text
            bar.update(batch.input_ids.shape[0])
    return {layer: LayerLatents(torch.cat(values[layer]), torch.cat(norms[layer])) for layer in saes}


def sink_mask(norms: torch.Tensor, positions: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean per stored row: position 0, or a norm above `ratio` times the median norm of the stored rows (the
    distinct positions: the shared prefix once)."""
    values = norms.numpy()
    return (positions == 0) | (values > ratio * float(np.median(values)))


def features_prompt(doc: dict | None, tokenizer) -> tuple[list[int], dict[str, list[list[int]]], list[int], str]:
    """The features run's first prompt (ids, marker spans, excluded positions, marker rule), else the R1 prompt."""
    if doc is not None and doc.get("prompts"):
        p = doc["prompts"][0]
        return p["token_ids"], p["marker_spans"], p["excluded_positions"], doc.get("marker_rule", "any")
    spans = marker_spans(R1_SYSTEM_PROMPT, tokenizer)
    markers = {m: [list(s) for s in v] for m, v in spans.spans.items()}
    return spans.token_ids, markers, [0] if spans.bos_prepended else [], "any"


def trigger_corpus(subject: Subject, sae: SAE, cfg: DashboardConfig) -> tuple[Corpus, str, str]:
    """The trigger texts of `cfg` as a corpus, with the dataset and template used (by default the SAE's)."""
    meta = sae.cfg.metadata
    dataset = cfg.dataset or getattr(meta, "dataset_path", None) or "synthetic"
    template = cfg.template or getattr(meta, "template", None) or "r1"
    examples = load_qa(dataset, limit=cfg.texts, seed=cfg.seed)
    strings = [format_trigger(e.problem, e.answer, template) for e in examples]
    texts = encode_texts(subject.tokenizer, strings)
    markers = [marker_spans(s, subject.tokenizer).marker_positions for s in strings]
    return Corpus(texts, shared_prefix_length(texts), markers), dataset, template


@torch.inference_mode()
def prompt_latents(
    subject: Subject, saes: dict[int, SAE], features: dict[int, list[int]], hook: str, ids: list[int]
) -> dict[int, torch.Tensor]:
    """Layer -> the chosen latents' activations [T, n] over one prompt."""
    acts = subject.harvester(hook, list(saes))(torch.tensor([ids]))
    return {
        layer: sae.encode(acts[layer][0].to(sae.dtype))[:, features[layer]].float().cpu()
        for layer, sae in saes.items()
    }
