"""Experiment tracking (`--report-to`): what a run reports is what its JSON log holds, read back from a TensorBoard
event file and an offline wandb run; the per-step statistics of the SAE step against a dense recomputation; a
tracked run writes the same bytes as an untracked one; bad values and a missing extra are one line; only the main
process reports; the sweep passes the option to the runs it starts."""

from __future__ import annotations

import glob
import json
import math
import struct
import sys
from pathlib import Path

import pytest
import torch

from resa_interp.model import hook_name
from resa_interp.sae import LayerSAE, train_saes
from resa_interp.tuning import TuneConfig, tune

TB_KEYS = ("loss", "explained_variance", "l0", "dead_fraction", "lr", "grad_norm")


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value of the one TensorBoard event file under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(folder.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    events = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def wandb_records(run_dir: Path) -> list:
    """The records of the one offline wandb run under `run_dir`/wandb/: its .wandb file is a LevelDB-style log
    (a 7-byte header ':W&B' + magic + version, 32 KiB blocks, each record a 7-byte header of CRC, length and
    type: full, first, middle, last) of `wandb_internal_pb2.Record` messages. wandb 0.31 ships no Python reader."""
    from wandb.proto import wandb_internal_pb2

    paths = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    assert len(paths) == 1, paths
    data = Path(paths[0]).read_bytes()
    assert data[:4] == b":W&B"
    records, pos, parts, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def wandb_run(run_dir: Path) -> tuple[dict, dict[int, dict], dict]:
    """(config, step -> history row, the last summary) of the offline run under `run_dir`."""
    config, history, summary = {}, {}, {}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[row["_step"]] = row
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
    return config, history, summary


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def offline_wandb(monkeypatch):
    """wandb without a network or a prompt."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


# ------------------------------------------------------------------------------------------ Stage I


def test_sae_step_statistics_are_a_dense_recomputation():
    """The loss, L0 and grad norm a step reports are those of a dense TopK SAE with the same weights (autograd's
    gradients, the decoder's parallel part removed as the step removes it)."""
    torch.manual_seed(0)
    x = torch.randn(40, 16) * 3 + 1
    sae = LayerSAE(16, 64, 4, seed=0)
    sae.make_optimizer("adam", 1e-3)
    sae.data_init(x, from_pretrained=False)
    enc, b_enc, dec, b_dec = (p.detach().clone().requires_grad_(True) for p in (sae.enc, sae.b_enc, sae.dec, sae.b_dec))
    stats = sae.step(x)

    xs = x * sae.scale
    pre = (xs - b_dec) @ enc.T + b_enc
    top = pre.topk(4, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    loss = ((acts @ dec + b_dec - xs) ** 2).sum(-1).mean()
    loss.backward()
    dec.grad -= (dec.grad * dec).sum(-1, keepdim=True) * dec
    norm = torch.cat([g.grad.flatten() for g in (enc, b_enc, dec, b_dec)]).norm().item()
    variance = (xs - xs.mean(0)).pow(2).sum(-1).mean().item()
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert stats["explained_variance"] == pytest.approx(1 - loss.item() / variance, rel=1e-5)
    assert stats["l0"] == pytest.approx((acts > 0).sum(-1).float().mean().item())
    assert stats["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert stats["lr"] == 1e-3


@pytest.fixture(scope="module")
def tracked_stage1(tiny_train_config, tmp_path_factory):
    """The same tiny Stage I run twice: reported to TensorBoard, and not reported."""
    root = tmp_path_factory.mktemp("tracked")
    tracked = train_saes(tiny_train_config(report_to="tensorboard"), root / "tb")
    plain = train_saes(tiny_train_config(), root / "plain")
    return tracked, plain


def test_stage1_curves_and_tensorboard_agree(tracked_stage1, tiny_train_config):
    tracked, _ = tracked_stage1
    cfg = tiny_train_config()
    lines = log_lines(tracked.run / "saes" / "train_log.jsonl")
    steps = cfg.tokens // cfg.batch_tokens
    assert [(r["step"], r["layer"]) for r in lines] == [(s, layer) for s in range(1, steps + 1) for layer in (1, 2)]
    assert all(r["tokens"] == r["step"] * cfg.batch_tokens and 0 < r["l0"] <= cfg.k for r in lines)
    assert lines[-1]["explained_variance"] > lines[0]["explained_variance"]
    final = {row["layer"]: row for row in tracked.metrics}
    for layer in (1, 2):  # the last step's dead fraction is the one the metrics record
        last = [r for r in lines if r["layer"] == layer][-1]
        assert last["dead_fraction"] == final[layer]["dead_fraction_training"]

    tb = scalars(tracked.run / "tensorboard" / tracked.run.name)
    for layer in (1, 2):
        for key in TB_KEYS:
            want = {r["step"]: r[key] for r in lines if r["layer"] == layer}
            got = tb[f"{hook_name('resid_post', layer)}/{key}"]
            assert sorted(got) == sorted(want), key
            assert all(math.isclose(got[s], want[s], rel_tol=1e-6, abs_tol=1e-12) for s in want), key
    assert sorted(tb["tokens_per_s"]) == list(range(1, steps + 1)) and min(tb["tokens_per_s"].values()) > 0
    assert tb["tokens"] == {s: float(s * cfg.batch_tokens) for s in range(1, steps + 1)}
    for layer in (1, 2):
        summary = tb[f"summary/{hook_name('resid_post', layer)}/explained_variance"]
        assert list(summary) == [steps] and summary[steps] == pytest.approx(final[layer]["explained_variance"])


def test_a_tracked_run_writes_the_same_bytes(tracked_stage1):
    tracked, plain = tracked_stage1
    files = sorted(p.relative_to(plain.run / "saes") for p in (plain.run / "saes").rglob("*") if p.is_file())
    assert Path("train_log.jsonl") in files and Path("metrics.json") in files
    for name in files:
        assert (tracked.run / "saes" / name).read_bytes() == (plain.run / "saes" / name).read_bytes(), name
    assert not (plain.run / "tensorboard").exists() and not (plain.run / "wandb").exists()


# ------------------------------------------------------------------------------------------ tune


def tune_config(model: str, sae: Path, **kw) -> TuneConfig:
    return TuneConfig(**{**dict(model=model, sae=str(sae), dataset="synthetic", limit=3, steps=6, lr=1e-3,
                                save_every=None, device="cpu", seed=0), **kw})


def test_tune_tensorboard_matches_train_log(tiny_qwen2, tiny_stage1, tmp_path):
    result = tune(tune_config(tiny_qwen2, tiny_stage1.sae_dirs[1], report_to="tensorboard"), tmp_path / "t")
    lines = log_lines(result.out / "train_log.jsonl")
    tb = scalars(result.out / "tensorboard" / "t")
    for key in ("kl", "sae_mse", "lr", "grad_norm", "tokens", "epoch"):
        want = {r["step"]: r[key] for r in lines}
        assert sorted(tb[key]) == list(range(1, 7)) == sorted(want), key
        assert all(math.isclose(tb[key][s], want[s], rel_tol=1e-6, abs_tol=1e-12) for s in want), key
    assert sorted(tb["tokens_per_s"]) == list(range(1, 7))
    assert tb["summary/final/kl"] == {6: pytest.approx(lines[-1]["kl"])}
    assert tb["summary/first/kl"] == {6: pytest.approx(lines[0]["kl"])}


def test_tune_offline_wandb_run_reads_back(cli, offline_wandb, tiny_qwen2, tiny_stage1, tmp_path):
    out = tmp_path / "w"
    code, _, err = cli(["tune", "--model", tiny_qwen2, "--sae", str(tiny_stage1.sae_dirs[1]), "--steps", "5",
                        "--limit", "3", "--lr", "1e-3", "--device", "cpu", "--report-to", "wandb", "--out", str(out)])
    assert code == 0, err
    lines = log_lines(out / "train_log.jsonl")
    config, history, summary = wandb_run(out)
    assert config["report_to"] == "wandb" and config["steps"] == 5 and config["sae"] == str(tiny_stage1.sae_dirs[1])
    assert config["lora_targets"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert sorted(history) == [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    for r in lines:
        row = history[r["step"]]
        assert {k: row[k] for k in r if k != "step"} == {k: v for k, v in r.items() if k != "step"}
        assert row["tokens_per_s"] > 0
    assert summary["final/kl"] == lines[-1]["kl"] and summary["first/kl"] == lines[0]["kl"]
    assert summary["steps"] == 5 and summary["tokens_seen"] == sum(r["tokens"] for r in lines)


def test_only_the_main_process_reports(monkeypatch, tiny_qwen2, tiny_stage1, tmp_path):
    import resa_interp.tuning.run as tuning_run

    monkeypatch.setattr(tuning_run, "is_main_process", lambda: False)  # as rank 1 of a launcher sees itself
    result = tune(tune_config(tiny_qwen2, tiny_stage1.sae_dirs[1], steps=2, report_to="tensorboard"), tmp_path / "r")
    assert len(result.records) == 2 and not (result.out / "tensorboard").exists()


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("command", ["train-saes", "tune", "sweep"])
def test_an_unknown_report_to_is_one_line(cli, command, tiny_qwen2, tiny_stage1, tmp_path):
    more = {"tune": ["--sae", str(tiny_stage1.sae_dirs[1])], "sweep": ["--saes", str(tiny_stage1.run)]}
    code, _, err = cli([command, "--model", tiny_qwen2, *more.get(command, []), "--report-to", "nope", "--out",
                        str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1, err
    assert "--report-to 'nope' is unknown; accepted: none, wandb, tensorboard" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("backend,module", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_backend_is_one_line_before_any_work(cli, monkeypatch, backend, module, tiny_qwen2, tiny_stage1,
                                                       tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # `import wandb` now raises ImportError
    code, _, err = cli(["tune", "--model", tiny_qwen2, "--sae", str(tiny_stage1.sae_dirs[1]), "--steps", "1",
                        "--device", "cpu", "--report-to", backend, "--out", str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1, err
    assert f"--report-to {backend} needs the package '{module}' (extra 'track')" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ sweep


@pytest.mark.slow
def test_the_sweep_reports_itself_and_its_tuning_runs(cli, tiny_qwen2, tiny_stage1, tmp_path):
    out = tmp_path / "s"
    code, _, err = cli(["sweep", "--model", tiny_qwen2, "--saes", str(tiny_stage1.run), "--layers", "1,2", "--steps",
                        "2", "--train-limit", "2", "--limit", "1", "--max-new-tokens", "4", "--device", "cpu",
                        "--report-to", "tensorboard", "--out", str(out)])
    assert code == 0, err
    for layer in (1, 2):  # each layer's tuning is a tracked run of its own
        lines = log_lines(out / f"layer-{layer}" / "train_log.jsonl")
        tb = scalars(out / f"layer-{layer}" / "tensorboard" / f"layer-{layer}")
        assert tb["kl"] == {r["step"]: pytest.approx(r["kl"]) for r in lines}
    rows = {int(row["layer"]): row for row in _csv(out / "scores.csv")}
    tb = scalars(out / "tensorboard" / "s-sweep")
    assert sorted(tb["avg"]) == [1, 2]
    for layer, row in rows.items():
        assert tb["avg"][layer] == pytest.approx(float(row["avg"]), abs=1e-4)
        assert tb["gold_logprob"][layer] == pytest.approx(float(row["gold_logprob"]), rel=1e-4)
        assert tb[f"summary/layer-{layer}/kl_last"] == {2: pytest.approx(
            log_lines(out / f"layer-{layer}" / "train_log.jsonl")[-1]["kl"])}


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader(path.read_text().splitlines()))
