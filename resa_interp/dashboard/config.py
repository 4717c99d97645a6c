"""What a dashboard run and a Neuronpedia export take: their config dataclasses and the checks on them."""

from __future__ import annotations

from dataclasses import dataclass

from resa_interp.errors import ResaError, check_choice
from resa_interp.features import REASONING

PLOTLYJS = ("inline", "cdn")
"""How dashboard.html may get plotly.js."""


def check_plotlyjs(plotlyjs: str) -> None:
    """One-line error unless `plotlyjs` is 'inline' or 'cdn'."""
    check_choice("--plotlyjs", plotlyjs, PLOTLYJS)


@dataclass
class DashboardConfig:
    """What goes into the dashboards and from which data."""

    texts: int = 128
    """Trigger texts to harvest (the first of the dataset; synthetic ones are generated with the seed)."""
    dataset: str | None = None
    """Trigger data: synthetic (built-in), still, deepscaler, a hub id, or a .json/.jsonl/.csv/.parquet file;
    None: the dataset the SAEs were trained on."""
    template: str | None = None
    """Trigger template, 'r1' or 'short'; None: the template the SAEs were trained with."""
    top: int = 12
    """Top-activating contexts per latent (at most one per context window)."""
    context_before: int = 12
    """Tokens shown before the peak token of a context."""
    context_after: int = 4
    """Tokens shown after the peak token."""
    include_sinks: bool = False
    """Keep position 0 and high-norm sink positions (by default they are excluded everywhere)."""
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
    """Run folder with saes/ (and features.json for 'reasoning') the dashboards are computed from; required."""
    layer: int | None = None
    """Only this layer (needed for latent ids); None: every layer of the run's features.json."""
    features: str = REASONING
    """'reasoning' (every reasoning feature in the run's features.json) or latent ids at the layer, like 3,17,200."""
    model: str | None = None
    """Model spec (HF directory, .gguf file, hub id or 'smollm2-135m'); None: the model the SAEs were trained on."""
    hook: str | None = None
    """Hookpoint of the SAEs: resid_post, mlp_out, resid_pre, resid_mid, attn_out, or a TransformerLens hook name
    pattern with the layer as {l} (blocks.{l}.mlp.hook_post, ...); None: features.json's, else resid_post."""
    device: str = "cpu"
    """Device of the model and the SAEs: cpu, cuda, cuda:N or auto."""
    plotlyjs: str = "inline"
    """How dashboard.html gets plotly.js: inline (the page works offline) or cdn (small page, loads plotly.js from
    its CDN)."""

    def check(self) -> None:
        """One-line error unless the counts are >= 1 and the sink ratio positive."""
        if min(self.texts, self.top, self.bins, self.logit_tokens) < 1 or not self.sink_ratio > 0:
            raise ResaError("--texts, --top, bins and logit tokens must be >= 1, and --sink-ratio > 0")


@dataclass
class NeuronpediaConfig:
    """Names and ids of a Neuronpedia export (each None is derived from the run)."""

    dashboard: str | None = None
    """dashboard.json (or its folder) written by `resa-interp dashboard`; None: RUN/dashboard/dashboard.json."""
    model_id: str | None = None
    """Neuronpedia model id; None: the model's name, lowercased, without org or path."""
    source_set: str | None = None
    """Source set name; None: '<res|mlp>-resa' after the hook."""
    release: str | None = None
    """Release id; None: the run folder's name."""
    release_title: str | None = None
    """Release description; None: one line naming the model and the method."""
    creator_name: str = "resa-interp"
    """Creator name on the release and source set."""
    creator_id: str | None = None
    """Neuronpedia creator id; None: $DEFAULT_CREATOR_ID, else the exporter's fallback id."""
    url: str | None = None
    """Release URL (e.g. the hub repo of the SAEs)."""
    hf_repo: str | None = None
    """Hub repo holding the SAEs (`export --to hf`, uploaded): recorded on each source with the SAE's folder."""
    features_per_batch: int = 128
    """Latents per features/activations batch file."""

    def check(self) -> None:
        """One-line error unless a batch file holds at least one latent."""
        if self.features_per_batch < 1:
            raise ResaError(f"features per batch {self.features_per_batch}: must be >= 1")


@dataclass
class DelphiConfig:
    """What goes into a delphi latent cache of a run's SAEs and from which data."""

    layers: str | None = None
    """Layers whose SAEs are cached: 'all', a range like 1-26 or a list like 3,12; None: every layer of the run."""
    seed: int | None = None
    """SAEs of this further seed of a multi-seed run (RUN/saes/seed-S/); None: the run's own (RUN/saes/)."""
    texts: int = 256
    """Trigger texts packed into the cache (the first of the dataset; synthetic ones are generated with
    data_seed)."""
    dataset: str | None = None
    """Trigger data: synthetic (built-in), still, deepscaler, a hub id, or a .json/.jsonl/.csv/.parquet file;
    None: the dataset the SAEs were trained on."""
    template: str | None = None
    """Trigger template, 'r1' or 'short'; None: the template the SAEs were trained with."""
    data_seed: int = 0
    """Seed of the synthetic trigger data."""
    ctx_len: int = 256
    """Tokens per cached row (delphi's cache_ctx_len): the texts are packed into rows this long, as delphi's own
    cache is; keep it a multiple of delphi's example_ctx_len (32 by default)."""
    n_splits: int = 5
    """Shards per hookpoint (delphi's n_splits): each holds a contiguous range of latents."""
    batch_size: int = 16
    """Rows per forward pass."""
    model: str | None = None
    """Model spec (HF directory, .gguf file, hub id or 'smollm2-135m'); None: the model the SAEs were trained on."""
    hook: str | None = None
    """Hookpoint of the SAEs (resid_post, mlp_out, ...); None: the run's features.json's, else resid_post."""
    device: str = "cpu"
    """Device of the model and the SAEs: cpu, cuda, cuda:N or auto."""

    def check(self) -> None:
        """One-line error unless the counts are >= 1 and a row holds at least two tokens."""
        if min(self.texts, self.n_splits, self.batch_size) < 1 or self.ctx_len < 2:
            raise ResaError(f"--texts {self.texts}, --n-splits {self.n_splits}, --batch-size {self.batch_size} must "
                            f"be >= 1 and --ctx-len {self.ctx_len} >= 2")
