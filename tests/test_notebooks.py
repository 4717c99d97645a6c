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
    from resa_interp.features.extract import FeatureConfig, run_features
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


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, notebook_env, monkeypatch):
    from nbclient import NotebookClient

    for key, value in notebook_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if name == "04_sae_tuning":
        assert (Path(notebook_env["RESA_NB_TUNE_OUT"]) / "merged" / "config.json").exists()
    if name == "05_stability_and_interventions":
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert "further seeds in the run: [1, 2]" in printed and "reasoning − control" in printed
        assert (Path(notebook_env["RESA_NB_RUN"]) / "trace" / "trace.json").exists()
    if name == "02_feature_dashboards":
        assert (Path(notebook_env["RESA_NB_RUN"]) / "dashboard" / "dashboard.html").exists()
