"""Assembling feature dashboards: per SAE latent, what SAEDashboard and Neuronpedia show, computed from a run.

For each chosen latent: its top-activating contexts in the trigger data (per-token activations), a histogram
of its non-zero activations, its firing frequency, its logit effects, and its activation over the prompt of
`features` (the R1 system prompt) with the value at each `<think>`/`</think>` occurrence.

The data and its sinks: `harvest`; statistics and contexts: `stats`; logit effects: `logits`.

Ablation effect: each latent ablated alone on the features prompt, the SAE's error term kept
(`interventions.measure.ablation_effects`, one forward pass per latent): the mean change of log p at the
prompt's `<think>`/`</think>` tokens and at the others, and the mean and largest KL from the clean model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from resa_interp.dashboard.config import DashboardConfig
from resa_interp.dashboard.harvest import (
    Corpus,
    LayerLatents,
    features_prompt,
    harvest_latents,
    prompt_latents,
    sink_mask,
    trigger_corpus,
)
from resa_interp.dashboard.html import DashboardSet
from resa_interp.dashboard.logits import logit_effects, unembedding
from resa_interp.dashboard.results import FeatureDashboard
from resa_interp.dashboard.stats import LayerView, Tokens
from resa_interp.data import END_THINK, THINK
from resa_interp.features import REASONING, Selection, model_spec, select_features, span_value
from resa_interp.interventions import AblationEffect, ablation_effects
from resa_interp.model import HOOKS, SPLICE_HOOKS, Subject, hook_name, load_subject
from resa_interp.sae import check_sae_fits, load_sae

if TYPE_CHECKING:
    from sae_lens import SAE


class _Assembly:
    """What one run's dashboards are assembled from: the harvested corpus, the features prompt and the chosen
    latents' activations over both, and the ablation effects."""

    def __init__(self, cfg: DashboardConfig, sel: Selection, subject: Subject, saes: dict[int, SAE], corpus: Corpus,
                 latents: dict[int, LayerLatents], threshold: float) -> None:
        self.cfg, self.sel, self.subject, self.saes = cfg, sel, subject, saes
        self.corpus, self.latents, self.threshold = corpus, latents, threshold
        self.text, self.position, self.weight = corpus.index()
        self.prompt_ids, self.prompt_markers, self.prompt_excluded, self.rule = features_prompt(
            sel.doc, subject.tokenizer)
        self.prompt_latents = prompt_latents(subject, saes, sel.features, sel.hook, self.prompt_ids)
        marker_positions = {p for spans in self.prompt_markers.values() for s, e in spans for p in range(s, e)}
        # ablation needs a module to edit the activation in; view-only hooks (e.g. mlp.hook_post) get none
        spliceable = sel.hook in SPLICE_HOOKS
        self.ablations: dict[tuple[int, int], AblationEffect] = (
            ablation_effects(subject, sel.hook, saes, sel.features, self.prompt_ids, marker_positions)
            if spliceable else {})
        self.tokens = Tokens(subject.tokenizer)
        self.reasoning = {row["layer"]: set(row["features"]) for row in (sel.doc or {}).get("layers", [])}
        self.residual = sel.hook in HOOKS  # written into the residual stream, d_model wide

    def empty_set(self, run: str | Path, dataset: str, template: str) -> DashboardSet:
        """The set's header: what the dashboards were computed from, no latents yet."""
        cfg, sel, first = self.cfg, self.sel, next(iter(self.saes.values()))
        sink_rule = (
            "none excluded (--include-sinks)" if cfg.include_sinks
            else f"position 0, and positions whose activation norm exceeds {cfg.sink_ratio:g}x the layer's median"
        )
        return DashboardSet(
            run=str(run), model=getattr(first.cfg.metadata, "model_name", None) or self.subject.spec, hook=sel.hook,
            dataset=dataset, template=template,
            n_texts=len(self.corpus.texts), n_positions=int(self.weight.sum()), sinks={}, threshold=self.threshold,
            sink_rule=sink_rule, prompt_tokens=self.tokens(self.prompt_ids),
            logit_rule=(unembedding(self.subject)[1] if self.residual
                        else f"none: {sel.hook} is not in the residual stream"),
            prompt_markers=self.prompt_markers, prompt_excluded=self.prompt_excluded, marker_rule=self.rule,
        )

    def layer_view(self, lay: int) -> tuple[LayerView, np.ndarray]:
        """One layer's view of the data, and its sink mask."""
        cfg, data = self.cfg, self.latents[lay]
        sinks = (np.zeros(len(self.text), bool) if cfg.include_sinks
                 else sink_mask(data.norms, self.position, cfg.sink_ratio))
        view = LayerView(self.corpus, self.text, self.position, self.weight, sinks, cfg, self.threshold, self.tokens)
        return view, sinks

    def effects(self, lay: int, ids: list[int]) -> torch.Tensor:
        """[n, vocab] logit effects of the layer's chosen latents where the decoder writes into the residual
        stream; [n, 0] elsewhere (e.g. mlp.hook_post)."""
        if self.residual:
            return logit_effects(self.subject, self.saes[lay].W_dec[ids].detach())
        return torch.zeros(len(ids), 0)

    def feature(self, lay: int, j: int, fid: int, view: LayerView, effects: torch.Tensor) -> FeatureDashboard:
        """The dashboard of latent `fid`, the `j`-th chosen at layer `lay`."""
        cfg, tokens, rule = self.cfg, self.tokens, self.rule
        values = self.latents[lay].values[:, j].numpy()
        contexts = view.contexts(values)
        n_logits = min(cfg.logit_tokens, effects.shape[1])
        top, bottom = torch.topk(effects[j], n_logits), torch.topk(-effects[j], n_logits)
        prompt_values = self.prompt_latents[lay][:, j : j + 1]
        return FeatureDashboard(
            layer=lay, feature=fid, hook_name=hook_name(self.sel.hook, lay),
            reasoning=fid in self.reasoning.get(lay, ()),
            **view.statistics(values),
            contexts=contexts,
            at_marker_share=sum(c.at_marker for c in contexts) / len(contexts) if contexts else 0.0,
            logits_positive=list(zip(tokens(top.indices), [round(v, 4) for v in top.values.tolist()])),
            logits_negative=list(zip(tokens(bottom.indices), [round(-v, 4) for v in bottom.values.tolist()])),
            prompt_acts=[round(float(v), 4) for v in prompt_values[:, 0]],
            marker_activations={
                m: [round(float(span_value(prompt_values, s, e, rule)[0]), 6) for s, e in self.prompt_markers[m]]
                for m in (THINK, END_THINK)
            },
            ablation=self.ablations.get((lay, fid)),
        )


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
    cfg.check()
    sel = select_features(run, layer, features, hook)
    saes = {lay: load_sae(sel.sae_dirs[lay], device=device) for lay in sorted(sel.features)}
    first = next(iter(saes.values()))
    if subject is None:
        subject = load_subject(model or model_spec(first, sel.doc), device=device)
    for lay, sae in saes.items():
        check_sae_fits(sae, subject, sel.hook, lay)
    threshold = cfg.threshold if cfg.threshold is not None else float((sel.doc or {}).get("threshold", 0.0))
    corpus, dataset, template = trigger_corpus(subject, first, cfg)
    latents = harvest_latents(subject, saes, sel.features, sel.hook, corpus, cfg.batch_size, progress)
    assembly = _Assembly(cfg, sel, subject, saes, corpus, latents, threshold)
    out = assembly.empty_set(run, dataset, template)
    total = sum(len(ids) for ids in sel.features.values())
    with tqdm(total=total, desc="dashboard: features", unit="feature", disable=not progress) as bar:
        for lay, ids in sel.features.items():
            view, sinks = assembly.layer_view(lay)
            if not cfg.include_sinks:
                out.sinks[lay] = int(assembly.weight[sinks].sum())
            effects = assembly.effects(lay, ids)
            for j, fid in enumerate(ids):
                out.features.append(assembly.feature(lay, j, fid, view, effects))
                bar.update(1)
    return out
