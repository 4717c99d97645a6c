"""`export`: the hub folder read back by SAELens itself (load_from_disk, and from_pretrained through
huggingface_hub's own offline cache lookup), its model card against metrics.json and the manifest, the
Neuronpedia layout field by field against SAEDashboard's exporter and the dashboard's own numbers, delphi's latent
cache recomputed from the HF model and SAELens and read by delphi's own loader, and the SAEBench core-eval files
validated by SAEBench's pydantic model against metrics.json."""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import os
import re
import shutil
from datetime import datetime

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml
from sae_lens import SAE

from resa_interp.dashboard import (
    Context,
    DashboardConfig,
    DelphiConfig,
    FeatureDashboard,
    activation_rows,
    export_delphi,
    read_dashboards,
    run_dashboard,
    shard_arrays,
    shard_ranges,
)
from resa_interp.model.loading import hub_id
from resa_interp.sae import export_hub
from resa_interp.sae.folders import load_sae
from resa_interp.sae.metrics import COLUMNS

LATENTS = ",".join(str(i) for i in range(24))


def library(module: str):
    """A module of delphi's or SAEBench's own for the library checks, None where it is not installed; under CI
    (CI set, as .ci/run runs), where `scripts/setup.sh dev` installs both, its absence fails the test instead."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            raise
        return None

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
        (["--run", str(run), "--to", "zip", out], "--to 'zip' is unknown; accepted: hf, neuronpedia, delphi, saebench"),
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


# --- delphi: the latent cache, recomputed on our own and read by delphi's loader ---------------------------------

CACHE_CONFIG_FIELDS = {"dataset_repo": str, "dataset_split": str, "dataset_name": str, "dataset_column": str,
                       "batch_size": int, "cache_ctx_len": int, "n_tokens": int, "n_splits": int}
"""delphi.config.CacheConfig's fields and types (delphi/config.py), which save_config writes with model_name."""
REASONING_AT_1 = [3, 5, 17]


@pytest.fixture(scope="module")
def delphi_cache(tiny_run, tmp_path_factory):
    """`export --to delphi` of a copy of the tiny run (with a features.json naming reasoning features at layer 1),
    24 texts packed in rows of 64 tokens, 4 shards."""
    run = tmp_path_factory.mktemp("delphi") / "run"
    shutil.copytree(tiny_run[0], run)
    (run / "features.json").write_text(json.dumps(
        {"hook": "resid_post", "layers": [{"layer": 1, "features": REASONING_AT_1}, {"layer": 2, "features": []}]}))
    out = run.parent / "delphi"
    result = export_delphi(run, out, DelphiConfig(texts=24, ctx_len=64, n_splits=4, batch_size=8), progress=False)
    return run, out, result


def _shards(folder) -> list[tuple[int, int, dict]]:
    """(start, end, tensors) of every shard file of a hookpoint folder, by start: read as delphi's loader reads the
    names (`LatentDataset._edges`)."""
    from safetensors.numpy import load_file

    found = []
    for path in folder.glob("*.safetensors"):
        start, end = (int(p) for p in path.stem.split("_"))
        found.append((start, end, load_file(str(path))))
    return sorted(found, key=lambda s: s[0])


def _reference_latents(run, layer: int, tokens: torch.Tensor) -> torch.Tensor:
    """[rows, ctx, d_sae] latents recomputed without our harvest: the HF model's hidden_states[layer + 1]
    (blocks.layer.hook_resid_post below the last layer) encoded by SAELens' SAE."""
    from transformers import AutoModelForCausalLM

    sae = SAE.load_from_disk(str(run / "saes" / f"blocks.{layer}.hook_resid_post"))
    model = AutoModelForCausalLM.from_pretrained(sae.cfg.metadata.model_path)
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states[layer + 1]
        return sae.encode(hidden.float())


def test_delphi_shards_cover_every_latent_once_in_delphis_dtypes(delphi_cache):
    run, out, result = delphi_cache
    hooks = sorted(p.name for p in (out / "latents").iterdir())
    assert hooks == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"] == sorted(result.hookpoints)
    for hook in hooks:
        config = json.loads((out / "latents" / hook / "config.json").read_text())
        d_sae = json.loads((run / "saes" / hook / "cfg.json").read_text())["d_sae"]
        for name, kind in CACHE_CONFIG_FIELDS.items():
            assert type(config[name]) is kind, name
        assert (config["n_splits"], config["cache_ctx_len"], config["model_name"]) == (4, 64, str(
            json.loads((run / "saes" / hook / "cfg.json").read_text())["metadata"]["model_name"]))
        shards = _shards(out / "latents" / hook)
        assert len(shards) == 4
        covered = [latent for start, end, _ in shards for latent in range(start, end + 1)]
        assert covered == list(range(d_sae)), "the shards must cover every latent exactly once, in order"
        tokens = shards[0][2]["tokens"]
        assert tokens.shape == (result.rows, 64) and config["n_tokens"] == tokens.size
        for start, end, data in shards:
            assert np.array_equal(data["tokens"], tokens)
            assert data["locations"].dtype == np.uint16 and data["locations"].shape[1] == 3
            assert data["activations"].dtype == np.float16 and len(data["activations"]) == len(data["locations"])
            assert data["locations"][:, 2].max() <= end - start
    assert json.loads((out / "latents" / hooks[0] / "config.json").read_text())["resa_interp"][
        "reasoning_features"] == REASONING_AT_1


def test_delphi_locations_and_activations_recompute(delphi_cache):
    run, out, result = delphi_cache
    for layer in (1, 2):
        shards = _shards(out / "latents" / f"blocks.{layer}.hook_resid_post")
        tokens = torch.from_numpy(shards[0][2]["tokens"].astype(np.int64))
        ref = _reference_latents(run, layer, tokens)
        locations = np.concatenate([d["locations"].astype(np.int64) + [0, 0, start] for start, _, d in shards])
        values = np.concatenate([d["activations"] for _, _, d in shards]).astype(np.float32)
        ours = {tuple(loc): v for loc, v in zip(locations.tolist(), values)}
        assert len(ours) == len(locations) == result.hookpoints[f"blocks.{layer}.hook_resid_post"]
        theirs = {tuple(loc) for loc in torch.nonzero(ref.abs() > 1e-5).tolist()}
        # an activation on the threshold may fall either side in another computation: nothing else may differ
        for loc in set(ours) ^ theirs:
            assert abs(float(ref[loc])) < 1e-4, (layer, loc, float(ref[loc]), ours.get(loc))
        assert len(set(ours) & theirs) > 0.99 * len(theirs) > 0
        expected = torch.tensor([float(ref[loc]) for loc in ours])
        assert torch.allclose(torch.tensor(list(ours.values())), expected, rtol=2e-3, atol=1e-3)
        # TopK: at most k latents per position
        k = json.loads((run / "saes" / f"blocks.{layer}.hook_resid_post" / "cfg.json").read_text())["k"]
        per_position = np.unique(locations[:, :2], axis=0, return_counts=True)[1]
        assert per_position.max() <= k


def test_delphi_own_loader_reads_the_cache(delphi_cache):
    """delphi's TensorBuffer and LatentDataset (eai-delphi, installed with --no-deps plus faiss-cpu,
    sentence-transformers, asyncer, blobfile, orjson) read the export: offsets restored from the file names, and
    records built by its constructor and sampler for the reasoning features."""
    loader, config = library("delphi.latents.loader"), library("delphi.config")
    if loader is None or config is None:
        pytest.skip("eai-delphi is not installed (scripts/setup.sh dev installs it)")
    from transformers import AutoTokenizer

    run, out, _ = delphi_cache
    hook = "blocks.1.hook_resid_post"
    shards = _shards(out / "latents" / hook)
    for start, end, data in shards:
        path = out / "latents" / hook / f"{start}_{end}.safetensors"
        locations, activations, tokens = loader.TensorBuffer(str(path), hook).load()
        assert torch.equal(locations, torch.from_numpy(data["locations"].astype(np.int64) + [0, 0, start]))
        assert torch.equal(activations, torch.from_numpy(data["activations"]))
        assert tokens.shape == data["tokens"].shape
    fields = {f.name: f.type for f in dataclasses.fields(config.CacheConfig)}
    assert set(CACHE_CONFIG_FIELDS) <= set(fields)
    dataset = loader.LatentDataset(
        out / "latents", config.SamplerConfig(n_examples_train=2, n_examples_test=2, n_quantiles=2),
        config.ConstructorConfig(min_examples=1, n_non_activating=2, example_ctx_len=16),
        tokenizer=AutoTokenizer.from_pretrained(out / "tokenizer"), modules=[hook],
        latents={hook: torch.tensor(REASONING_AT_1)})
    records = {r.latent.latent_index: r for r in dataset}
    assert set(records) <= set(REASONING_AT_1) and records, "delphi built no record for the reasoning features"
    everything = {}
    for start, _, data in shards:
        for loc, value in zip(data["locations"].astype(np.int64), data["activations"]):
            everything.setdefault(int(loc[2]) + start, []).append(float(value))
    for latent, record in records.items():
        top = max(float(e.activations.max()) for e in record.examples)
        assert top == max(everything[latent]), latent
        assert record.per_token_frequency == len(everything[latent]) / shards[0][2]["tokens"].size


def test_delphi_shard_ranges_are_delphis():
    assert shard_ranges(256, 5) == [(0, 50), (51, 101), (102, 152), (153, 203), (204, 255)]
    assert shard_ranges(7, 7) == [(i, i) for i in range(7)]
    arrays = shard_arrays(torch.tensor([[0, 1, 2], [70000, 3, 5], [1, 2, 6]]), torch.tensor([1.0, 2.0, 3.0]),
                          np.zeros((2, 4), np.int64), 5, 6)
    assert arrays["locations"].dtype == np.uint32 and arrays["locations"].tolist() == [[70000, 3, 0], [1, 2, 1]]
    assert arrays["activations"].tolist() == [2.0, 3.0]


def test_delphi_errors_before_any_model(tiny_run, tmp_path, cli, monkeypatch):
    run, _ = tiny_run

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("resa_interp.dashboard.delphi.load_subject", no_model)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    out = str(tmp_path / "o")
    cases = [
        (["--n-splits", "0"], "must be >= 1"),
        (["--ctx-len", "1"], "--ctx-len 1 >= 2"),
        (["--n-splits", "999"], "more shards than the 256 latents"),
        (["--layers", "3"], "no resid_post SAE at layer(s) 3; it has 1-2"),
        (["--layers", "x"], "--layers 'x': accepted"),
        (["--seed", "5"], "no resid_post SAEs of seed 5"),
        (["--hook", "mlp_out"], "no mlp_out SAEs"),
    ]
    for args, needle in cases:
        code, stdout, err = cli(["export", "--run", str(run), "--to", "delphi", out, *args])
        assert code == 2 and needle in err and err.count("\n") == 1, (args, code, err, stdout)
    code, _, err = cli(["export", "--run", str(run), "--to", "delphi", str(busy)])
    assert code == 2 and "exists and is not empty" in err
    assert not (tmp_path / "o").exists()


# --- SAEBench: the held-out metrics as its core-eval output ------------------------------------------------------

CORE_CATEGORIES = {
    "model_behavior_preservation": ["kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"],
    "model_performance_preservation": ["ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae",
                                       "ce_loss_without_sae"],
    "reconstruction_quality": ["explained_variance", "explained_variance_legacy", "mse", "cossim"],
    "shrinkage": ["l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"],
    "sparsity": ["l0", "l1"],
    "token_stats": ["total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"],
    "misc_metrics": ["freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
                     "normalized_freq_over_10_percent", "average_max_encoder_cosine_sim",
                     "average_max_decoder_cosine_sim", "frac_alive"],
}
"""SAEBench's CoreMetricCategories, field by field (sae_bench/evals/core/eval_output.py)."""


def test_saebench_core_output_validates_and_holds_the_runs_numbers(tiny_run, tmp_path, cli):
    from safetensors.torch import load_file

    run, _ = tiny_run
    out = tmp_path / "bench"
    code, stdout, err = cli(["export", "--run", str(run), "--to", "saebench", str(out), "--repo", "resa/tiny"])
    assert code == 0, err
    rows = {row["hook_name"]: row for row in json.loads((run / "saes" / "metrics.json").read_text())}
    files = sorted(p.name for p in (out / "core").iterdir())
    assert files == [f"resa_tiny_{hook}_eval_results.json" for hook in sorted(rows)]
    eval_output = library("sae_bench.evals.core.eval_output")  # None: the field-by-field checks below only
    utils = library("sae_bench.sae_bench_utils.general_utils")
    CoreEvalOutput = eval_output and eval_output.CoreEvalOutput
    get_results_filepath = utils and utils.get_results_filepath
    for hook, row in rows.items():
        path = out / "core" / f"resa_tiny_{hook}_eval_results.json"
        if get_results_filepath is not None:
            assert get_results_filepath(str(out / "core"), "resa/tiny", hook) == str(path)
        doc = json.loads(path.read_text())
        if CoreEvalOutput is not None:
            CoreEvalOutput(**doc)  # SAEBench's own pydantic model
        metrics = doc["eval_result_metrics"]
        assert {k: list(v) for k, v in metrics.items()} == CORE_CATEGORIES
        assert (doc["eval_type_id"], doc["sae_lens_id"], doc["sae_lens_release_id"]) == ("core", hook, "resa/tiny")
        cfg = json.loads((run / "saes" / hook / "cfg.json").read_text())
        assert doc["sae_cfg_dict"] == cfg and cfg["architecture"] == "topk"
        assert metrics["reconstruction_quality"]["explained_variance"] == row["explained_variance"]
        assert metrics["sparsity"]["l0"] == row["l0"]
        assert metrics["model_behavior_preservation"]["kl_div_with_sae"] == row["kl_spliced"]
        assert metrics["model_performance_preservation"]["ce_loss_with_sae"] == row["ce_spliced"]
        assert metrics["model_performance_preservation"]["ce_loss_without_sae"] == row["ce_clean"]
        assert metrics["token_stats"]["total_tokens_eval_sparsity_variance"] == row["heldout_tokens"]
        assert metrics["misc_metrics"]["frac_alive"] == pytest.approx(1 - row["heldout_inactive_fraction"])
        rate = 10 ** load_file(str(run / "saes" / hook / "sparsity.safetensors"))["sparsity"].double()
        assert metrics["misc_metrics"]["freq_over_1_percent"] == pytest.approx((rate > 0.01).double().mean().item())
        assert (rate > 1e-9).double().mean().item() == pytest.approx(metrics["misc_metrics"]["frac_alive"])
        for cat, keys in (("model_behavior_preservation", ["kl_div_score", "kl_div_with_ablation"]),
                          ("model_performance_preservation", ["ce_loss_score", "ce_loss_with_ablation"]),
                          ("reconstruction_quality", ["explained_variance_legacy", "mse", "cossim"])):
            assert all(metrics[cat][k] == -1 for k in keys), cat
            assert set(keys) <= set(doc["eval_result_unstructured"]["resa_interp"]["absent"][cat])
        assert doc["eval_config"]["compute_kl"] is doc["eval_config"]["compute_ce_loss"] is True
        assert doc["eval_result_unstructured"]["resa_interp"]["metrics_row"] == row


def test_saebench_needs_metrics(tiny_run, tmp_path, cli):
    run, _ = tiny_run
    bare = tmp_path / "bare"
    shutil.copytree(run / "saes", bare / "saes", ignore=shutil.ignore_patterns("metrics.*"))
    code, _, err = cli(["export", "--run", str(bare), "--to", "saebench", str(tmp_path / "o")])
    assert code == 2 and "has no SAEs with held-out metrics" in err and err.count("\n") == 1
