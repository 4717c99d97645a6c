"""`export`: the hub folder read back by SAELens itself (load_from_disk, and from_pretrained through
huggingface_hub's own offline cache lookup), its model card against metrics.json and the manifest, and the
Neuronpedia layout field by field against SAEDashboard's exporter and the dashboard's own numbers."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from datetime import datetime

import huggingface_hub.constants
import pytest
import torch
import yaml
from sae_lens import SAE

from resa_interp.dashboard import (
    Context,
    DashboardConfig,
    FeatureDashboard,
    activation_rows,
    read_dashboards,
    run_dashboard,
)
from resa_interp.model.loading import hub_id
from resa_interp.sae import export_hub
from resa_interp.sae.folders import load_sae
from resa_interp.sae.metrics import COLUMNS

LATENTS = ",".join(str(i) for i in range(24))

# Field names in the order SAEDashboard's neuronpedia_export.py declares them (and so writes them: row.__dict__).
ACTIVATION_KEYS = [
    "id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue", "values", "creatorId",
    "dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "createdAt", "lossValues",
    "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex", "zIndices", "zValues",
]
FEATURE_KEYS = [
    "modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector", "vectorLabel",
    "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices",
    "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
    "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
    "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "decoder_weights_dist", "sourceSetName",
]
MODEL_KEYS = [
    "id", "instruct", "creatorId", "displayNameShort", "displayName", "tlensId", "dimension", "visibility",
    "defaultSourceSetName", "defaultSourceId", "inferenceEnabled", "layers", "neuronsPerLayer", "createdAt", "owner",
    "updatedAt", "website",
]
SOURCE_KEYS = [
    "id", "modelId", "setName", "creatorId", "hasDashboards", "inferenceEnabled", "inferenceHosts", "saelensConfig",
    "saelensRelease", "saelensSaeId", "hfRepoId", "hfFolderId", "visibility", "defaultOfModelId", "hasUmap",
    "hasUmapLogSparsity", "hasUmapClusters", "num_prompts", "num_tokens_in_prompt", "dataset", "notes", "createdAt",
]
RELEASE_KEYS = [
    "name", "description", "creatorName", "creatorId", "visibility", "isNewUi", "featured", "descriptionShort", "urls",
    "creatorEmail", "creatorNameShort", "defaultSourceSetName", "defaultSourceId", "defaultUmapSourceIds", "createdAt",
]
SOURCESET_KEYS = [
    "modelId", "name", "creatorId", "hasDashboards", "visibility", "description", "type", "creatorName", "urls",
    "creatorEmail", "releaseName", "defaultOfModelId", "defaultRange", "defaultShowBreaks", "showDfa",
    "showCorrelated", "showHeadAttribution", "showUmap", "createdAt",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_stage1_copy):
    """The shared tiny Stage I run (layers 1, 2) with dashboards of layer 1's first latents in RUN/dashboard."""
    run = tiny_stage1_copy(tmp_path_factory.mktemp("export") / "run")
    made = run_dashboard(DashboardConfig(run=str(run), layer=1, features=LATENTS, texts=4, top=3), run / "dashboard")
    return run, made.dashboards


def _probe(d_in: int) -> torch.Tensor:
    return torch.randn(64, d_in, generator=torch.Generator().manual_seed(0)) * 3


def _same_outputs(a: SAE, b: SAE) -> None:
    x = _probe(a.cfg.d_in)
    assert torch.equal(a.encode(x), b.encode(x))
    assert torch.equal(a.decode(a.encode(x)), b.decode(b.encode(x)))
    assert (a.encode(x) > 0).any(), "no latent fires on the probe: the comparison would prove little"


def test_hf_folder_loads_in_saelens_like_the_run(tiny_run, tmp_path, cli):
    run, _ = tiny_run
    multi = tmp_path / "multi"
    shutil.copytree(run, multi)
    shutil.copytree(multi / "saes" / "blocks.1.hook_resid_post", multi / "saes" / "seed-1" / "blocks.1.hook_resid_post")
    # what a killed atomic_dir leaves behind: a finished-looking SAE folder under a temporary name
    shutil.copytree(multi / "saes" / "blocks.2.hook_resid_post", multi / "saes" / ".blocks.2.hook_resid_post.x.tmp")
    out = tmp_path / "hub"
    code, stdout, err = cli(["export", "--run", str(multi), "--to", "hf", str(out), "--repo", "resa/tiny-saes"])
    assert code == 0, err
    ids = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post", "seed-1/blocks.1.hook_resid_post"]
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("cfg.json")) == ids
    assert not list(tmp_path.glob(".hub.*")), "the temporary folder must be renamed, not left behind"
    for sae_id in ids:
        exported = SAE.load_from_disk(str(out / sae_id))
        _same_outputs(load_sae(multi / "saes" / sae_id), exported)
        assert exported.cfg.metadata.hook_name == sae_id.split("/")[-1]
        assert (out / sae_id / "sparsity.safetensors").read_bytes() == (
            multi / "saes" / sae_id / "sparsity.safetensors").read_bytes()
    assert 'SAE.from_pretrained("resa/tiny-saes", "blocks.1.hook_resid_post")' in (out / "README.md").read_text()


def test_from_pretrained_reads_the_folder_as_a_hub_repo(tiny_run, tmp_path, monkeypatch):
    """The folder laid out as huggingface_hub's cache of repo resa/tiny-saes; SAELens' from_pretrained then runs its
    real hub loader (release not in pretrained_saes.yaml -> repo id, sae_id -> folder) through the real
    hf_hub_download, offline, which finds `<sae_id>/cfg.json` etc. in that cache."""
    run, _ = tiny_run
    out = tmp_path / "hub"
    export_hub(run, out)
    commit = "0" * 40
    repo = tmp_path / "cache" / "models--resa--tiny-saes"
    shutil.copytree(out, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for layer in (1, 2):
        sae_id = f"blocks.{layer}.hook_resid_post"
        hub, _, sparsity = SAE.from_pretrained_with_cfg_and_sparsity("resa/tiny-saes", sae_id)
        _same_outputs(load_sae(run / "saes" / sae_id), hub)
        assert sparsity is not None and sparsity.shape == (hub.cfg.d_sae,)
    with pytest.raises(Exception):  # noqa: B017 - whatever hf_hub_download raises offline for a missing file
        SAE.from_pretrained("resa/tiny-saes", "blocks.7.hook_resid_post")


def _front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "the card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_card_front_matter_and_quality_table(tiny_run, tmp_path):
    run, _ = tiny_run
    export_hub(run, tmp_path / "hub")
    card = (tmp_path / "hub" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "saelens" and "saelens" in meta["tags"] and "base_model" not in meta
    manifest = json.loads((run / "manifest.json").read_text())["stages"]["train-saes"]
    assert f"Training tokens per SAE: {manifest['tokens_per_layer']}" in card and manifest["tokens_per_layer"] > 0
    metrics = {row["hook_name"]: row for row in json.loads((run / "saes" / "metrics.json").read_text())}
    table = [line for line in card.splitlines() if line.startswith("| blocks.") and line.count("|") > 8]
    assert len(table) == len(metrics) == 2
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = metrics[cells[0]]
        for (key, _, _), cell in zip(COLUMNS, cells[1:]):
            decimals = len(cell.split(".")[1]) if "." in cell else 0
            assert abs(float(cell) - row[key]) <= 0.5 * 10**-decimals + 1e-12, (key, cell, row[key])

    hubbed = tmp_path / "hubbed"
    shutil.copytree(run, hubbed)
    for cfg_path in (hubbed / "saes").glob("*/cfg.json"):
        cfg = json.loads(cfg_path.read_text())
        cfg["metadata"]["model_name"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
        cfg_path.write_text(json.dumps(cfg))
    export_hub(hubbed, tmp_path / "hub2")
    assert _front_matter((tmp_path / "hub2" / "README.md").read_text())["base_model"] == (
        "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_hub_id():
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("smollm2-135m") is None and hub_id("model.gguf") is None and hub_id(None) is None
    assert hub_id(__file__) is None


def _jsonl(path) -> list[dict]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def test_dashboard_json_reads_back_to_the_same_dashboards(tiny_run):
    run, made = tiny_run
    assert read_dashboards(run / "dashboard") == made


def test_neuronpedia_layout_field_by_field(tiny_run, tmp_path, cli, monkeypatch):
    run, _ = tiny_run
    monkeypatch.delenv("DEFAULT_CREATOR_ID", raising=False)
    out = tmp_path / "np"
    code, _, err = cli(["export", "--run", str(run), "--to", "neuronpedia", str(out), "--repo", "resa/tiny-saes",
                        "--model-id", "tiny-qwen2"])
    assert code == 0, err
    dash = json.loads((run / "dashboard" / "dashboard.json").read_text())
    source = out / "tiny-qwen2" / "1-res-resa"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        f"tiny-qwen2/1-res-resa/{name}" for name in (
            "activations/batch-0.jsonl.gz", "features/batch-0.jsonl.gz", "model.jsonl", "release.jsonl",
            "source.jsonl", "sourceset.jsonl")]
    for name, keys in [("release", RELEASE_KEYS), ("model", MODEL_KEYS), ("sourceset", SOURCESET_KEYS),
                       ("source", SOURCE_KEYS)]:
        rows = _jsonl(source / f"{name}.jsonl")
        assert len(rows) == 1 and list(rows[0]) == keys, name
        datetime.fromisoformat(rows[0]["createdAt"])
    src = _jsonl(source / "source.jsonl")[0]
    assert (src["id"], src["modelId"], src["setName"]) == ("1-res-resa", "tiny-qwen2", "res-resa")
    assert (src["hfRepoId"], src["hfFolderId"], src["saelensSaeId"]) == (
        "resa/tiny-saes", "blocks.1.hook_resid_post", "blocks.1.hook_resid_post")
    assert src["num_prompts"] == dash["n_texts"] and src["dataset"] == dash["dataset"]
    assert _jsonl(source / "sourceset.jsonl")[0]["releaseName"] == _jsonl(source / "release.jsonl")[0]["name"] == "run"
    model = _jsonl(source / "model.jsonl")[0]
    assert model["id"] == "tiny-qwen2" and model["instruct"] is False
    assert model["creatorId"] == "clkht01d40000jv08hvalcvly"

    features = _jsonl(source / "features" / "batch-0.jsonl.gz")
    activations = _jsonl(source / "activations" / "batch-0.jsonl.gz")
    assert [f["index"] for f in features] == [f["feature"] for f in dash["features"]]
    assert len({a["id"] for a in activations}) == len(activations) == sum(len(f["contexts"]) for f in dash["features"])
    assert len(activations) >= 10, "too few contexts to test anything"
    by_feature = {}
    for a in activations:
        assert list(a) == ACTIVATION_KEYS
        assert isinstance(a["id"], str) and len(a["id"]) <= 25 and type(a["index"]) is int
        assert (a["layer"], a["modelId"]) == ("1-res-resa", "tiny-qwen2")
        assert all(isinstance(t, str) for t in a["tokens"]) and all(isinstance(v, float) for v in a["values"])
        assert isinstance(a["maxValueTokenIndex"], int) and isinstance(a["qualifyingTokenIndex"], int)
        by_feature.setdefault(a["index"], []).append(a)
    for f, d in zip(features, dash["features"]):
        assert list(f) == FEATURE_KEYS
        assert (f["modelId"], f["layer"], f["hasVector"], f["vector"]) == ("tiny-qwen2", "1-res-resa", False, [])
        assert f["pos_str"] == [t.replace("↵", "\n") for t, _ in d["logits_positive"]]
        assert f["pos_values"] == [v for _, v in d["logits_positive"]]
        assert f["neg_values"] == [v for _, v in d["logits_negative"]] and len(f["neg_str"]) == len(f["neg_values"])
        assert f["frac_nonzero"] == d["frequency"]
        assert f["freq_hist_data_bar_heights"] == d["histogram_counts"]
        assert all(type(h) is int for h in f["freq_hist_data_bar_heights"])
        edges = d["histogram_edges"]
        assert f["freq_hist_data_bar_values"] == pytest.approx([(a + b) / 2 for a, b in zip(edges, edges[1:])],
                                                             abs=1e-5)
        rows = by_feature.get(d["feature"], [])
        assert len(rows) == len(d["contexts"])
        assert f["maxActApprox"] == max((a["maxValue"] for a in rows), default=0.0)
        for a, ctx in zip(rows, d["contexts"]):
            assert len(a["tokens"]) == len(a["values"]) == len(ctx["acts"])
            assert a["tokens"] == [t.replace("↵", "\n") for t in ctx["tokens"]]
            assert a["values"] == [0.0 if sink else v for v, sink in zip(ctx["acts"], ctx["sinks"])]
            assert a["qualifyingTokenIndex"] == ctx["peak"] and a["values"][ctx["peak"]] == ctx["acts"][ctx["peak"]]
            # as the exporter: the extremes of the shown values (a window may overlap a higher-ranked context)
            assert a["maxValue"] == max(a["values"]) >= ctx["acts"][ctx["peak"]] and a["minValue"] == min(a["values"])
            assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
            assert (a["binMin"], a["binMax"], a["binContains"]) == (-1, d["max_activation"], -1)


def test_sink_positions_read_zero_as_the_exporter_zeroes_bos():
    ctx = Context(text=0, position=3, value=2.0, tokens=["<s>", "a↵", "b"], acts=[9.0, 2.0, 0.5], peak=1,
                  at_marker=False, sinks=[True, False, False])
    f = FeatureDashboard(layer=1, feature=7, hook_name="blocks.1.hook_resid_post", reasoning=False, frequency=0.1,
                         max_activation=2.0, mean_when_firing=1.0, histogram_edges=[0.0, 1.0, 2.0],
                         histogram_counts=[1.0, 1.0], contexts=[ctx], at_marker_share=0.0, logits_positive=[],
                         logits_negative=[], prompt_acts=[], marker_activations={})
    (row,) = activation_rows(f, "m", "1-res-resa", "c", datetime.now(), iter(["id0"]).__next__)
    assert row.values == [0.0, 2.0, 0.5] and row.tokens == ["<s>", "a\n", "b"]
    assert (row.maxValue, row.maxValueTokenIndex, row.minValue, row.qualifyingTokenIndex) == (2.0, 1, 0.0, 1)
    assert (row.id, row.index, row.layer, row.binMax) == ("id0", 7, "1-res-resa", 2.0)


def test_errors(tiny_run, tmp_path, cli):
    run, _ = tiny_run
    empty = tmp_path / "empty"
    empty.mkdir()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    no_dashboard = tmp_path / "nodash"
    shutil.copytree(run / "saes", no_dashboard / "saes")
    out = str(tmp_path / "o")
    cases = [
        (["--run", str(run), "--to", "zip", out], "--to 'zip' is unknown; accepted: hf, neuronpedia"),
        (["--run", str(empty), "--to", "hf", out], "has no SAEs"),
        (["--run", str(run), "--to", "hf", str(busy)], "exists and is not empty"),
        (["--run", str(run), "--to", "neuronpedia", str(busy)], "exists and is not empty"),
        (["--run", str(no_dashboard), "--to", "neuronpedia", out], "no dashboard data at"),
        (["--run", str(run), "--to", "neuronpedia", out, "--dashboard", str(run / "manifest.json")],
         "is not a dashboard.json of this version"),
    ]
    code, stdout, _ = cli(["--help"])
    assert code == 0 and re.search(r"^\s+export\s+Export a run", stdout, re.M), "export is not a registered command"
    for args, needle in cases:
        code, stdout, err = cli(["export", *args])
        assert code == 2 and needle in err and err.count("\n") == 1, (args, code, err, stdout)
    assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in busy.iterdir()) == ["x"]
