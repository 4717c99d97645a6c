"""`trace`: per-token activations of chosen SAE latents (by default the run's reasoning features) over a given
or generated text, so one sees where they fire inside a real chain of thought, not only in the prompt.

Activations are the clean model's (no edit): each SAE encodes its hookpoint's activation at every position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from resa_interp.data import marker_spans, synthetic_qa
from resa_interp.errors import ResaError
from resa_interp.figures import save_figure
from resa_interp.interventions.config import TraceConfig
from resa_interp.interventions.measure import greedy
from resa_interp.interventions.steer import generation_prompt, load_chosen
from resa_interp.model import Subject
from resa_interp.runs import atomic_write_json

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sae_lens import SAE


@dataclass
class Trace:
    """Activations [features, tokens] of the traced latents over one text."""

    text: str
    tokens: list[str]
    markers: list[int]
    """Token positions inside `<think>`/`</think>` spans."""
    latents: list[tuple[int, int]]
    """(layer, latent id) of each row."""
    acts: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return {"text": self.text, "tokens": self.tokens, "markers": self.markers,
                "latents": [{"layer": la, "latent": i, "acts": [round(float(v), 5) for v in row]}
                            for (la, i), row in zip(self.latents, self.acts)]}


@torch.inference_mode()
def trace_text(subject: Subject, saes: dict[int, SAE], hook: str, latents: dict[int, list[int]], text: str) -> Trace:
    """Encode every position of `text` with each layer's SAE and keep the chosen latents."""
    spans = marker_spans(text, subject.tokenizer)
    acts = subject.harvester(hook, list(latents))(torch.tensor([spans.token_ids]))
    rows, names = [], []
    for layer, ids in sorted(latents.items()):
        f = saes[layer].encode(acts[layer][0].to(saes[layer].dtype))[:, ids].float().cpu()
        rows.append(f.T.numpy())
        names += [(layer, i) for i in ids]
    tokens = subject.tokenizer.convert_ids_to_tokens(spans.token_ids)
    return Trace(text, tokens, sorted(spans.marker_positions), names, np.concatenate(rows))


def generated_text(subject: Subject, max_new_tokens: int, seed: int = 0) -> str:
    """A synthetic question in the r1 template cut after `<think>`, and the model's greedy continuation."""
    example = synthetic_qa(1, seed=seed)[0]
    prompt = generation_prompt(example.problem)
    ids = subject.tokenizer(prompt)["input_ids"]
    return prompt + subject.tokenizer.decode(greedy(subject, ids, max_new_tokens))


def trace_figure(trace: Trace, title: str) -> go.Figure:
    """Heat map, latents x tokens, with the `<think>`/`</think>` token columns outlined."""
    import plotly.graph_objects as go

    x = list(range(len(trace.tokens)))
    labels = [f"L{la}:{i}" for la, i in trace.latents]
    fig = go.Figure(go.Heatmap(
        z=trace.acts, x=x, y=labels, colorscale="Oranges", colorbar={"title": "activation"},
        customdata=[trace.tokens] * len(labels), hovertemplate="%{y} @ %{x} %{customdata!r}: %{z:.3f}<extra></extra>",
    ))
    for p in trace.markers:
        fig.add_vrect(x0=p - 0.5, x1=p + 0.5, line={"color": "#1f77b4", "width": 1.5}, fillcolor="rgba(0,0,0,0)")
    fig.update_layout(title=title, template="plotly_white", height=200 + 22 * len(labels),
                      width=max(900, 9 * len(x)), xaxis={"title": "token position (markers outlined in blue)",
                                                         "tickmode": "array", "tickvals": trace.markers,
                                                         "ticktext": [trace.tokens[p] for p in trace.markers]})
    return fig


@dataclass
class TraceRun:
    """What `run_trace` produced."""

    trace: Trace
    paths: dict[str, Path]


def run_trace(config: TraceConfig, out: str | Path, subject: Subject | None = None) -> TraceRun:
    """Trace `config.text` (or, with `config.generate` > 0, a greedy continuation of that many tokens) and write
    OUT/trace.json and OUT/trace.html."""
    config.check()
    loaded = load_chosen(config.run, config.latents, config.layers, config.hook, config.model, config.device,
                         subject)
    text = config.text if config.text is not None else generated_text(loaded.subject, config.generate, config.seed)
    if not text.strip():
        raise ResaError("--text is empty; give the text to trace")
    result = trace_text(loaded.subject, loaded.saes, loaded.hook, loaded.latents, text)
    out = Path(out)
    title = f"Latent activations per token — {loaded.subject.spec} ({loaded.hook})"
    paths = {"json": atomic_write_json(out / "trace.json", {"model": loaded.subject.spec, "hook": loaded.hook,
                                                            **result.to_dict()}),
             "html": save_figure(trace_figure(result, title), out / "trace", png=False)[0]}
    return TraceRun(result, paths)
