"""scripts/gpu_check.py on the CPU: its refusal without CUDA, its dry run (every part at tiny shapes, recorded in
one JSON file), and a failing part recorded while the others still run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def qwen2_parameters(c: dict) -> int:
    """Parameters of a Qwen2 causal LM from its config, counted by hand: untied embeddings and head, per layer q/k/v
    (with biases) and o projections, the gated MLP's three matrices and two RMSNorms, and the final norm."""
    h, inter, heads, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
    kv_width = kv * h // heads
    attention = (h * h + h) + 2 * (h * kv_width + kv_width) + h * h
    layer = attention + 3 * h * inter + 2 * h
    return 2 * c["vocab_size"] * h + c["num_hidden_layers"] * layer + h


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_cuda(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gpu_check needs a CUDA device"), proc.stderr
    assert "--dry-run-cpu" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_failing_part_is_recorded_and_the_next_still_runs(gpu_check, tmp_path, monkeypatch):
    out = tmp_path / "check.json"

    def planted(check):
        raise RuntimeError("planted failure")

    def after(check):  # the record on disk already holds the parts before this one
        return {"seen": list(json.loads(out.read_text())["parts"])}

    monkeypatch.setattr(gpu_check, "PARTS", [("env", gpu_check.part_env), ("boom", planted), ("after", after)])
    assert gpu_check.main(["--dry-run-cpu", "--out", str(out)]) == 1
    record = json.loads(out.read_text())
    parts = record["parts"]
    assert record["ok"] is False and list(parts) == ["env", "boom", "after"]
    assert parts["boom"] == {**parts["boom"], "ok": False, "error": "RuntimeError: planted failure"}
    assert parts["boom"]["seconds"] >= 0 and "planted failure" in parts["boom"]["traceback"][-1]
    assert parts["env"]["ok"] and parts["env"]["torch"] == torch.__version__
    assert parts["after"] == {**parts["after"], "ok": True, "seen": ["env", "boom"]}


def test_spent_budget_skips_the_remaining_parts(gpu_check, tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--dry-run-cpu", "--out", str(out), "--budget-s", "0"]) == 1
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == [name for name, _ in gpu_check.PARTS]
    assert all(not p["ok"] and p["error"].startswith("skipped: the budget of 0 s") for p in parts.values())


@pytest.fixture(scope="module")
def dry_run(gpu_check, tmp_path_factory):
    """The whole dry run, once. Stage I's PNG figure is left out (no browser for Kaleido, as on the GPU machine,
    which has no Kaleido): the check times compute, and a browser on a loaded machine can take minutes."""
    out = tmp_path_factory.mktemp("gpu-check") / "check.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BROWSER_PATH", str(out.parent / "no-browser"))
        rc = gpu_check.main(["--dry-run-cpu", "--out", str(out), "--budget-s", "3600"])
    return rc, json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_every_part_ok_with_sane_numbers(gpu_check, dry_run):
    rc, record = dry_run
    parts = record["parts"]
    assert {name: p.get("error") for name, p in parts.items() if not p["ok"]} == {}
    assert rc == 0 and record["ok"] and record["mode"] == "dry-run-cpu"
    assert list(parts) == [name for name, _ in gpu_check.PARTS]
    assert all(p["seconds"] > 0 for p in parts.values())

    config = gpu_check.TINY.model
    assert parts["model"]["parameters"] == qwen2_parameters(config)
    # the real model's count, by the same hand formula: 1.78 B with the untied head
    assert qwen2_parameters(gpu_check.R1_DISTILL_QWEN_1_5B) == 1_777_088_000

    step = parts["sae_step"]
    assert step["errors"] == {} and step["latents"] == gpu_check.TINY.latents
    names = {"sparsify fp32", "sparsify bf16 autocast", "resa fp32 select", "resa bf16 select", "encoder matmul bf16"}
    assert set(step["steps"]) == names
    for row in step["steps"].values():
        assert row["median_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(step["batch_tokens"] / row["median_s"])
        base = step["steps"]["sparsify fp32"]["median_s"]
        assert row["x_sparsify_fp32"] == pytest.approx(base / row["median_s"])
    matmul = step["steps"]["encoder matmul bf16"]["median_s"]
    for name in ("resa fp32 select", "resa bf16 select"):
        assert step["steps"][name]["fraction_of_bf16_matmul"] == pytest.approx(matmul / step["steps"][name]["median_s"])

    stage1 = parts["stage1"]
    assert stage1["layers"] == [1, 2, 3] and len(stage1["explained_variance"]) == 3
    assert stage1["tokens_per_sae"] >= 1024 and stage1["plan_bytes"] > 0 and stage1["plan_group_size"] >= 1
    assert stage1["peak_allocated_bytes"] is None and "measured_over_plan" not in stage1  # no CUDA allocator here

    tuning = parts["tuning"]
    assert tuning["spliced_s"] > 0 and tuning["plain_s"] > 0 and tuning["d_sae"] == gpu_check.TINY.latents
    assert tuning["ratio"] == pytest.approx(tuning["spliced_s"] / tuning["plain_s"])

    ranks = parts["torchrun"]
    assert ranks["rc"] == 0 and ranks["backend"] == "gloo" and ranks["world_size"] == 1
    assert ranks["all_reduce"] == 1.0 and ranks["exchange_ok"] is True and len(ranks["explained_variance"]) == 2
