"""Feature dashboards: per SAE latent, what SAEDashboard and Neuronpedia show, computed from a run.

For each chosen latent: its top-activating contexts in the trigger data (per-token activations), a histogram
of its non-zero activations, its firing frequency, its logit effects, and its activation over the prompt of
`features` (the R1 system prompt) with the value at each `<think>`/`</think>` occurrence.

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

Logit effects: the decoder direction through the unembedding, W_dec[f] · diag(g) · W_U, with g the gain of the
model's final norm folded in (as TransformerLens' fold_ln does for SAEDashboard and Neuronpedia) and the norm's
division by the activation's RMS ignored (a direction alone has no scale); W_U is the HF lm_head's weight,
equal to the HookedTransformer's `W_U` because no weight processing is applied.

Ablation effect: each latent ablated alone on the features prompt, the SAE's error term kept
(`interventions.measure.ablation_effects`, one forward pass per latent): the mean change of log p at the
prompt's `<think>`/`</think>` tokens and at the others, and the mean and largest KL from the clean model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from resa_interp.dashboard.html import check_plotlyjs, fragment_html, write_dashboard
from resa_interp.data.qa import load_qa
from resa_interp.data.templates import END_THINK, R1_SYSTEM_PROMPT, THINK, format_trigger, marker_spans
from resa_interp.errors import ResaError
from resa_interp.features.boundary import span_value
from resa_interp.features.selection import REASONING, model_spec, select_features
from resa_interp.interventions.measure import AblationEffect, ablation_effects
from resa_interp.model.harvest import EncodedText, encode_texts, iter_batches, shared_prefix_length
from resa_interp.model.hooks import HOOKS, SPLICE_HOOKS, hook_name
from resa_interp.model.subject import load_subject
from resa_interp.runs import record_stage
from resa_interp.sae.folders import check_sae_fits, load_sae

if TYPE_CHECKING:
    from sae_lens import SAE

    from resa_interp.model.subject import Subject

@dataclass
class DashboardConfig:
    """What goes into the dashboards and from which data."""

    texts: int = 128
    """Trigger texts to harvest (the first of the dataset; synthetic ones are generated with `seed`)."""
    dataset: str | None = None
    """Trigger data spec (as train-saes --dataset); None: the dataset the SAEs were trained on."""
    template: str | None = None
    """'r1' or 'short'; None: the template the SAEs were trained with."""
    top: int = 12
    """Top-activating contexts per latent (at most one per context window)."""
    context_before: int = 12
    """Tokens shown before the peak token of a context."""
    context_after: int = 4
    """Tokens shown after the peak token."""
    include_sinks: bool = False
    """Keep position 0 and high-norm positions (by default they are excluded everywhere)."""
    sink_ratio: float = 4.0
    """A position whose activation norm exceeds this times the layer's median norm is a sink."""
    logit_tokens: int = 10
    """Tokens listed for the most positive and the most negative logit effects."""
    bins: int = 40
    """Histogram bins over (0, max activation]."""
    threshold: float | None = None
    """A latent fires where its activation exceeds this; None: the features run's threshold (else 0)."""
    batch_size: int = 16
    """Texts per forward pass."""
    seed: int = 0
    """Seed of the synthetic trigger data."""
    run: str | None = None
    """Run folder with saes/ (and features.json for 'reasoning'); run_dashboard needs it."""
    layer: int | None = None
    """Only this layer (needed for latent ids); None: every layer of the run's features.json."""
    features: str = REASONING
    """'reasoning' (every reasoning feature in the run's features.json) or comma-separated latent ids at `layer`."""
    model: str | None = None
    """Model spec to run; None: the model the SAEs were trained on."""
    hook: str | None = None
    """Hookpoint kind ('resid_post' or 'mlp_out'); None: features.json's, else resid_post."""
    device: str = "cpu"
    """Device of the model and the SAEs: cpu, cuda, cuda:N or auto."""
    plotlyjs: str = "inline"
    """How dashboard.html gets plotly.js: 'inline' (the page works offline) or 'cdn' (small page, loads it)."""


@dataclass
class Context:
    """A window of one text around a top-activating token."""

    text: int
    """Index of the trigger text; -1 for the shared prefix (the same in every text)."""
    position: int
    """Position of the peak token in its text."""
    value: float
    tokens: list[str]
    acts: list[float]
    peak: int
    """Index of the peak token within `tokens`."""
    at_marker: bool
    """Whether the peak token is part of a `<think>` or `</think>`."""
    sinks: list[bool]
    """Which tokens of the window are excluded sinks."""


@dataclass
class FeatureDashboard:
    """Everything shown for one latent."""

    layer: int
    feature: int
    hook_name: str
    reasoning: bool
    """Listed as a reasoning feature of this layer in the run's features.json."""
    frequency: float
    """Fraction of the data's (non-sink) positions where the latent fires."""
    max_activation: float
    mean_when_firing: float
    histogram_edges: list[float]
    histogram_counts: list[float]
    """Positions per bin (the shared prefix counted once per text), firing positions only."""
    contexts: list[Context]
    at_marker_share: float
    """Fraction of the top contexts whose peak is part of a `<think>` or `</think>` (0 when there are none)."""
    logits_positive: list[tuple[str, float]]
    logits_negative: list[tuple[str, float]]
    prompt_acts: list[float]
    """Activation at every token of the features prompt."""
    marker_activations: dict[str, list[float]]
    """Marker -> activation at each occurrence in the prompt (by the features run's marker rule)."""
    ablation: AblationEffect | None = None
    """What ablating this latent alone (the SAE's error term kept) does on the prompt: the mean change of log p at
    its `<think>`/`</think>` tokens and at the others, and the KL from the clean model (`interventions`)."""

    @property
    def anchor(self) -> str:
        """HTML id of this latent's section."""
        return f"L{self.layer}-F{self.feature}"


@dataclass
class DashboardSet:
    """Dashboards of several latents from one run, with what they were computed from."""

    run: str
    model: str
    hook: str
    dataset: str
    template: str
    n_texts: int
    n_positions: int
    """Positions in the data (prefix once per text), sinks included."""
    sinks: dict[int, int]
    """Layer -> positions excluded as sinks (prefix positions once per text); empty with include_sinks."""
    threshold: float
    sink_rule: str
    logit_rule: str
    prompt_tokens: list[str]
    prompt_markers: dict[str, list[list[int]]]
    prompt_excluded: list[int]
    """Prompt positions the features run excluded (a BOS it prepended)."""
    marker_rule: str
    features: list[FeatureDashboard] = field(default_factory=list)

    def _repr_html_(self) -> str:
        return fragment_html(self, plotlyjs="cdn")

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)


# --------------------------------------------------------------------------------------------- harvest


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


# --------------------------------------------------------------------------------------------- logit effects


def unembedding(subject: Subject) -> tuple[torch.Tensor, str]:
    """[d_model, vocab] matrix taking a residual direction to logits, and how it was made: the lm_head weight
    with the final norm's gain folded in (its RMS normalisation ignored)."""
    head = subject.hf.get_output_embeddings().weight  # [vocab, d]
    base = subject.hf.get_decoder() if hasattr(subject.hf, "get_decoder") else subject.hf
    norm = next((getattr(base, n) for n in ("norm", "ln_f", "final_layernorm") if hasattr(base, n)), None)
    gain = getattr(norm, "weight", None)
    w_u = head.detach().float().T
    if gain is None:
        return w_u, "W_dec[f] @ W_U (lm_head weight; the model has no final-norm gain to fold in)"
    rule = (
        "W_dec[f] @ diag(g) @ W_U: the lm_head weight with the final norm's gain g folded in "
        "(its division by the RMS of the residual ignored)"
    )
    return gain.detach().float()[:, None] * w_u, rule


def logit_effects(subject: Subject, directions: torch.Tensor) -> torch.Tensor:
    """[n, vocab] logit effect of each direction [n, d_model] (see `unembedding`)."""
    w_u, _ = unembedding(subject)
    return directions.float().to(w_u.device) @ w_u


# --------------------------------------------------------------------------------------------- assembly


class _Tokens:
    """Token ids -> readable strings (each id decoded alone, newlines shown as ↵), cached."""

    def __init__(self, tokenizer):
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
class _LayerView:
    """One layer's harvested data with its sink mask: turns a latent's activations into its statistics."""

    corpus: Corpus
    text: np.ndarray
    position: np.ndarray
    weight: np.ndarray
    sinks: np.ndarray
    cfg: DashboardConfig
    threshold: float
    tokens: _Tokens

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


def _prompt(doc: dict | None, tokenizer) -> tuple[list[int], dict[str, list[list[int]]], list[int], str]:
    """The features run's first prompt (ids, marker spans, excluded positions, marker rule), else the R1 prompt."""
    if doc is not None and doc.get("prompts"):
        p = doc["prompts"][0]
        return p["token_ids"], p["marker_spans"], p["excluded_positions"], doc.get("marker_rule", "any")
    spans = marker_spans(R1_SYSTEM_PROMPT, tokenizer)
    markers = {m: [list(s) for s in v] for m, v in spans.spans.items()}
    return spans.token_ids, markers, [0] if spans.bos_prepended else [], "any"


def _trigger_corpus(subject: Subject, sae: SAE, cfg: DashboardConfig) -> tuple[Corpus, str, str]:
    meta = sae.cfg.metadata
    dataset = cfg.dataset or getattr(meta, "dataset_path", None) or "synthetic"
    template = cfg.template or getattr(meta, "template", None) or "r1"
    examples = load_qa(dataset, limit=cfg.texts, seed=cfg.seed)
    strings = [format_trigger(e.problem, e.answer, template) for e in examples]
    texts = encode_texts(subject.tokenizer, strings)
    markers = [marker_spans(s, subject.tokenizer).marker_positions for s in strings]
    return Corpus(texts, shared_prefix_length(texts), markers), dataset, template


@torch.inference_mode()
def _prompt_latents(
    subject: Subject, saes: dict[int, SAE], features: dict[int, list[int]], hook: str, ids: list[int]
) -> dict[int, torch.Tensor]:
    """Layer -> the chosen latents' activations [T, n] over one prompt."""
    acts = subject.harvester(hook, list(saes))(torch.tensor([ids]))
    return {
        layer: sae.encode(acts[layer][0].to(sae.dtype))[:, features[layer]].float().cpu()
        for layer, sae in saes.items()
    }


def build_dashboards(
    run: str | Path,
    layer: int | None = None,
    features: str = REASONING,
    cfg: DashboardConfig | None = None,
    *,
    subject: Subject | None = None,
    model: str | None = None,
    hook: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> DashboardSet:
    """Dashboards for the chosen latents of a run ('reasoning': every reasoning feature in its features.json,
    or comma-separated ids at `layer`)."""
    from tqdm.auto import tqdm

    cfg = cfg or DashboardConfig()
    if min(cfg.texts, cfg.top, cfg.bins, cfg.logit_tokens) < 1 or not cfg.sink_ratio > 0:
        raise ResaError("--texts, --top, bins and logit tokens must be >= 1, and --sink-ratio > 0")
    sel = select_features(run, layer, features, hook)
    saes = {lay: load_sae(sel.sae_dirs[lay], device=device) for lay in sorted(sel.features)}
    first = next(iter(saes.values()))
    if subject is None:
        subject = load_subject(model or model_spec(first, sel.doc), device=device)
    for lay, sae in saes.items():
        check_sae_fits(sae, subject, sel.hook, lay)
    threshold = cfg.threshold if cfg.threshold is not None else float((sel.doc or {}).get("threshold", 0.0))
    corpus, dataset, template = _trigger_corpus(subject, first, cfg)
    latents = harvest_latents(subject, saes, sel.features, sel.hook, corpus, cfg.batch_size, progress)
    text, position, weight = corpus.index()
    prompt_ids, prompt_markers, prompt_excluded, rule = _prompt(sel.doc, subject.tokenizer)
    prompt_latents = _prompt_latents(subject, saes, sel.features, sel.hook, prompt_ids)
    prompt_marker_positions = {p for spans in prompt_markers.values() for s, e in spans for p in range(s, e)}
    # ablation needs a module to edit the activation in; view-only hooks (e.g. mlp.hook_post) get none
    spliceable = sel.hook in SPLICE_HOOKS
    ablations = (ablation_effects(subject, sel.hook, saes, sel.features, prompt_ids, prompt_marker_positions)
                 if spliceable else {})
    tokens = _Tokens(subject.tokenizer)
    reasoning = {row["layer"]: set(row["features"]) for row in (sel.doc or {}).get("layers", [])}
    sink_rule = (
        "none excluded (--include-sinks)" if cfg.include_sinks
        else f"position 0, and positions whose activation norm exceeds {cfg.sink_ratio:g}x the layer's median"
    )
    residual = sel.hook in HOOKS  # written into the residual stream, d_model wide
    out = DashboardSet(
        run=str(run), model=getattr(first.cfg.metadata, "model_name", None) or subject.spec, hook=sel.hook,
        dataset=dataset, template=template,
        n_texts=len(corpus.texts), n_positions=int(weight.sum()), sinks={}, threshold=threshold,
        sink_rule=sink_rule, prompt_tokens=tokens(prompt_ids),
        logit_rule=unembedding(subject)[1] if residual else f"none: {sel.hook} is not in the residual stream",
        prompt_markers=prompt_markers, prompt_excluded=prompt_excluded, marker_rule=rule,
    )
    total = sum(len(ids) for ids in sel.features.values())
    with tqdm(total=total, desc="dashboard: features", unit="feature", disable=not progress) as bar:
        for lay, ids in sel.features.items():
            data = latents[lay]
            sinks = np.zeros(len(text), bool) if cfg.include_sinks else sink_mask(data.norms, position, cfg.sink_ratio)
            if not cfg.include_sinks:
                out.sinks[lay] = int(weight[sinks].sum())
            view = _LayerView(corpus, text, position, weight, sinks, cfg, threshold, tokens)
            # logit effects where the decoder writes into the residual stream; none elsewhere (e.g. mlp.hook_post)
            effects = logit_effects(subject, saes[lay].W_dec[ids].detach()) if residual else torch.zeros(len(ids), 0)
            for j, fid in enumerate(ids):
                values = data.values[:, j].numpy()
                contexts = view.contexts(values)
                n_logits = min(cfg.logit_tokens, effects.shape[1])
                top, bottom = torch.topk(effects[j], n_logits), torch.topk(-effects[j], n_logits)
                prompt_values = prompt_latents[lay][:, j : j + 1]
                out.features.append(FeatureDashboard(
                    layer=lay, feature=fid, hook_name=hook_name(sel.hook, lay),
                    reasoning=fid in reasoning.get(lay, ()),
                    **view.statistics(values),
                    contexts=contexts,
                    at_marker_share=sum(c.at_marker for c in contexts) / len(contexts) if contexts else 0.0,
                    logits_positive=list(zip(tokens(top.indices), [round(v, 4) for v in top.values.tolist()])),
                    logits_negative=list(zip(tokens(bottom.indices), [round(-v, 4) for v in bottom.values.tolist()])),
                    prompt_acts=[round(float(v), 4) for v in prompt_values[:, 0]],
                    marker_activations={
                        m: [round(float(span_value(prompt_values, s, e, rule)[0]), 6) for s, e in prompt_markers[m]]
                        for m in (THINK, END_THINK)
                    },
                    ablation=ablations.get((lay, fid)),
                ))
                bar.update(1)
    return out


@dataclass(frozen=True)
class DashboardRun:
    """What `run_dashboard` produced."""

    dashboards: DashboardSet
    page: Path
    """OUT/dashboard.html; OUT/dashboard.json is beside it."""


def run_dashboard(config: DashboardConfig, out: str | Path) -> DashboardRun:
    """Build the dashboards of `config.run` and write OUT/dashboard.html (self-contained), OUT/dashboard.json and
    a manifest."""
    if config.run is None:
        raise ResaError("no run to build dashboards from; give --run (a folder with saes/)")
    check_plotlyjs(config.plotlyjs)
    dashboards = build_dashboards(config.run, config.layer, config.features, config, model=config.model,
                                  hook=config.hook, device=config.device)
    page = write_dashboard(dashboards, out, plotlyjs=config.plotlyjs)
    record_stage(out, "dashboard", {"run": str(config.run), "layer": config.layer, "features": config.features,
                                    "config": asdict(config), "latents": len(dashboards.features), "page": page.name})
    return DashboardRun(dashboards, page)
