"""Settings and plans shown before work starts: every difference from the paper's Appendix A marked, --dry-run
reads configs only and writes nothing, bad inputs refused before anything expensive; numerics in the manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import torch

from resa_interp.presets import with_preset
from resa_interp.runs import read_manifest, record_stage
from resa_interp.sae import PRESETS, SAETrainConfig, build_topk_sae, stage1_settings


def _line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.split() and line.split()[0] == name)


def test_settings_mark_every_difference_from_the_paper():
    cpu = with_preset(SAETrainConfig, PRESETS, None)
    report = stage1_settings(cpu, None)
    # Appendix A: Signum at 2.5e-4, batches of 16 sequences x 2048 tokens; the CPU defaults differ in all three
    assert {"optimizer", "lr", "batch_tokens"} <= set(report.differences)
    assert "adam" in _line(report.format(), "optimizer") and "!= paper: signum" in _line(report.format(), "optimizer")
    assert "!=" not in _line(report.format(), "k")  # k 32 is the paper's
    paper = with_preset(SAETrainConfig, PRESETS, "paper")
    assert stage1_settings(paper, "paper").differences == ()
    assert "every setting is as in the paper's Appendix A" in stage1_settings(paper, "paper").format()
    changed = with_preset(SAETrainConfig, PRESETS, "paper", lr=1e-3, group_size=2)
    assert stage1_settings(changed, "paper").differences == ("lr",)  # group size changes no result


def test_dry_run_reads_the_config_only_and_writes_nothing(cli, tiny_qwen2, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_qwen2, model)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(b"these are not weights")  # a run that read them would fail
    out = tmp_path / "run"
    args = ["train-saes", "--model", str(model), "--layers", "1,2", "--tokens", "4096", "--batch-tokens", "1024",
            "--out", str(out)]
    code, stdout, err = cli([*args, "--dry-run"])
    assert code == 0, err
    assert not out.exists()
    assert stdout.startswith("train-saes: defaults;") and "differ from the paper's Appendix A" in stdout
    assert "layers: blocks.1, blocks.2 (paper: 2nd, 3rd layer)" in stdout
    assert "512 latents, k 32; 4,096 tokens per SAE, 4 optimizer steps each" in stdout  # 8 x d_model 64
    assert "blocks.1.hook_resid_post .. blocks.2.hook_resid_post" in stdout
    code, _, err = cli(args)  # the same command without --dry-run does read the weights, and says so in one line
    assert code == 2 and "could not load" in err and "header" in err and err.count("\n") == 1


def test_bad_input_is_refused_before_any_work(cli, tiny_qwen2, tmp_path):
    out = tmp_path / "new"
    code, _, err = cli(["features", "--model", tiny_qwen2, "--prompt", "no markers here", "--out", str(out)])
    assert code == 2 and "has no <think> and no </think>" in err and err.count("\n") == 1
    assert not out.exists()  # no SAEs were trained for a prompt that could never be used
    code, _, err = cli(["train-saes", "--model", tiny_qwen2, "--layers", "1,9", "--out", str(out), "--dry-run"])
    assert code == 2 and "layer 9 is outside the model (0..3)" in err
    code, _, err = cli(["train-saes", "--model", tiny_qwen2, "--optimizer", "sgd", "--out", str(out), "--dry-run"])
    assert code == 2 and "--optimizer" in err and "sgd" in err
    # a --from folder without the asked hookpoint is refused from its file names, before the model is loaded
    source = tmp_path / "source"
    build_topk_sae(torch.zeros(64, 16), torch.zeros(16), torch.zeros(16, 64), torch.zeros(64), k=4,
                   metadata={"hook_name": "blocks.1.hook_mlp_out"}).save_model(str(source / "blocks.1.hook_mlp_out"))
    code, _, err = cli(["train-saes", "--model", tiny_qwen2, "--mode", "finetune", "--from", str(source), "--layers",
                        "1", "--out", str(out)])
    assert code == 2 and "no resid_post SAE for layer 1 there" in err and "--from-hook mlp_out" in err
    assert not out.exists()


def test_tune_plan_checks_the_sae_against_the_model(cli, tiny_qwen2, tmp_path):
    def sae_folder(d_in: int, layer: int):
        sae = build_topk_sae(torch.zeros(d_in, 16), torch.zeros(16), torch.zeros(16, d_in), torch.zeros(d_in), k=4,
                             metadata={"hook_name": f"blocks.{layer}.hook_resid_post"})
        path = tmp_path / f"sae-{d_in}-{layer}"
        sae.save_model(str(path))
        return str(path)

    out = tmp_path / "tuned"
    code, _, err = cli(["tune", "--model", tiny_qwen2, "--sae", sae_folder(32, 1), "--out", str(out), "--dry-run"])
    assert code == 2 and "SAE d_in 32 does not match the model's d_model 64" in err
    code, stdout, err = cli(["tune", "--model", tiny_qwen2, "--sae", sae_folder(64, 2), "--steps", "3", "--out",
                             str(out), "--dry-run"])
    assert code == 0, err
    assert "spliced in at blocks.2.hook_resid_post (blocks.2; paper: 3rd layer)" in stdout
    assert "tune: --preset cpu;" in stdout and "!= paper: 1e-06" in _line(stdout, "lr")
    assert not out.exists()


def test_eval_and_sweep_plans(cli, tiny_qwen2, tmp_path):
    code, stdout, err = cli(["eval", "--model", tiny_qwen2, "--tasks", "synthetic", "--limit", "3", "--backend",
                             "transformers", "--out", str(tmp_path / "e"), "--dry-run"])
    assert code == 0, err
    assert "differ from the paper's evaluation" in stdout and "!= paper: vllm" in _line(stdout, "backend")
    assert "tasks: synthetic, first 3 problems each" in stdout
    code, stdout, err = cli(["sweep", "--model", tiny_qwen2, "--layers", "1-3", "--out", str(tmp_path / "s"),
                             "--dry-run"])
    assert code == 0, err
    assert "layers: blocks.1-3 (paper: 2nd-4th layer)" in stdout
    assert "SAEs trained first" in stdout
    assert not (tmp_path / "e").exists() and not (tmp_path / "s").exists()
    assert all(not line.startswith(("  evaluation.model", "  saes.layers")) for line in stdout.splitlines())


def test_manifests_record_what_changes_numbers(tmp_path):
    record_stage(tmp_path, "probe", {})
    numerics = read_manifest(tmp_path)["stages"]["probe"]["numerics"]
    assert numerics["torch_threads"] == torch.get_num_threads()
    flags = set(open("/proc/cpuinfo").read().split())
    assert numerics["cpu_flags"] and set(numerics["cpu_flags"]) <= flags
    assert json.loads(json.dumps(numerics)) == numerics


def test_importing_the_package_pins_the_blas_branch():
    info = open("/proc/cpuinfo").read()
    flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    expected = "AVX512" if "GenuineIntel" in info and "avx512f" in flags else "AVX2" if "avx2" in flags else "None"
    code = "import os, resa_interp, torch; torch.ones(2, 2) @ torch.ones(2, 2); print(os.environ.get('MKL_CBWR'))"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == expected
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**env, "MKL_CBWR": "COMPATIBLE"}).stdout
    assert kept.strip() == "COMPATIBLE"  # a branch the user chose is never overridden


def test_stage_one_under_a_launcher(cli, tiny_qwen2, tmp_path, monkeypatch):
    """train-saes spreads the layers over the ranks (the plan says which rank trains which, rank 1 prints nothing)
    and refuses more ranks than layers in one line; cache-activations stays one process (every rank would
    harvest the whole cache into the same folder)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    dry = ["train-saes", "--dry-run", "--model", tiny_qwen2, "--layers", "1-3", "--out", str(out)]
    code, text, _ = cli(dry)
    assert code == 0 and "2 launcher ranks" in text and "the SAEs of layers 1,3 on rank 0; 2 on rank 1" in text
    assert "2 of 2 layers per forward pass" in text and "on each of 2 ranks" in text
    monkeypatch.setenv("RANK", "1")
    assert cli(dry)[:2] == (0, "")
    code, _, err = cli(["train-saes", "--model", tiny_qwen2, "--layers", "1", "--out", str(out)])
    assert code == 2 and "train-saes with 2 ranks and 1 layer(s)" in err and err.count("\n") == 1, err
    code, _, err = cli(["cache-activations", "--model", tiny_qwen2, "--layers", "1", "--out", str(out)])
    assert code == 2 and "under a launcher with 2 ranks: it runs in one process" in err, err
    assert err.count("\n") == 1 and not out.exists()
