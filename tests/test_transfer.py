"""The transfer experiment's pieces: recovery and its intervals on planted numbers, the permuted-decoder control,
the transparency correlations, and every condition of `run_transfer` on a tiny model (the full run is not a test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resa_interp.dashboard import agreement, latent_patterns, pearson_columns
from resa_interp.errors import ResaError
from resa_interp.evaluation import TUNED, TransferConfig, recovery, run_transfer, summarize
from resa_interp.sae import decoder_permutation, load_sae, permuted_decoder, sae_dir, write_permuted_control


def _planted(n: int, correct: int, rng: np.random.Generator) -> np.ndarray:
    row = np.zeros(n)
    row[rng.choice(n, correct, replace=False)] = 1
    return row


def test_recovery_is_the_share_of_the_gap():
    assert recovery(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert recovery(0.2, 0.2, 0.8) == 0 and recovery(0.8, 0.2, 0.8) == 1
    assert recovery(0.1, 0.2, 0.8) == pytest.approx(-1 / 6)
    with pytest.raises(ResaError, match="undefined"):
        recovery(0.3, 0.4, 0.4)


def test_summary_on_planted_conditions():
    rng = np.random.default_rng(0)
    n = 400
    base, source = _planted(n, 80, rng), _planted(n, 320, rng)
    half = np.stack([_planted(n, 200, rng) for _ in range(3)])
    out = summarize({"base": base, "source": source, "half": half, "same": source[None], "none": base[None]})
    assert out["base"].accuracy == pytest.approx(0.2) and out["source"].accuracy == pytest.approx(0.8)
    assert out["base"].recovery is None and out["source"].recovery is None
    assert out["half"].accuracy == pytest.approx(0.5) and out["half"].recovery == pytest.approx(0.5)
    assert (out["half"].n, out["half"].seeds) == (n, 3)
    lo, hi = out["half"].recovery_ci
    assert lo < 0.5 < hi
    # the bootstrap is paired over problems: a condition that answers exactly as the source (or the base) did
    # recovers exactly 1 (or 0) in every replicate, where unpaired draws would spread it
    assert out["same"].recovery_ci == (1.0, 1.0) and out["none"].recovery_ci == (0.0, 0.0)
    # an independent check of the accuracy interval: the normal approximation of a binomial proportion
    for name, p in (("base", 0.2), ("source", 0.8)):
        width = out[name].ci[1] - out[name].ci[0]
        assert width == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.15)


def test_seeds_are_resampled_too():
    n = 100
    base, source = np.zeros(n), np.ones(n)
    split = np.stack([np.ones(n), np.zeros(n)])  # one seed got everything, the other nothing
    out = summarize({"base": base, "source": source, "split": split})
    assert out["split"].accuracy == 0.5
    # draws of the two seeds give 0, 0.5 or 1: the interval covers the seeds' spread, not just the problems'
    assert out["split"].ci == (0.0, 1.0)


def test_no_recovery_without_a_gap_and_mismatched_problems_are_refused():
    out = summarize({"base": np.zeros(10), "source": np.zeros(10), "x": np.ones(10)})
    assert out["x"].recovery is None and out["x"].recovery_ci is None
    with pytest.raises(ResaError, match="same held-out problems"):
        summarize({"base": np.zeros(10), "source": np.ones(10), "x": np.ones(9)})
    with pytest.raises(ResaError, match="needs the conditions"):
        summarize({"base": np.zeros(10), "x": np.ones(10)})


@pytest.mark.parametrize("d_sae", [2, 3, 17, 256])
def test_decoder_permutation_moves_every_latent(d_sae):
    for seed in range(20):
        perm = decoder_permutation(d_sae, seed)
        assert sorted(perm.tolist()) == list(range(d_sae))
        assert not (perm == torch.arange(d_sae)).any()
    assert torch.equal(decoder_permutation(d_sae, 3), decoder_permutation(d_sae, 3))


def test_permuted_control_keeps_the_encoder_and_moves_the_decoder(tiny_stage1, tmp_path):
    folder = sae_dir(tiny_stage1.run, "resid_post", 1)
    control = write_permuted_control(folder, tmp_path / "control", seed=5)
    original, permuted = load_sae(folder), load_sae(control)
    perm = decoder_permutation(original.cfg.d_sae, 5)
    x = torch.randn(7, original.cfg.d_in)
    # unit-norm rows: the encoder's scaling by row norms (rescale_acts_by_decoder_norm) differs in rounding only
    torch.testing.assert_close(original.encode(x), permuted.encode(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(permuted.W_dec, original.W_dec[perm])
    expected = original.encode(x) @ original.W_dec[perm] + original.b_dec  # latent i decodes through row perm[i]
    torch.testing.assert_close(permuted.decode(permuted.encode(x)), expected, rtol=1e-5, atol=1e-5)
    assert (control / "sparsity.safetensors").read_bytes() == (folder / "sparsity.safetensors").read_bytes()
    assert json.loads((control / "control.json").read_text())["kind"] == "permuted_decoder"
    assert torch.equal(permuted_decoder(load_sae(folder), 5).W_dec, permuted.W_dec)


def test_pearson_columns_match_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 4))
    b = a * np.array([1, -2, 0, 1]) + rng.normal(size=(50, 4)) * np.array([0, 0, 0, 0.1])
    r = pearson_columns(torch.tensor(a), torch.tensor(b))
    for j in (0, 1, 3):
        assert r[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1], abs=1e-12)
    assert np.isnan(r[2])  # a silent latent has no correlation
    summary = agreement(torch.tensor(a), {"m": torch.tensor(b)}, [0, 1, 2, 3]).summary()["m"]
    assert summary["n"] == 3 and summary["share_at_least_0.7"] == pytest.approx(2 / 3)  # r = 1, -1, 0.99


def test_latent_patterns_are_the_sae_on_the_models_hidden_states(tiny_stage1, tiny_qwen2):
    from resa_interp.data import format_trigger
    from resa_interp.model import load_subject

    subject = load_subject(tiny_qwen2)
    sae = load_sae(sae_dir(tiny_stage1.run, "resid_post", 2))
    texts = [format_trigger(q, a) for q, a in (("What is 2 + 3?", "5"), ("What is 12 * 4?", "48"))]
    got = latent_patterns(subject, sae, [0, 5, 9], texts)
    ids = [subject.tokenizer(t)["input_ids"] for t in texts]
    prefix = next(i for i in range(min(map(len, ids))) if ids[0][i] != ids[1][i])
    rows = []
    with torch.no_grad():
        for n, seq in enumerate(ids):  # an independent path: HF hidden states, one text at a time
            hidden = subject.hf(torch.tensor([seq]), output_hidden_states=True).hidden_states[3][0]
            keep = range(1, len(seq)) if n == 0 else range(prefix, len(seq))
            rows.append(sae.encode(hidden[list(keep)])[:, [0, 5, 9]])
    torch.testing.assert_close(got, torch.cat(rows), rtol=1e-4, atol=1e-4)


def test_every_condition_runs_and_a_rerun_keeps_them(tiny_qwen2, tmp_path):
    config = TransferConfig(
        model=tiny_qwen2, layer=1, more_layers=(2,), seeds=(0, 1), heldout=8, source_examples=16, source_steps=4,
        elicitation_examples=40, steps=3, feature_layers="1,2", max_new_tokens=8, transparency_texts=4,
        bootstrap=50, stage1=dict(expansion_factor=4, k=8, tokens=2048, batch_tokens=256, buffer_tokens=1024,
                                  seq_batch=8, heldout=4))
    out = tmp_path / "transfer"
    doc = run_transfer(config, out, echo=lambda line: None)
    assert set(doc["conditions"]) == {"base", "source", *TUNED}
    for name in TUNED:
        assert (doc["conditions"][name]["n"], doc["conditions"][name]["seeds"]) == (8, 2)
    assert set(doc["per_layer"]) == {"1", "2"} and doc["per_layer"]["2"]["seeds"] == 1
    # SFT on worked solutions changed the model: its loss fell, and its weights are not the base's
    log = [json.loads(line) for line in (out / "source" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["ce"] < log[0]["ce"]
    from safetensors.torch import load_file

    from resa_interp.model import resolve_model_path

    base = load_file(str(resolve_model_path(tiny_qwen2) / "model.safetensors"))
    tuned = load_file(str(out / "source" / "merged" / "model.safetensors"))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k in tuned)
    # the data sets are disjoint, and the held-out set is what every model answered
    heldout = [json.loads(line)["problem"] for line in (out / "data" / "heldout.jsonl").read_text().splitlines()]
    trained = {json.loads(line)["problem"] for f in ("source_traces.jsonl", "elicitation.jsonl")
               for line in (out / "data" / f).read_text().splitlines()}
    assert len(heldout) == 8 and not set(heldout) & trained
    answers = out / "runs" / "control_permuted_decoder" / "layer-1" / "seed-1" / "answers.json"
    assert [a["problem"] for a in json.loads(answers.read_text())] == heldout
    assert doc["transparency"]["layer"] == 1 and "base" in doc["transparency"]["all_used_latents"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("answers.json")}
    again = run_transfer(config, out, echo=lambda line: None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("answers.json")} == before
    assert again["conditions"] == doc["conditions"]
    # how long the answers are, per condition: the mean over every seed's answers (planted lengths, kept answers)
    for seed, n in ((0, 3), (1, 5)):
        path = out / "runs" / "cot_free_sft" / "layer-1" / f"seed-{seed}" / "answers.json"
        rows = json.loads(path.read_text())
        path.write_text(json.dumps([{**row, "n_tokens": n + i % 2} for i, row in enumerate(rows)]))
    planted = run_transfer(config, out, echo=lambda line: None)["conditions"]["cot_free_sft"]
    assert planted["mean_completion_tokens"] == pytest.approx((3.5 + 5.5) / 2)
