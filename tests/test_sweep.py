"""The per-layer sweep on a tiny model: the loop features -> sweep -> select-layers, resuming (finished layers are
kept, an interrupted tuning continues from its checkpoint), Stage I run first when needed, presets, errors."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from resa_interp.errors import ResaError
from resa_interp.evaluation import sweep, sweep_config
from resa_interp.evaluation.tasks import PAPER_ORDER
from resa_interp.numbering import layer_of_paper_label, paper_label, parse_layers
from resa_interp.sae import train_saes
from resa_interp.shards import Shard, launcher_shard, on_its_own, parse_shard, pin_rank_gpu

TABLE6 = Path(__file__).parent.parent / "analysis" / "paper_table6.csv"

STAGE1 = dict(tokens=2048, buffer_tokens=512, heldout=2, n_examples=30, seq_batch=16, lr=2e-3)
"""A tiny Stage I (over the shared tiny settings, with the trainer's default seq_batch and lr): on tiny_qwen2 these
SAEs give reasoning features at every layer for the prompt below."""
PROMPT = "<think></think>"
"""Only markers: a latent active at both positions is a reasoning feature (random models have few otherwise)."""
BUDGET = ["--steps", "3", "--train-limit", "3", "--save-every", "1", "--limit", "2", "--max-new-tokens", "8",
          "--device", "cpu"]
"""Three tuning steps (checkpoints after steps 1 and 2), two synthetic problems, eight new tokens."""


@pytest.fixture(scope="module")
def stage1(tiny_train_config, tmp_path_factory) -> Path:
    """A Stage I run with SAEs at layers 1-3 of tiny_qwen2."""
    run = tmp_path_factory.mktemp("stage1") / "run"
    train_saes(tiny_train_config(layers="1-3", **STAGE1), run)
    return run


def _mtimes(out: Path, layer: int) -> dict[str, int]:
    folder = out / f"layer-{layer}"
    files = ("train_log.jsonl", "merged/model.safetensors", "adapter/adapter_model.safetensors", "eval/scores.json")
    return {name: (folder / name).stat().st_mtime_ns for name in files}


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_features_sweep_select_layers(cli, tiny_qwen2, stage1, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stage1, out)
    code, _, err = cli(["features", "--model", tiny_qwen2, "--layers", "1-3", "--prompt", PROMPT, "--out", str(out)])
    assert code == 0, err
    counts = {int(r["layer"]): int(r["count"]) for r in _csv(out / "counts.csv")}
    assert sorted(counts) == [1, 2, 3] and all(c > 0 for c in counts.values()), counts

    sweep_args = ["sweep", "--model", tiny_qwen2, "--layers", "1-3", *BUDGET, "--out", str(out)]
    code, stdout, err = cli(sweep_args)
    assert code == 0, err
    assert [line.split(":")[0] for line in stdout.splitlines() if line.startswith("[")] == [
        "[1/3] layer 1", "[2/3] layer 2", "[3/3] layer 3"]
    assert stdout.count(": tuned (3 steps") == 3 and "earlier" not in stdout
    # Pass@1 of a random model is 0 at every layer: the next step proposed weights layers by the continuous score
    assert "--score-column gold_logprob --score-transform softmax --temperature 1" in stdout

    # scores.csv: one row per layer, the task's column and avg, equal to each layer's own evaluation in percent,
    # then the continuous score (nats), equal to the evaluation's
    text = (out / "scores.csv").read_text()
    assert text.splitlines()[0] == "layer,synthetic,avg,gold_logprob,gold_logprob_sum"
    rows = _csv(out / "scores.csv")
    assert [int(r["layer"]) for r in rows] == [1, 2, 3]
    for row in rows:
        evaluation = json.loads((out / f"layer-{row['layer']}" / "eval" / "scores.json").read_text())
        assert evaluation["tasks"]["synthetic"]["n_problems"] == 2
        assert float(row["synthetic"]) == pytest.approx(100 * evaluation["tasks"]["synthetic"]["pass@1"])
        assert float(row["avg"]) == pytest.approx(100 * evaluation["average"])
        assert float(row["gold_logprob"]) == pytest.approx(evaluation["gold_logprob"], rel=1e-5)
        assert float(row["gold_logprob_sum"]) == pytest.approx(evaluation["gold_logprob_sum"], rel=1e-5)
        assert evaluation["gold_logprob"] == evaluation["tasks"]["synthetic"]["gold_logprob"] < 0
        tuned = json.loads((out / f"layer-{row['layer']}" / "manifest.json").read_text())["stages"]
        assert tuned["tune"]["sae"]["layer"] == int(row["layer"]) and tuned["tune"]["steps"] == 3
        # recorded relative to the layer's folder, so that a moved sweep still points at its SAEs
        assert tuned["tune"]["sae"]["path"] == f"../saes/blocks.{row['layer']}.hook_resid_post"
        assert tuned["eval"]["average"] == evaluation["average"]
    record = json.loads((out / "manifest.json").read_text())["stages"]["sweep"]
    assert record["complete"] and record["layers"] == [1, 2, 3] and record["tasks"] == ["synthetic"]
    assert [r["layer"] for r in record["per_layer"]] == [1, 2, 3]
    assert record["config"]["tune"]["steps"] == 3 and record["config"]["evaluation"]["limit"] == 2
    assert "model" not in record["config"]["evaluation"] and "tasks" not in record["config"]["evaluation"]

    # a second run of the same sweep tunes and evaluates nothing: no file of any layer is rewritten
    before = {layer: _mtimes(out, layer) for layer in (1, 2, 3)}
    code, stdout, err = cli(sweep_args)
    assert code == 0, err
    assert stdout.count("tuned earlier") == 3 and stdout.count("evaluated earlier") == 3
    assert {layer: _mtimes(out, layer) for layer in (1, 2, 3)} == before
    assert (out / "scores.csv").read_text() == text

    # layer 2 interrupted after step 2: checkpoints at steps 1 and 2, no adapter, merged model, manifest or eval
    layer2 = out / "layer-2"
    merged = load_file(str(layer2 / "merged" / "model.safetensors"))
    for name in ("adapter", "merged", "eval"):
        shutil.rmtree(layer2 / name)
    (layer2 / "manifest.json").unlink()
    log = [json.loads(line) for line in (layer2 / "train_log.jsonl").read_text().splitlines()]
    log[0]["kl"] = 123.0  # a resumed run keeps the logged steps up to its checkpoint; a restart recomputes them
    (layer2 / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    code, stdout, err = cli(sweep_args)
    assert code == 0, err
    assert "layer 2: tuned (3 steps" in stdout and "kl 123 -> " in stdout and stdout.count("tuned earlier") == 2
    resumed = [json.loads(line) for line in (layer2 / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3] and resumed[0]["kl"] == 123.0 and resumed[1:] == log[1:]
    again = load_file(str(layer2 / "merged" / "model.safetensors"))
    assert again.keys() == merged.keys() and all((again[k] == merged[k]).all() for k in merged)
    assert {layer: _mtimes(out, layer) for layer in (1, 3)} == {layer: before[layer] for layer in (1, 3)}

    # other tuning settings for finished layers are refused before any work
    code, _, err = cli([*sweep_args, "--lr", "0.5"])
    assert code == 2 and err.count("\n") == 1 and "layer 1 in" in err and "other settings (lr)" in err

    # an evaluation from before the continuous score existed is run again (the tuning is kept), the others are not
    layer3 = out / "layer-3" / "eval" / "scores.json"
    old = json.loads(layer3.read_text())
    for record in (old, *old["tasks"].values()):
        del record["gold_logprob"], record["gold_logprob_sum"]
    layer3.write_text(json.dumps(old))
    code, stdout, err = cli(sweep_args)
    assert code == 0, err
    line3 = next(line for line in stdout.splitlines() if "] layer 3:" in line)
    assert "tuned earlier" in line3 and "; evaluated (" in line3
    assert stdout.count("evaluated earlier") == 2 and json.loads(layer3.read_text())["gold_logprob"] is not None
    assert (out / "scores.csv").read_text() == text

    # select-layers on Pass@1 (avg, the default column) refuses: 0 at every layer; it names the varying columns
    select = ["select-layers", "--counts", str(out / "counts.csv"), "--scores", str(out / "scores.csv"),
              "--out", str(out / "layers"), "--components", "2", "--max-components", "2", "--bootstrap", "10",
              "--permutations", "10", "--restarts", "4", "--resample-restarts", "2"]
    code, _, err = cli(select)
    assert code == 2 and err.count("\n") == 1 and "every layer's avg is 0" in err
    assert "--score-column: gold_logprob, gold_logprob_sum (e.g. --score-column gold_logprob)" in err
    # with the continuous score, softmax-weighted (T = 1 nat per token: w_l proportional to exp(gold_logprob_l))
    code, stdout, err = cli([*select, "--score-column", "gold_logprob", "--score-transform", "softmax"])
    assert code == 0, err
    layers = json.loads((out / "layers" / "layers.json").read_text())
    assert layers["inputs"]["scores"] == f"{out / 'scores.csv'} [gold_logprob]"
    assert layers["inputs"]["layers"] == [1, 2, 3]
    scores = [float(row["gold_logprob"]) for row in rows]
    assert [row["score"] for row in layers["per_layer"]] == scores
    shares = [math.exp(s) / sum(math.exp(x) for x in scores) for s in scores]
    # layers.json rounds to 6 decimals: half its last digit is the tolerance
    assert [row["score_share"] for row in layers["per_layer"]] == pytest.approx(shares, abs=5e-7)
    # all three layers, in the documented order: modes of the joint fitted mass first, then by joint mass
    fitted = {r["layer"]: math.sqrt(r["count_fitted"] * r["score_fitted"]) for r in layers["per_layer"]}
    joint = [fitted[layer] for layer in (1, 2, 3)]
    mode = [joint[0] >= joint[1], joint[0] <= joint[1] >= joint[2], joint[2] >= joint[1]]
    expected = sorted((1, 2, 3), key=lambda layer: (not mode[layer - 1], -fitted[layer], layer))
    assert layers["recommended_layers"]["layers"] == expected
    assert [d["paper_label"] for d in layers["recommended_layers"]["details"]] == [paper_label(x) for x in expected]


def test_ctrl_c_stops_with_130_and_the_rerun_resumes(cli, tiny_qwen2, stage1, tmp_path):
    """A separate process gets SIGINT while it tunes layer 2 (layer 1 finished); the rerun keeps layer 1 and
    continues layer 2 from its checkpoint."""
    out = tmp_path / "run"
    shutil.copytree(stage1, out)
    args = ["sweep", "--model", tiny_qwen2, "--layers", "1,2", *BUDGET, "--steps", "12", "--save-every", "2",
            "--out", str(out)]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "resa_interp.cli", *args], stdout=subprocess.DEVNULL,
                                stderr=stderr, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        checkpoint = out / "layer-2" / "checkpoints" / "step-000002" / "state.json"
        deadline = time.time() + 240
        while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert checkpoint.exists(), "layer 2 wrote no checkpoint before the run ended"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    assert "interrupted: finished work is saved" in (tmp_path / "stderr.txt").read_text()
    assert not (out / "layer-2" / "manifest.json").exists() and not (out / "layer-2" / "merged").exists()
    assert [r["layer"] for r in _csv(out / "scores.csv")] == ["1"]
    finished = _mtimes(out, 1)
    log = (out / "layer-2" / "train_log.jsonl").read_text().splitlines()
    first = {**json.loads(log[0]), "kl": 123.0}  # kept by a resumed run, recomputed by a restarted one
    (out / "layer-2" / "train_log.jsonl").write_text("\n".join([json.dumps(first), *log[1:]]) + "\n")
    code, stdout, err = cli(args)
    assert code == 0, err
    assert "layer 1: tuned earlier" in stdout and "layer 2: tuned (12 steps" in stdout and "kl 123 -> " in stdout
    steps = [json.loads(line)["step"] for line in (out / "layer-2" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)) and _mtimes(out, 1) == finished
    assert [r["layer"] for r in _csv(out / "scores.csv")] == ["1", "2"]


def test_missing_saes_are_trained_first(tiny_qwen2, tiny_train_config, tmp_path):
    config = sweep_config(
        layers="2", device="cpu", tune={"model": tiny_qwen2, "steps": 1, "limit": 1},
        evaluation={"limit": 1, "max_new_tokens": 4},
    )
    config = replace(config, saes=tiny_train_config(**STAGE1))  # the sweep sets its model and layers
    lines: list[str] = []
    result = sweep(config, tmp_path, echo=lines.append)
    assert lines[0] == f"{tmp_path} has no SAEs: training them first (Stage I, layers 2)"
    assert (tmp_path / "saes" / "blocks.2.hook_resid_post" / "cfg.json").is_file()
    stage1 = json.loads((tmp_path / "manifest.json").read_text())["stages"]["train-saes"]
    assert stage1["layers"] == [2] and stage1["model"] == tiny_qwen2 and stage1["config"]["tokens"] == 2048
    assert [row.layer for row in result.layers] == [2] and result.layers[0].steps == 1
    assert _csv(result.scores_csv)[0]["layer"] == "2"


def test_presets_combine_the_stages_presets():
    paper = sweep_config("paper")
    assert paper.tasks == PAPER_ORDER and paper.saes_run is None
    # the paper's layers are Table 6's rows (2nd..27th) as hook indices: blocks.1..26 of R1-Distill's 28 layers
    table6 = csv.DictReader(r for r in TABLE6.read_text().splitlines() if not r.startswith("#"))
    paper_rows = [layer_of_paper_label(row["paper_label"]) for row in table6]
    assert parse_layers(paper.layers, 28) == paper_rows == list(range(1, 27))
    assert (paper.tune.model, paper.tune.dataset, paper.tune.lr, paper.tune.epochs, paper.tune.steps) == (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "still", 1e-6, 2, None)
    assert (paper.tune.lora_r, paper.tune.lora_alpha, paper.tune.lora_dropout) == (32, 128, 0.05)
    ev = paper.evaluation
    assert (ev.backend, ev.samples, ev.max_new_tokens, ev.temperature, ev.top_p, ev.limit) == (
        "vllm", 1, 32768, 0.6, 0.95, None)
    assert (paper.saes.expansion_factor, paper.saes.optimizer, paper.saes.lr) == (64, "signum", 2.5e-4)

    cpu = sweep_config(layers="3,4", tasks=["synthetic", "x.jsonl"], device="cpu",
                       tune={"steps": 5, "lr": None}, evaluation={"samples": 2})
    assert cpu.layers == "3,4" and cpu.tasks == ("synthetic", "x.jsonl")
    assert (cpu.tune.model, cpu.tune.steps, cpu.tune.lr, cpu.tune.limit, cpu.tune.device) == (None, 5, 1e-4, 64, "cpu")
    assert (cpu.evaluation.backend, cpu.evaluation.limit, cpu.evaluation.max_new_tokens) == ("transformers", 20, 256)
    assert (cpu.evaluation.samples, cpu.evaluation.device, cpu.saes.device) == (2, "cpu", "cpu")


def test_bad_input_is_one_line(cli, tiny_qwen2, stage1, tmp_path):
    base = ["sweep", "--model", tiny_qwen2, "--saes", str(stage1), *BUDGET, "--out", str(tmp_path / "s")]
    (tmp_path / "avg.jsonl").write_text('{"problem": "1 + 1?", "answer": "2"}\n')
    cases = [
        (["--layers", "2-5"], "--layers '2-5': layer 4 is outside the model (0..3)"),
        (["--layers", "0-2"], f"{stage1} has no resid_post SAE for layer(s) 0; train them"),
        (["--layers", "1", "--tasks", "aime2024"], "task 'aime2024': not a paper task"),
        (["--layers", "1", "--tasks", str(tmp_path / "avg.jsonl")], "would clash with scores.csv's own column"),
        (["--layers", "1", "--hook", "resid_mid"], "--hook 'resid_mid': SAEs are spliced into the HF model, which has "
         "no module for it; accepted: resid_post, resid_pre, mlp_out, attn_out, blocks.{l}.attn.hook_z"),
        (["--layers", "1", "--preset", "huge"], "--preset 'huge' is unknown"),
        (["--layers", "1", "--samples", "0"], "--samples 0: must be at least 1"),
    ]
    for args, needle in cases:
        code, _, err = cli([*base, *args])
        assert code == 2 and err.count("\n") == 1 and needle in err, (args, err)
    assert not (tmp_path / "s").exists()


def test_shards_split_the_layers_as_documented():
    layers = [1, 2, 3, 4, 5, 6, 7]
    for n in (1, 2, 3, 7, 9):
        parts = [parse_shard(f"{i}/{n}").take(layers) for i in range(n)]
        assert parts == [layers[i::n] for i in range(n)]
        assert sorted(x for part in parts for x in part) == layers  # every layer exactly once
    assert parse_shard("1/3") == Shard(1, 3) and parse_shard("0/1") == Shard() and not Shard().sharded
    for bad in ("2/2", "3/2", "-1/2", "1", "1/0", "a/b", "1/2/3", "", "/2"):
        with pytest.raises(ResaError, match=r"expected I/N with 0 <= I < N"):
            parse_shard(bad)


def test_bad_shards_are_one_line(cli, tiny_qwen2, stage1, tmp_path, monkeypatch):
    base = ["sweep", "--model", tiny_qwen2, "--layers", "1,2", *BUDGET]
    for value in ("2/2", "1-2", "x"):
        code, _, err = cli([*base, "--saes", str(stage1), "--shard", value, "--out", str(tmp_path / "s")])
        assert code == 2 and err.count("\n") == 1 and f"--shard {value!r}: expected I/N with 0 <= I < N" in err
    # shards would all train Stage I into the same folder at once: a sharded sweep wants the SAEs there first
    code, _, err = cli([*base, "--shard", "0/2", "--out", str(tmp_path / "s")])
    assert code == 2 and err.count("\n") == 1 and "has no resid_post SAEs and a sharded sweep (shard 0/2)" in err
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = cli([*base, "--saes", str(stage1), "--shard", "0/2", "--out", str(tmp_path / "s")])
    assert code == 2 and err.count("\n") == 1 and "under a launcher with 2 ranks" in err
    code, _, err = cli([*base, "--out", str(tmp_path / "s")])
    assert code == 2 and err.count("\n") == 1 and "(rank 1/2) does not train them" in err
    assert not (tmp_path / "s").exists()


def _layer_outputs(out: Path, layer: int) -> dict[str, object]:
    """What a layer's tuning and evaluation produced, without times: KL per step, the merged weights' bytes, the
    generations and the scores."""
    folder = out / f"layer-{layer}"
    log = [{k: v for k, v in json.loads(line).items() if "time" not in k and not k.endswith("_s")}
           for line in (folder / "train_log.jsonl").read_text().splitlines()]
    samples = [{k: v for k, v in json.loads(line).items() if "time" not in k}
               for line in (folder / "eval" / "samples.jsonl").read_text().splitlines()]
    scores = json.loads((folder / "eval" / "scores.json").read_text())
    return {"log": log, "merged": (folder / "merged" / "model.safetensors").read_bytes(), "samples": samples,
            "tasks": scores["tasks"], "average": scores["average"]}


SHARDED = ["sweep", "--layers", "1-3", *BUDGET, "--max-new-tokens", "16"]
"""The sweep that the sharded runs below split: three layers of tiny_qwen2 with the stage1 fixture's SAEs."""


@pytest.fixture(scope="module")
def whole(tiny_qwen2, stage1, tmp_path_factory) -> tuple[list[str], Path]:
    """SHARDED's arguments (model and SAEs added) and the folder of one unsharded run of it."""
    from resa_interp.cli import main

    args = [*SHARDED, "--model", tiny_qwen2, "--saes", str(stage1)]
    out = tmp_path_factory.mktemp("whole") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["resa-interp", *args, "--out", str(out)])
        main()
    assert [r["layer"] for r in _csv(out / "scores.csv")] == ["1", "2", "3"]
    return args, out


def test_two_shards_one_after_the_other_give_the_unsharded_sweep(cli, whole, tmp_path):
    args, reference = whole
    sharded = tmp_path / "sharded"
    code, stdout, err = cli([*args, "--shard", "0/2", "--out", str(sharded)])
    assert code == 0, err
    assert [line.split(":")[1] for line in stdout.splitlines() if line.startswith("shard 0/2: [")] == [
        " [1/2] layer 1", " [2/2] layer 3"]
    assert "shard 0/2: 2 layers in" in stdout and "(2 of 3 layers)" in stdout and "next:" not in stdout
    # the first shard alone: a partial table with its layers only, the record says so
    assert [r["layer"] for r in _csv(sharded / "scores.csv")] == ["1", "3"] and not (sharded / "layer-2").exists()
    record = json.loads((sharded / "manifest.json").read_text())["stages"]["sweep"]
    assert not record["complete"] and record["layers"] == [1, 2, 3] and [r["layer"] for r in record["per_layer"]] == [
        1, 3] and record["shard"] == {"index": 0, "count": 2, "launched": False}

    code, stdout, err = cli([*args, "--shard", "1/2", "--out", str(sharded)])
    assert code == 0, err
    assert "shard 1/2: [1/1] layer 2: tuned (3 steps" in stdout and "(3 of 3 layers)" in stdout and "next:" in stdout
    # the last shard leaves the whole table: the same bytes as the unsharded sweep's, from the same work per layer
    assert (sharded / "scores.csv").read_text() == (reference / "scores.csv").read_text()
    for layer in (1, 2, 3):
        assert _layer_outputs(sharded, layer) == _layer_outputs(reference, layer), layer
    record = json.loads((sharded / "manifest.json").read_text())["stages"]["sweep"]
    assert record["complete"] and [r["layer"] for r in record["per_layer"]] == [1, 2, 3]
    assert [r["tuned_now"] for r in record["per_layer"]] == [False, True, False]

    # a rerun without --shard finds everything finished: nothing tuned or evaluated, no layer file rewritten
    before = {layer: _mtimes(sharded, layer) for layer in (1, 2, 3)}
    code, stdout, err = cli([*args, "--out", str(sharded)])
    assert code == 0, err
    assert stdout.count("tuned earlier") == 3 and stdout.count("evaluated earlier") == 3
    assert {layer: _mtimes(sharded, layer) for layer in (1, 2, 3)} == before
    assert (sharded / "scores.csv").read_text() == (reference / "scores.csv").read_text()

    # the merge reads other shards' layers from their scores.json (the tiny model scores 0 everywhere: plant 25%)
    planted = json.loads((sharded / "layer-1" / "eval" / "scores.json").read_text())
    planted["tasks"]["synthetic"]["pass@1"] = planted["average"] = 0.25
    (sharded / "layer-1" / "eval" / "scores.json").write_text(json.dumps(planted))
    code, stdout, err = cli([*args, "--shard", "1/2", "--out", str(sharded)])
    assert code == 0, err
    assert [(r["layer"], r["synthetic"], r["avg"]) for r in _csv(sharded / "scores.csv")] == [
        ("1", "25", "25"), ("2", "0", "0"), ("3", "0", "0")]


def test_two_ranks_under_torchrun_give_the_unsharded_sweep(whole, tmp_path):
    """Two concurrent processes (torchrun, gloo on CPU): each sweeps its layers, both merge scores.csv under the
    lock, rank 0 waits for rank 1, then writes the record and prints the summary."""
    args, reference = whole
    out = tmp_path / "ranks"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "resa_interp.cli", *args, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sorted(line.split(":")[0] + ":" + line.split(":")[1] for line in lines if "] layer" in line) == [
        "rank 0/2: [1/2] layer 1", "rank 0/2: [2/2] layer 3", "rank 1/2: [1/1] layer 2"]
    assert proc.stdout.count("plan: sweep") == 1 and proc.stdout.count("3 layers in") == 0
    assert proc.stdout.count("layers in") == 1 and "rank 0/2: 2 layers in" in proc.stdout
    assert "(3 of 3 layers)" in proc.stdout and "next:" in proc.stdout
    assert (out / "scores.csv").read_text() == (reference / "scores.csv").read_text()
    for layer in (1, 2, 3):
        assert _layer_outputs(out, layer) == _layer_outputs(reference, layer), layer
    record = json.loads((out / "manifest.json").read_text())["stages"]["sweep"]
    assert record["complete"] and record["shard"] == {"index": 0, "count": 2, "launched": True}
    # tuned_now is the writer's (rank 0's) own work; layer 2 was read back from rank 1's folder
    assert [r["tuned_now"] for r in record["per_layer"]] == [True, False, True]


def test_each_rank_gets_its_own_gpu_and_works_alone(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    pin_rank_gpu()  # no launcher: nothing changes
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and launcher_shard() == Shard()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launcher_shard() == Shard(3, 4, launched=True) and launcher_shard().label == "rank 3/4"
    pin_rank_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pin_rank_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    # inside, the rank looks like a single process to accelerate and vLLM; outside, the launcher's variables are back
    with on_its_own():
        assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK"} & set(os.environ) and launcher_shard() == Shard()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
