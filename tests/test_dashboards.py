"""Feature dashboards: statistics against a plain full forward pass per text, logit effects against
TransformerLens, marker activations against features.json, sink exclusion, the HTML page, CLI errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from test_features import LAYER, PROMPT, _clean_acts, _planted

from resa_interp.dashboard.build import DashboardConfig, build_dashboards, logit_effects, sink_mask
from resa_interp.dashboard.html import page_html
from resa_interp.data.synthetic import synthetic_qa
from resa_interp.data.templates import format_trigger, marker_spans
from resa_interp.features.extract import FeatureConfig, run_features
from resa_interp.model.harvest import encode_texts, shared_prefix_length
from resa_interp.model.hooks import decoder_layers
from resa_interp.model.subject import load_subject
from resa_interp.sae import SAETrainConfig, train_saes
from resa_interp.sae.folders import load_sae, sae_dir
from resa_interp.sae.pretrained import build_topk_sae

TEXTS = 12


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_qwen2):
    """A tiny Stage I run (layers 1, 2) whose layer-2 SAE is replaced by one with planted marker latents, and
    the features of the short test prompt extracted from it."""
    run = tmp_path_factory.mktemp("dash") / "run"
    subject = load_subject(tiny_qwen2)
    train_saes(SAETrainConfig(model=tiny_qwen2, layers="1,2", expansion_factor=4, k=8, tokens=3072,
                              batch_tokens=256, buffer_tokens=1024, seq_batch=8, heldout=4, n_examples=60, lr=3e-3),
               run, subject=subject)
    planted, _, _ = _planted(subject, PROMPT)
    for key, value in {"model_name": tiny_qwen2, "model_path": str(subject.path), "dataset_path": "synthetic",
                       "template": "r1"}.items():
        setattr(planted.cfg.metadata, key, value)
    shutil.rmtree(sae_dir(run, "resid_post", LAYER))
    planted.save_model(sae_dir(run, "resid_post", LAYER))
    run_features(FeatureConfig(prompts=(PROMPT,), layers="1,2"), run, subject=subject)
    return run, subject


def _full_texts(subject, n):
    return encode_texts(subject.tokenizer, [format_trigger(e.problem, e.answer) for e in synthetic_qa(n, seed=0)])


def _independent(subject, sae, layer, ids, texts, ratio):
    """Per text: latents [T, n] and sink flags from one plain forward pass of the whole text."""
    lat, norms = [], []
    for text in texts:
        x = _clean_acts(subject, text.ids, layer)
        lat.append(sae.encode(x)[:, ids].detach().numpy())
        norms.append(x.norm(dim=-1).numpy())
    prefix = shared_prefix_length(texts)
    distinct = np.concatenate([norms[0]] + [n[prefix:] for n in norms[1:]])  # the shared prefix once
    limit = ratio * np.median(distinct) if ratio else np.inf
    sinks = [(np.arange(len(n)) == 0) | (n > limit) if ratio else np.zeros(len(n), bool) for n in norms]
    return lat, sinks


@pytest.mark.parametrize("include_sinks", [True, False])
def test_statistics_match_a_plain_forward_pass(tiny_run, include_sinks):
    run, subject = tiny_run
    ids = list(range(12))
    cfg = DashboardConfig(texts=TEXTS, top=5, bins=10, include_sinks=include_sinks)
    dset = build_dashboards(run, layer=1, features=",".join(map(str, ids)), cfg=cfg, subject=subject, progress=False)
    texts = _full_texts(subject, TEXTS)
    markers = [marker_spans(format_trigger(e.problem, e.answer), subject.tokenizer).marker_positions
               for e in synthetic_qa(TEXTS, seed=0)]
    sae = load_sae(sae_dir(run, "resid_post", 1))
    lat, sinks = _independent(subject, sae, 1, ids, texts, None if include_sinks else cfg.sink_ratio)
    assert dset.n_positions == sum(len(t.ids) for t in texts)
    assert [f.feature for f in dset.features] == ids
    fired = 0
    for j, f in enumerate(dset.features):
        kept = np.concatenate([v[~s, j] for v, s in zip(lat, sinks)])
        n_firing = int((kept > 0).sum())
        assert f.frequency == pytest.approx(n_firing / kept.size, abs=2 / kept.size)
        assert sum(f.histogram_counts) == pytest.approx(n_firing, abs=2)
        assert f.max_activation == pytest.approx(kept.max(), rel=1e-4, abs=1e-5)
        fired += n_firing > 0
        for ctx in f.contexts:
            values = lat[max(ctx.text, 0)][:, j]
            start = ctx.position - ctx.peak
            assert ctx.acts == pytest.approx(values[start : start + len(ctx.acts)].tolist(), rel=1e-3, abs=1e-4)
            assert ctx.value == pytest.approx(values[ctx.position], rel=1e-4, abs=1e-5)
            assert not sinks[max(ctx.text, 0)][ctx.position]
            assert ctx.at_marker == (ctx.position in markers[max(ctx.text, 0)])
            window = texts[max(ctx.text, 0)].ids[start : start + len(ctx.tokens)]
            assert "".join(ctx.tokens) == subject.tokenizer.decode(window).replace("\n", "↵")
        if f.contexts:
            assert f.contexts[0].value == pytest.approx(f.max_activation, rel=1e-5)
            assert [c.value for c in f.contexts] == sorted((c.value for c in f.contexts), reverse=True)
    assert fired >= 3, "too few latents fire to test anything"


def test_logit_effects_match_transformer_lens(tiny_qwen2):
    subject = load_subject(tiny_qwen2)
    with torch.no_grad():  # a non-trivial final-norm gain, so folding it in matters
        subject.hf.model.norm.weight.copy_(torch.linspace(0.2, 3.0, subject.facts.d_model))
    hooked = subject.hooked
    directions = torch.randn(5, subject.facts.d_model)
    expected = (directions * hooked.ln_final.w) @ hooked.W_U
    assert torch.allclose(logit_effects(subject, directions), expected, atol=1e-4)
    assert not torch.allclose(directions @ hooked.W_U, expected, atol=1e-2)


def test_reasoning_features_with_their_marker_activations(tiny_run):
    run, subject = tiny_run
    doc = json.loads((run / "features.json").read_text())
    listed = {row["layer"]: row for row in doc["layers"] if row["features"]}
    assert listed, "the planted SAE must give reasoning features"
    dset = build_dashboards(run, cfg=DashboardConfig(texts=4), subject=subject, progress=False)
    assert [(f.layer, f.feature) for f in dset.features] == [(lay, fid) for lay, row in sorted(listed.items())
                                                             for fid in row["features"]]
    assert dset.prompt_tokens and dset.prompt_markers == doc["prompts"][0]["marker_spans"]
    prompt_ids = doc["prompts"][0]["token_ids"]
    for f in dset.features:
        assert f.reasoning
        expected = listed[f.layer]["marker_activations"][str(f.feature)][0]
        for marker, values in f.marker_activations.items():
            assert values == pytest.approx(expected[marker], abs=1e-4)
        sae = load_sae(sae_dir(run, "resid_post", f.layer))
        plain = sae.encode(_clean_acts(subject, prompt_ids, f.layer))[:, f.feature]
        assert f.prompt_acts == pytest.approx(plain.tolist(), abs=1e-4)
        markers = {p for spans in dset.prompt_markers.values() for s, e in spans for p in range(s, e)}
        assert all(v <= 0 for p, v in enumerate(f.prompt_acts) if p not in markers)  # the definition, seen again


def test_sinks_are_left_out_unless_asked(tiny_run, tmp_path):
    assert sink_mask(torch.tensor([5.0, 1.0, 1.2, 9.0, 1.1]), np.arange(5), 4.0).tolist() == [True, False, False,
                                                                                               True, False]
    run, subject = tiny_run
    # a latent reading the direction of position 0's activation: its largest values are at the sink
    texts = _full_texts(subject, 2)
    x0 = _clean_acts(subject, texts[0].ids, 1)[0]
    d = subject.facts.d_model
    enc = torch.cat([x0[:, None] / x0.norm(), torch.zeros(d, 1)], 1)
    sae = build_topk_sae(enc, torch.zeros(2), torch.nn.functional.normalize(torch.randn(2, d), dim=-1),
                         torch.zeros(d), k=2, metadata={"hook_name": "blocks.1.hook_resid_post"})
    sae.cfg.apply_b_dec_to_input = False
    sink_run = tmp_path / "sinks"
    sae.save_model(sae_dir(sink_run, "resid_post", 1))
    cfg = DashboardConfig(texts=TEXTS, top=3)
    with_sinks = build_dashboards(sink_run, 1, "0", DashboardConfig(texts=TEXTS, top=3, include_sinks=True),
                                  subject=subject, progress=False).features[0]
    without = build_dashboards(sink_run, 1, "0", cfg, subject=subject, progress=False).features[0]
    assert (with_sinks.contexts[0].text, with_sinks.contexts[0].position) == (-1, 0)
    assert all(c.position != 0 for c in without.contexts) and without.max_activation < with_sinks.max_activation
    assert with_sinks.contexts[0].value == pytest.approx(float(x0.norm()), rel=1e-4)


def test_page_and_json(tiny_run, tmp_path, cli):
    run, _ = tiny_run
    code, out, err = cli(["dashboard", "--run", str(run), "--layer", "1", "--features", "3,5", "--texts", "4",
                          "--out", str(tmp_path / "d")])
    assert code == 0, err
    assert "layer   1 latent      3" in out and "dashboard:" in out
    page = (tmp_path / "d" / "dashboard.html").read_text()
    data = json.loads((tmp_path / "d" / "dashboard.json").read_text())
    assert [f["feature"] for f in data["features"]] == [3, 5]
    assert page.count("<section ") == 2 and 'href="#L1-F3"' in page and 'id="L1-F5"' in page
    assert not re.search(r'<script[^>]+src="http', page), "the default page must open offline"
    assert len(page) > 3_000_000  # plotly.js is inlined once
    small = page_html(build_dashboards(run, 1, "3", DashboardConfig(texts=2), progress=False), plotlyjs="cdn")
    assert len(small) < 200_000 and 'src="https://cdn.plot.ly/plotly-' in small


def test_errors(cli, tiny_run, tmp_path):
    run, _ = tiny_run
    empty = tmp_path / "empty"
    empty.mkdir()
    no_features = tmp_path / "nofeatures"
    shutil.copytree(run / "saes", no_features / "saes")
    base = ["dashboard", "--out", str(tmp_path / "o")]
    cases = [
        (["--run", str(empty)], "has no resid_post SAEs"),
        (["--run", str(run), "--layer", "1", "--features", "999"], "--features 999: layer 1's SAE has 256 latents"),
        (["--run", str(run), "--features", "3"], "latent ids need --layer"),
        (["--run", str(run), "--layer", "1", "--features", "a,b"], "accepted 'reasoning' or latent ids"),
        (["--run", str(run), "--layer", "3"], "--layer 3: run"),
        (["--run", str(no_features)], "has no features.json"),
        (["--run", str(run), "--layer", "1", "--features", "3", "--plotlyjs", "x"], "--plotlyjs 'x'"),
    ]
    for args, needle in cases:
        code, out, err = cli(base + args)
        assert code == 2 and needle in err and err.count("\n") == 1, (args, code, err, out)


def test_ablation_effect_next_to_the_marker_activations(tiny_run):
    """Each feature's ablation effect equals ablating it by hand: a hook that subtracts activation x decoder row
    from the layer's output after position 0, and the mean change of log p at the prompt's marker tokens."""
    run, subject = tiny_run
    dset = build_dashboards(run, cfg=DashboardConfig(texts=2), subject=subject, progress=False)
    ids = json.loads((run / "features.json").read_text())["prompts"][0]["token_ids"]
    markers = {p for spans in dset.prompt_markers.values() for s, e in spans for p in range(s, e)}
    targets = torch.tensor(ids[1:])

    def logp():
        with torch.no_grad():
            return torch.log_softmax(subject.hf(torch.tensor([ids])).logits[0].float(), -1)[:-1].gather(
                1, targets[:, None])[:, 0]

    clean = logp()
    for f in dset.features:
        sae = load_sae(sae_dir(run, "resid_post", f.layer))
        acts = sae.encode(_clean_acts(subject, ids, f.layer))[:, f.feature].detach()
        change = -acts[:, None] * sae.W_dec[f.feature].detach()
        change[0] = 0

        def hook(_m, _i, out, change=change):
            return (out[0] + change, *out[1:]) if isinstance(out, tuple) else out + change

        handle = decoder_layers(subject.hf)[f.layer].register_forward_hook(hook)
        try:
            edited = logp()
        finally:
            handle.remove()
        at = [p for p in range(1, len(ids) - 1) if p + 1 in markers]
        assert f.ablation.dlogp_marker == pytest.approx(float((edited - clean)[at].mean()), abs=1e-5)
        assert f.ablation.kl >= 0 and f.ablation.max_kl >= f.ablation.kl
    assert any(abs(f.ablation.dlogp_marker) > 1e-4 for f in dset.features), "some ablation must move the markers"
