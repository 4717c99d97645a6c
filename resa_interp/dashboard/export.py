"""Neuronpedia export: a run's dashboard data (`resa-interp dashboard`'s dashboard.json) in Neuronpedia's
bulk-import layout, as SAEDashboard's Neuronpedia exporter writes it (sae_dashboard/neuronpedia/
neuronpedia_export.py, whose rows mirror neuronpedia-utils' db_models):

    DIR/<model id>/<source id>/          one source per SAE (layer), source id '<layer>-<source set>'
        release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl     one row each
        features/batch-<i>.jsonl.gz      one row per latent (Neuronpedia's Neuron table)
        activations/batch-<i>.jsonl.gz   one row per top-activating context

Rows are each dataclass's fields in declaration order, compact JSON, datetimes in ISO 8601 (as orjson writes
them), gzip level 5, `features_per_batch` latents per batch file. Field by field they are what the exporter writes:
`index` is the latent id as a JSON integer (the exporter passes SAEDashboard's integer feature_index through,
although neuronpedia-utils declares the column a string); the top-activating contexts form the exporter's "top
activations" bin (binMin -1, binMax the latent's maximum activation, binContains -1); token strings carry
newlines as such (the dashboard shows them as ↵); and, as its
`zero_out_bos_token` does for BOS, the dashboard's excluded sink positions read 0 in `values`, so that `maxValue`
and `maxValueTokenIndex` are the context's peak. What SAEDashboard computes and the dashboard does not (neuron
alignment, correlated neurons and features, the histogram of logit effects over the vocabulary, DFA, decoder
weight distribution) is left as the exporter's empty defaults.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from resa_interp.dashboard.config import NeuronpediaConfig
from resa_interp.dashboard.html import DashboardSet
from resa_interp.dashboard.results import Context, FeatureDashboard
from resa_interp.errors import ResaError
from resa_interp.interventions import AblationEffect
from resa_interp.model import hub_id
from resa_interp.runs import atomic_dir
from resa_interp.sae import check_export_target

FALLBACK_CREATOR_ID = "clkht01d40000jv08hvalcvly"
"""The creator id SAEDashboard's exporter falls back to without --creator-id or DEFAULT_CREATOR_ID."""
DASHBOARD_JSON = "dashboard.json"
NEWLINE_SHOWN = "↵"
"""How the dashboard's token strings show a newline."""
SOURCE_SET_KINDS = {"resid_post": "res", "mlp_out": "mlp"}
"""Hook kind -> the prefix Neuronpedia's source set names use for it (res-jb, mlp-...)."""


# ------------------------------------------------------------------------------------ Neuronpedia's rows


@dataclass
class Activation:
    """One top-activating context of a latent (Neuronpedia's Activation table)."""

    id: str
    tokens: list[str]
    index: int
    layer: str
    modelId: str
    maxValue: float
    maxValueTokenIndex: int
    minValue: float
    values: list[float]
    creatorId: str
    dataSource: str | None = None
    dataIndex: str | None = None
    dfaValues: list[float] = field(default_factory=list)
    dfaTargetIndex: int | None = None
    dfaMaxValue: float | None = None
    createdAt: datetime = field(default_factory=datetime.now)
    lossValues: list[float] = field(default_factory=list)
    logitContributions: str | None = None
    binMin: float | None = None
    binMax: float | None = None
    binContains: float | None = None
    qualifyingTokenIndex: int | None = None
    zIndices: list[list[int]] | None = None
    zValues: list[float] | None = None


@dataclass
class Feature:
    """One latent (Neuronpedia's Neuron table)."""

    modelId: str
    layer: str
    index: int
    creatorId: str | None = None
    createdAt: datetime = field(default_factory=datetime.now)
    maxActApprox: float | None = 0
    hasVector: bool = False
    vector: list[float] = field(default_factory=list)
    vectorLabel: str | None = None
    vectorDefaultSteerStrength: float | None = 10
    hookName: str | None = None
    topkCosSimIndices: list[int] = field(default_factory=list)
    topkCosSimValues: list[float] = field(default_factory=list)
    neuron_alignment_indices: list[int] = field(default_factory=list)
    neuron_alignment_values: list[float] = field(default_factory=list)
    neuron_alignment_l1: list[float] = field(default_factory=list)
    correlated_neurons_indices: list[int] = field(default_factory=list)
    correlated_neurons_pearson: list[float] = field(default_factory=list)
    correlated_neurons_l1: list[float] = field(default_factory=list)
    correlated_features_indices: list[int] = field(default_factory=list)
    correlated_features_pearson: list[float] = field(default_factory=list)
    correlated_features_l1: list[float] = field(default_factory=list)
    neg_str: list[str] = field(default_factory=list)
    neg_values: list[float] = field(default_factory=list)
    pos_str: list[str] = field(default_factory=list)
    pos_values: list[float] = field(default_factory=list)
    frac_nonzero: float = 0
    freq_hist_data_bar_heights: list[float] = field(default_factory=list)
    freq_hist_data_bar_values: list[float] = field(default_factory=list)
    logits_hist_data_bar_heights: list[float] = field(default_factory=list)
    logits_hist_data_bar_values: list[float] = field(default_factory=list)
    decoder_weights_dist: list[float] = field(default_factory=list)
    sourceSetName: str | None = None


@dataclass
class Model:
    """The model (Neuronpedia's Model table)."""

    id: str
    instruct: bool
    creatorId: str
    displayNameShort: str = ""
    displayName: str = ""
    tlensId: str | None = None
    dimension: int | None = None
    visibility: str = "PUBLIC"
    defaultSourceSetName: str | None = None
    defaultSourceId: str | None = None
    inferenceEnabled: bool = False
    layers: int = 0
    neuronsPerLayer: int = 0
    createdAt: datetime = field(default_factory=datetime.now)
    owner: str = ""
    updatedAt: datetime = field(default_factory=datetime.now)
    website: str | None = None


@dataclass
class Source:
    """One SAE (Neuronpedia's Source table)."""

    id: str
    modelId: str
    setName: str
    creatorId: str
    hasDashboards: bool = True
    inferenceEnabled: bool = False
    inferenceHosts: list[str] = field(default_factory=list)
    saelensConfig: str | None = None
    saelensRelease: str | None = None
    saelensSaeId: str | None = None
    hfRepoId: str | None = None
    hfFolderId: str | None = None
    visibility: str = "PUBLIC"
    defaultOfModelId: str | None = None
    hasUmap: bool = False
    hasUmapLogSparsity: bool = False
    hasUmapClusters: bool = False
    num_prompts: int | None = None
    num_tokens_in_prompt: int | None = None
    dataset: str | None = None
    notes: str | None = None
    createdAt: datetime = field(default_factory=datetime.now)


@dataclass
class SourceRelease:
    """The release (Neuronpedia's SourceRelease table)."""

    name: str
    description: str
    creatorName: str
    creatorId: str
    visibility: str = "PUBLIC"
    isNewUi: bool = False
    featured: bool = False
    descriptionShort: str | None = None
    urls: list[str] = field(default_factory=list)
    creatorEmail: str | None = None
    creatorNameShort: str | None = None
    defaultSourceSetName: str | None = None
    defaultSourceId: str | None = None
    defaultUmapSourceIds: list[str] = field(default_factory=list)
    createdAt: datetime = field(default_factory=datetime.now)


@dataclass
class SourceSet:
    """The set of sources of one kind (Neuronpedia's SourceSet table)."""

    modelId: str
    name: str
    creatorId: str
    hasDashboards: bool = True
    visibility: str = "PRIVATE"
    description: str = ""
    type: str = ""
    creatorName: str = ""
    urls: list[str] = field(default_factory=list)
    creatorEmail: str | None = None
    releaseName: str | None = None
    defaultOfModelId: str | None = None
    defaultRange: int = 1
    defaultShowBreaks: bool = True
    showDfa: bool = False
    showCorrelated: bool = False
    showHeadAttribution: bool = False
    showUmap: bool = False
    createdAt: datetime = field(default_factory=datetime.now)


# ------------------------------------------------------------------------------------ reading the dashboard


def read_dashboards(path: str | Path) -> DashboardSet:
    """The `DashboardSet` in a dashboard.json (or the folder holding one) written by `resa-interp dashboard`."""
    path = Path(path)
    path = path / DASHBOARD_JSON if path.is_dir() else path
    if not path.is_file():
        raise ResaError(f"no dashboard data at {str(path)!r}; build it with: resa-interp dashboard --run RUN "
                        "--out RUN/dashboard (or pass --dashboard FILE)")
    doc = json.loads(path.read_text())
    try:
        features = [
            FeatureDashboard(**{
                **f, "contexts": [Context(**c) for c in f["contexts"]],
                "logits_positive": [tuple(p) for p in f["logits_positive"]],
                "logits_negative": [tuple(p) for p in f["logits_negative"]],
                "ablation": AblationEffect(**f["ablation"]) if f.get("ablation") else None,
            })
            for f in doc.pop("features")
        ]
        return DashboardSet(**{**doc, "sinks": {int(k): v for k, v in doc["sinks"].items()}}, features=features)
    except (KeyError, TypeError) as exc:
        raise ResaError(f"{str(path)!r} is not a dashboard.json of this version ({type(exc).__name__}: {exc}); "
                        "rebuild it with resa-interp dashboard") from exc


# ------------------------------------------------------------------------------------ rows from the dashboard


class _Ids:
    """Activation ids as the exporter makes them: 'c', process id and start time in hex, then a counter."""

    def __init__(self) -> None:
        self.prefix, self.count = f"c{os.getpid():04x}{int(time.time()):08x}", 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count:08x}"[:25]


def default_model_id(model: str) -> str:
    """Neuronpedia-style model id from a model spec: its last name part, lowercased ('org/Name-1B' -> 'name-1b')."""
    return Path(model.rstrip("/")).name.removesuffix(".gguf").lower()


def source_id(layer: int, source_set: str) -> str:
    """Neuronpedia's source id of one SAE: '<layer>-<source set>' (as the exporter's _build_source_id)."""
    return f"{layer}-{source_set}"


def raw_token(shown: str) -> str:
    """A token as Neuronpedia takes it: the dashboard shows a newline as ↵, Neuronpedia wants the newline."""
    return shown.replace(NEWLINE_SHOWN, "\n")


def activation_rows(f: FeatureDashboard, model_id: str, source: str, creator: str, created: datetime,
                    ids: Callable[[], str]) -> list[Activation]:
    """One Activation per top-activating context of a latent; sink positions read 0 (see the module doc)."""
    rows = []
    for ctx in f.contexts:
        values = [0.0 if sink else value for value, sink in zip(ctx.acts, ctx.sinks)]
        peak = max(values)
        rows.append(Activation(
            id=ids(), tokens=[raw_token(t) for t in ctx.tokens], index=f.feature, layer=source, modelId=model_id,
            maxValue=peak, maxValueTokenIndex=values.index(peak), minValue=min(values), values=values,
            creatorId=creator, createdAt=created, binMin=-1, binMax=f.max_activation, binContains=-1,
            qualifyingTokenIndex=ctx.peak,
        ))
    return rows


def feature_row(f: FeatureDashboard, model_id: str, source: str, creator: str, created: datetime,
                activations: list[Activation]) -> Feature:
    """The Feature row of a latent: logit effects, firing fraction, activation histogram (bar values are bin
    midpoints, heights the dashboard's counts), maxActApprox the largest maxValue of its activations."""
    edges = f.histogram_edges
    return Feature(
        modelId=model_id, layer=source, index=f.feature, creatorId=creator, createdAt=created,
        maxActApprox=max((a.maxValue for a in activations), default=0.0),
        neg_str=[raw_token(t) for t, _ in f.logits_negative], neg_values=[v for _, v in f.logits_negative],
        pos_str=[raw_token(t) for t, _ in f.logits_positive], pos_values=[v for _, v in f.logits_positive],
        frac_nonzero=f.frequency,
        freq_hist_data_bar_heights=[int(c) for c in f.histogram_counts],
        freq_hist_data_bar_values=[round((a + b) / 2, 5) for a, b in zip(edges, edges[1:])],
    )


@dataclass(frozen=True)
class NeuronpediaExport:
    """What `export_neuronpedia` wrote."""

    out: Path
    sources: dict[int, Path]
    """Layer -> its source folder DIR/<model id>/<source id>."""
    features: int
    activations: int


def _dump(path: Path, rows: list, compress: bool = False) -> None:
    text = "".join(json.dumps(asdict(row), separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                              default=datetime.isoformat) + "\n" for row in rows).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(text, compresslevel=5))
    else:
        path.write_bytes(text)


@dataclass(frozen=True)
class _Names:
    """The ids and names an export writes on its rows."""

    model_id: str
    source_set: str
    release: str
    title: str
    creator: str
    created: datetime

    @classmethod
    def of(cls, run: Path, dset: DashboardSet, cfg: NeuronpediaConfig) -> _Names:
        """The names `cfg` gives, the others derived from the run and its dashboards."""
        kind = SOURCE_SET_KINDS.get(dset.hook) or re.sub(r"[^a-z0-9]+", "-", dset.hook.lower()).strip("-")
        return cls(
            model_id=cfg.model_id or default_model_id(dset.model),
            source_set=cfg.source_set or f"{kind}-resa",
            release=cfg.release or run.resolve().name,
            title=cfg.release_title or f"Resa SAEs of {dset.model} ({dset.hook}, resa-interp)",
            creator=cfg.creator_id or os.environ.get("DEFAULT_CREATOR_ID") or FALLBACK_CREATOR_ID,
            created=datetime.now(),
        )


def _write_source_rows(folder: Path, dset: DashboardSet, cfg: NeuronpediaConfig, names: _Names, source: str,
                       hook: str) -> None:
    """The one-row files of a source folder: release, model, source set and source."""
    model_id, source_set, release, title = names.model_id, names.source_set, names.release, names.title
    creator, created = names.creator, names.created
    _dump(folder / "release.jsonl", [SourceRelease(
        name=release, description=title, descriptionShort=title, urls=[cfg.url] if cfg.url else [],
        creatorNameShort=cfg.creator_name, creatorName=cfg.creator_name, creatorId=creator, createdAt=created,
    )])
    _dump(folder / "model.jsonl", [Model(
        id=model_id, instruct=model_id.endswith("-it"), displayNameShort=model_id, displayName=model_id,
        creatorId=creator, createdAt=created, updatedAt=created,
    )])
    _dump(folder / "sourceset.jsonl", [SourceSet(
        modelId=model_id, name=source_set, creatorId=creator, createdAt=created, creatorName=cfg.creator_name,
        releaseName=release, description=f"{dset.hook} SAEs (resa-interp)", visibility="PUBLIC",
    )])
    _dump(folder / "source.jsonl", [Source(
        modelId=model_id, setName=source_set, visibility="PUBLIC", dataset=dset.dataset, id=source,
        num_prompts=dset.n_texts, hfRepoId=cfg.hf_repo, hfFolderId=hook if cfg.hf_repo else None,
        saelensRelease=cfg.hf_repo if hub_id(cfg.hf_repo) else None,
        saelensSaeId=hook if hub_id(cfg.hf_repo) else None, creatorId=creator, createdAt=created,
    )])


def export_neuronpedia(run: str | Path, out: str | Path, cfg: NeuronpediaConfig | None = None) -> NeuronpediaExport:
    """Write the run's dashboards to OUT in Neuronpedia's bulk-import layout (temporary name, then renamed)."""
    cfg = cfg or NeuronpediaConfig()
    cfg.check()
    run, out = Path(run), check_export_target(out)
    dset = read_dashboards(cfg.dashboard or run / "dashboard")
    if not dset.features:
        raise ResaError(f"the dashboard data of {str(run)!r} holds no latents; build dashboards for some first")
    names, ids = _Names.of(run, dset, cfg), _Ids()
    model_id, source_set, creator, created = names.model_id, names.source_set, names.creator, names.created
    layers = sorted({f.layer for f in dset.features})
    n_activations = 0
    with atomic_dir(out) as tmp:
        for layer in layers:
            source = source_id(layer, source_set)
            folder = tmp / model_id / source
            hook = next(f.hook_name for f in dset.features if f.layer == layer)
            _write_source_rows(folder, dset, cfg, names, source, hook)
            latents = [f for f in dset.features if f.layer == layer]
            for i in range(0, len(latents), cfg.features_per_batch):
                features, activations = [], []
                for f in latents[i : i + cfg.features_per_batch]:
                    rows = activation_rows(f, model_id, source, creator, created, ids)
                    features.append(feature_row(f, model_id, source, creator, created, rows))
                    activations += rows
                name = f"batch-{i // cfg.features_per_batch}.jsonl"
                _dump(folder / "features" / name, features, compress=True)
                _dump(folder / "activations" / name, activations, compress=True)
                n_activations += len(activations)
    sources = {layer: out / model_id / source_id(layer, source_set) for layer in layers}
    return NeuronpediaExport(out, sources, len(dset.features), n_activations)
