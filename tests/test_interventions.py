"""Interventions: the edit arithmetic against a hand computation with W_enc/W_dec, scale 1 as the exact identity,
clamp and scale, KV-cached generation editing its new tokens, frequency-matched controls, the measurements and
bootstrap against hand-made numbers, and a tiny end-to-end steer + trace through the CLI with its bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from resa_interp.data.templates import format_trigger
from resa_interp.interventions import (
    Intervention,
    LatentEdit,
    bootstrap,
    matched_controls,
    parse_latents,
    text_effect,
)
from resa_interp.interventions.measure import greedy, log_probs
from resa_interp.model.hooks import decoder_layers
from resa_interp.model.subject import load_subject
from resa_interp.sae.folders import sae_dir
from resa_interp.sae.pretrained import build_topk_sae

D_SAE, K = 32, 6
TEXT = format_trigger("What is 2 + 3?", "5")


@pytest.fixture(scope="module")
def subject(tiny_qwen2):
    return load_subject(tiny_qwen2)


def _sae(subject, layer: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    d = subject.facts.d_model
    return build_topk_sae(torch.randn(d, D_SAE, generator=g) / d**0.5, torch.randn(D_SAE, generator=g) * 0.1,
                          torch.nn.functional.normalize(torch.randn(D_SAE, d, generator=g), dim=-1),
                          torch.randn(d, generator=g) * 0.01, k=K,
                          metadata={"hook_name": f"blocks.{layer}.hook_resid_post", "model_path": str(subject.path)})


@pytest.fixture(scope="module")
def saes(subject):
    return {1: _sae(subject, 1, 1), 2: _sae(subject, 2, 2)}


def _hand_latents(sae, x):
    """TopK encoding by hand: top-k of (x - b_dec) W_enc + b_enc, ReLU, zeros elsewhere."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = torch.topk(pre, K, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))


def _layer_io(subject, saes, edits, layer, ids):
    """(clean output, edited output) of the hooked module at `layer` on one text."""
    seen = {}
    module = decoder_layers(subject.hf)[layer]

    def grab(key):
        def hook(_m, _i, out):
            seen[key] = (out[0] if isinstance(out, tuple) else out)[0].detach().clone()
        return hook

    with torch.no_grad():
        handle = module.register_forward_hook(grab("clean"))
        subject.hf(torch.tensor([ids]))
        handle.remove()
        with Intervention(subject.hf, "resid_post", saes, edits):
            handle = module.register_forward_hook(grab("edited"))  # runs after the edit hook: sees its output
            subject.hf(torch.tensor([ids]))
            handle.remove()
    return seen["clean"], seen["edited"]


def _fired_latents(subject, sae, layer, ids):
    clean, _ = _layer_io(subject, {layer: sae}, {}, layer, ids)
    f = _hand_latents(sae, clean)
    counts = (f[1:] > 0).sum(0)
    # two latents that fire at some counted positions but not at all of them
    chosen = [int(i) for i in torch.argsort(counts, descending=True) if 0 < counts[i] < len(ids) - 1][:2]
    assert len(chosen) == 2, "the random SAE must have latents that fire at some positions and not at others"
    return clean, f, chosen


def test_ablation_changes_the_residual_by_minus_activation_times_decoder_row(subject, saes):
    ids = subject.tokenizer(TEXT)["input_ids"]
    layer, sae = 1, saes[1]
    clean, f, chosen = _fired_latents(subject, sae, layer, ids)
    _, edited = _layer_io(subject, saes, {layer: LatentEdit(tuple(chosen))}, layer, ids)
    expected = -(f[:, chosen] @ sae.W_dec[chosen])
    expected[0] = 0.0  # the sink position keeps its clean activation
    change = edited - clean
    torch.testing.assert_close(change, expected.detach(), atol=2e-5, rtol=1e-4)
    fired = (f[:, chosen] > 0).any(1)
    fired[0] = False
    assert fired.any() and (~fired[1:]).any()
    assert torch.equal(change[~fired], torch.zeros_like(change[~fired])), "no change where no chosen latent fired"
    assert (change[fired].norm(dim=-1) > 1e-3).all()


@pytest.mark.parametrize("mode,value", [("clamp", 2.5), ("scale", 3.0), ("scale", -1.0)])
def test_clamp_and_scale_arithmetic(subject, saes, mode, value):
    ids = subject.tokenizer(TEXT)["input_ids"]
    layer, sae = 1, saes[1]
    clean, f, chosen = _fired_latents(subject, sae, layer, ids)
    _, edited = _layer_io(subject, saes, {layer: LatentEdit(tuple(chosen), mode, value)}, layer, ids)
    new = torch.full_like(f[:, chosen], value) if mode == "clamp" else f[:, chosen] * value
    expected = (new - f[:, chosen]) @ sae.W_dec[chosen]
    expected[0] = 0.0
    torch.testing.assert_close(edited - clean, expected.detach(), atol=2e-5, rtol=1e-4)


def test_scale_one_is_the_exact_identity(subject, saes):
    """Scale 1 keeps f, so decode(f') - decode(f) is exactly 0 and the logits are bit-for-bit the clean ones."""
    ids = [subject.tokenizer(TEXT)["input_ids"], subject.tokenizer("User: 7 <think> 7 </think>")["input_ids"]]
    clean = log_probs(subject, ids)
    every = {layer: LatentEdit(tuple(range(D_SAE)), "scale", 1.0) for layer in saes}
    with Intervention(subject.hf, "resid_post", saes, every):
        same = log_probs(subject, ids)
    with Intervention(subject.hf, "resid_post", saes, {layer: LatentEdit(tuple(range(D_SAE))) for layer in saes}):
        ablated = log_probs(subject, ids)
    for c, s, a in zip(clean, same, ablated):
        assert torch.equal(c, s)
        assert not torch.allclose(c, a, atol=1e-3), "ablating every latent must change the logits"


def test_cached_generation_edits_every_new_token(subject, saes):
    """Greedy decoding with the KV cache under an intervention picks the tokens that full edited passes pick."""
    prompt = subject.tokenizer(TEXT)["input_ids"][:20]
    edits = {1: LatentEdit(tuple(range(0, D_SAE, 2)), "clamp", 4.0)}
    with Intervention(subject.hf, "resid_post", saes, edits):
        cached = greedy(subject, prompt, 6)
        seq = list(prompt)
        for _ in range(6):
            seq.append(int(log_probs(subject, [seq])[0][-1].argmax()))
    assert cached == seq[len(prompt):]
    assert cached != greedy(subject, prompt, 6), "the edit must change the tiny model's continuation"


def test_controls_match_firing_frequency():
    rng = np.random.default_rng(0)
    log_rates = torch.tensor(rng.uniform(-6, -1, 400), dtype=torch.float32)
    chosen = [int(torch.argmax(log_rates)), int(torch.argmin(log_rates)), 17, 200]
    controls = matched_controls(log_rates, chosen, 10, np.random.default_rng(1))
    assert len(set(controls)) == len(chosen) and not set(controls) & set(chosen)
    rank = torch.argsort(torch.argsort(log_rates)).numpy()
    for c, t in zip(controls, chosen):
        assert abs(rank[c] - rank[t]) <= 10 + len(chosen)  # within the window, others taken before it aside
    assert controls == matched_controls(log_rates, chosen, 10, np.random.default_rng(1))
    draws = {tuple(matched_controls(log_rates, chosen, 10, np.random.default_rng(s))) for s in range(5)}
    assert len(draws) > 1, "draws with different seeds must differ"


def test_text_effect_against_hand_numbers():
    clean = torch.log_softmax(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0], [0.0, 0, 0]]), -1)
    edited = torch.log_softmax(torch.tensor([[5.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 3]]), -1)
    ids = [2, 1, 1, 0]  # targets 1, 1, 0 predicted at positions 0, 1, 2; position 0 is not counted
    eff = text_effect(clean, edited, ids, markers={2}, keep_first=1)
    assert eff.dlogp_marker == pytest.approx(float(edited[1, 1] - clean[1, 1]))
    assert eff.dlogp_other == pytest.approx(float(edited[2, 0] - clean[2, 0]))
    kl = [float((clean[p].exp() * (clean[p] - edited[p])).sum()) for p in (1, 2)]
    assert eff.kl == pytest.approx(np.mean(kl)) and eff.kl_per_position[0] == 0.0
    assert eff.kl_per_position[1:3] == pytest.approx(kl, abs=1e-6)


def test_bootstrap():
    est = bootstrap([1.0, 2.0, 3.0, float("nan"), 10.0], n_boot=2000, seed=0)
    assert est.n == 4 and est.mean == pytest.approx(4.0) and est.lo < 4.0 < est.hi
    assert 1.0 <= est.lo and est.hi <= 10.0
    one = bootstrap([0.5])
    assert (one.mean, one.lo, one.hi, one.n) == (0.5, 0.5, 0.5, 1)


def test_parse_latents():
    assert parse_latents("3:17, 3:2,6:5,3:17") == {3: [2, 17], 6: [5]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, subject, saes):
    """A run with the two random SAEs, their firing rates, and features.json naming two latents at each layer."""
    run = tmp_path_factory.mktemp("steer") / "run"
    rng = np.random.default_rng(0)
    for layer, sae in saes.items():
        sae.save_model(sae_dir(run, "resid_post", layer))
        save_file({"sparsity": torch.tensor(rng.uniform(-5, -1, D_SAE), dtype=torch.float32)},
                  str(sae_dir(run, "resid_post", layer) / "sparsity.safetensors"))
    ids = subject.tokenizer(TEXT)["input_ids"]
    layers = [{"layer": la, "features": _fired_latents(subject, saes[la], la, ids)[2]} for la in saes]
    (run / "features.json").write_text(json.dumps({"hook": "resid_post", "model_path": str(subject.path),
                                                   "layers": layers}))
    return run, {row["layer"]: row["features"] for row in layers}


def test_steer_and_trace_end_to_end(cli, tiny_run, tmp_path):
    run, chosen = tiny_run
    code, out, err = cli(["steer", "--run", str(run), "--n-texts", "3", "--control-draws", "2", "--generate", "1",
                          "--max-new-tokens", "4", "--out", str(tmp_path / "s")])
    assert code == 0, err
    doc = json.loads((tmp_path / "s" / "effects.json").read_text())
    names = [(e["name"], e["kind"]) for e in doc["effects"]]
    assert names == [(n, k) for n in ("layer 1", "layer 2", "all") for k in ("reasoning", "control")]
    for e in doc["effects"]:
        if e["kind"] == "reasoning":
            assert e["latents"] == {str(la): [chosen[la]] for la in ([1, 2] if e["name"] == "all"
                                                                      else [int(e["name"].split()[1])])}
        else:
            assert all(len(draws) == 2 and not set(draws[0]) & set(chosen[int(la)]) for la, draws in
                       e["latents"].items())
        assert e["kl"]["n"] == 3 and e["kl"]["lo"] <= e["kl"]["mean"] <= e["kl"]["hi"]
    assert [d["name"] for d in doc["differences"]] == ["layer 1", "layer 2", "all"]
    samples = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert len(samples["generations"]) == 1 and samples["teacher_forced"]
    assert (tmp_path / "s" / "figures" / "steer_effects.html").is_file()
    assert "reasoning tokens" in (tmp_path / "s" / "samples.html").read_text()

    code, out, err = cli(["trace", "--run", str(run), "--text", TEXT, "--out", str(tmp_path / "t")])
    assert code == 0, err
    trace = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert [(r["layer"], r["latent"]) for r in trace["latents"]] == [(la, i) for la in (1, 2) for i in chosen[la]]
    assert trace["markers"] and len(trace["latents"][0]["acts"]) == len(trace["tokens"])
    assert (tmp_path / "t" / "trace.html").is_file()


def test_steer_and_trace_errors(cli, tiny_run, tmp_path):
    run, _ = tiny_run
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "nomark.jsonl").write_text(json.dumps({"text": "no markers here"}) + "\n")
    base = ["steer", "--run", str(run), "--out", str(tmp_path / "o")]
    cases = [
        (base + ["--mode", "zero"], "--mode 'zero'"),
        (base + ["--latents", "1-5"], "--latents '1-5': accepted"),
        (base + ["--latents", "1:999"], "has 32 latents"),
        (base + ["--texts", "nope.jsonl"], "--texts 'nope.jsonl'"),
        (base + ["--texts", "r1-prompt", "--generate", "2"], "--generate needs questions"),
        (base + ["--texts", str(tmp_path / "bad.jsonl")], "not JSONL"),
        (base + ["--texts", str(tmp_path / "nomark.jsonl")], "text 0 has no <think> or </think>"),
        (base + ["--layers", "0"], "no chosen latents at layer(s) 0"),
        (["steer", "--run", str(tmp_path), "--out", str(tmp_path / "o")], "has no resid_post SAEs"),
        (["trace", "--run", str(run), "--out", str(tmp_path / "o")], "exactly one of --text"),
    ]
    for args, needle in cases:
        code, out, err = cli(args)
        assert code == 2 and needle in err and err.count("\n") == 1, (args, code, err, out)
