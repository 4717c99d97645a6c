"""Every notebook runs top to bottom on a small budget (one small Stage I run of the embedded model, made once
and shared through RESA_NB_* environment variables), and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_reasoning_features", "02_feature_dashboards", "03_layer_selection", "04_sae_tuning",
         "05_stability_and_interventions"]


def test_notebooks_are_committed_clean_and_call_the_library():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        cells = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in cells), f"{name} has outputs"
        source = "\n".join(c.source for c in cells)
        assert "from resa_interp" in source and "\ndef " not in f"\n{source}", f"{name} must call the library"


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory, embedded):
    """One small Stage I run (3 layers, 3 seeds, 2,048 tokens per SAE) with its features, and small budgets."""
    from resa_interp.features import FeatureConfig, run_features
    from resa_interp.sae import SAETrainConfig, train_saes

    root = tmp_path_factory.mktemp("notebooks")
    run = root / "run"
    train_saes(SAETrainConfig(layers="4,12,20", tokens=2048, heldout=4, seeds=(1, 2)), run, subject=embedded)
    run_features(FeatureConfig(layers="4,12,20"), run, subject=embedded)
    return {
        "RESA_NB_RUN": str(run),
        "RESA_NB_TEXTS": "8",
        "RESA_NB_DRAWS": "2",
        "RESA_NB_BOOTSTRAP": "20",
        "RESA_NB_PERMUTATIONS": "20",
        "RESA_NB_RESTARTS": "10",
        "RESA_NB_TUNE_LAYER": "12",
        "RESA_NB_TUNE_STEPS": "3",
        "RESA_NB_TUNE_LIMIT": "4",
        "RESA_NB_TUNE_OUT": str(root / "tuned"),
    }


def _check_dashboards(run: Path, embedded) -> None:
    """Notebook 02's page is of the layer with the most reasoning features and of those features, on the budget it
    was given; each latent's activations on the prompt equal a plain SAELens encode of the model's hidden states."""
    import json

    import torch
    from sae_lens import SAE

    doc = json.loads((run / "features.json").read_text())
    counts = {row["layer"]: row["count"] for row in doc["layers"]}
    layer = max(counts, key=counts.get)
    expected = next(row["features"] for row in doc["layers"] if row["layer"] == layer) or [0, 1, 2]
    page = json.loads((run / "dashboard" / "dashboard.json").read_text())
    html = (run / "dashboard" / "dashboard.html").read_text()
    assert page["n_texts"] == 8 and page["hook"] == "resid_post"
    assert [(f["layer"], f["feature"]) for f in page["features"]] == [(layer, fid) for fid in expected]
    ids = doc["prompts"][0]["token_ids"]
    assert len(page["prompt_tokens"]) == len(ids)
    sae = SAE.load_from_disk(str(run / "saes" / f"blocks.{layer}.hook_resid_post"))
    with torch.no_grad():
        x = embedded.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]
        latents = sae.encode(x)
    for f in page["features"]:
        assert f["reasoning"] == bool(counts[layer]) and f["hook_name"] == f"blocks.{layer}.hook_resid_post"
        assert 0 <= f["frequency"] <= 1 and len(f["contexts"]) <= 12, f["feature"]  # DashboardConfig().top
        assert f["prompt_acts"] == pytest.approx(latents[:, f["feature"]].tolist(), abs=2e-4), f["feature"]
        for marker, values in f["marker_activations"].items():
            spans = page["prompt_markers"][marker]
            assert values == pytest.approx([max(f["prompt_acts"][s:e]) for s, e in spans], abs=1e-4)
        assert f" {f['feature']} · layer {layer} <small>(blocks.{layer}.hook_resid_post)</small></h2>" in html


def _check_tuning(out: Path, embedded, printed: str) -> None:
    """Notebook 04 tuned the layer and for the steps it was given, merged the adapter into a model of the subject's
    shape, and printed the means of the KL the log holds."""
    import json
    import re

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["kl"] > 0 for r in log)
    kl = [r["kl"] for r in log]
    means = re.search(r"mean KL of the first 3 steps ([\d.]+), of the last 3 ([\d.]+)", printed)
    assert means and [float(v) for v in means.groups()] == pytest.approx([sum(kl) / 3] * 2, abs=1e-4), printed
    stage = json.loads((out / "manifest.json").read_text())["stages"]["tune"]
    assert stage["steps"] == 3 and stage["sae"]["layer"] == 12 and stage["sae"]["hook_name"] == (
        "blocks.12.hook_resid_post")
    assert stage["first"] == kl[0] and stage["last"] == kl[-1]
    merged = json.loads((out / "merged" / "config.json").read_text())
    base = embedded.hf.config
    assert merged["architectures"] == base.architectures
    assert (merged["num_hidden_layers"], merged["hidden_size"]) == (base.num_hidden_layers, base.hidden_size)
    assert (out / "merged" / "model.safetensors").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, notebook_env, monkeypatch, embedded):
    from nbclient import NotebookClient

    for key, value in notebook_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if name == "04_sae_tuning":
        _check_tuning(Path(notebook_env["RESA_NB_TUNE_OUT"]), embedded, printed)
    if name == "05_stability_and_interventions":
        assert "further seeds in the run: [1, 2]" in printed and "reasoning − control" in printed
        assert (Path(notebook_env["RESA_NB_RUN"]) / "trace" / "trace.json").exists()
    if name == "02_feature_dashboards":
        _check_dashboards(Path(notebook_env["RESA_NB_RUN"]), embedded)
