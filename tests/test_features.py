"""Reasoning-feature extraction: planted latents recovered exactly under every rule; an independent recount
on the embedded model; spliced mode; errors."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from resa_interp.data.templates import marker_spans
from resa_interp.errors import ResaError
from resa_interp.features.extract import FeatureConfig, extract_features
from resa_interp.model.subject import load_subject
from resa_interp.model.tiny import build_tiny_model
from resa_interp.sae.pretrained import build_topk_sae

PROMPT = "Solve: <think> x </think> then <think> y </think> done"
LAYER = 2


@pytest.fixture(scope="session")
def tiny_multi(tmp_path_factory) -> str:
    """Tiny Llama whose tokenizer splits <think> into several tokens (like SmolLM2)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "multi", "llama", special_markers=False))


def _clean_acts(subject, ids, layer):
    with torch.no_grad():
        return subject.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]


def _planted(subject, prompt, second=None):
    """An SAE whose latents fire exactly on designed position sets (solved from the real activations).

    Returns the SAE and, per latent, the set of positions where it is active. With a `second` prompt, every latent
    is also made active exactly at that prompt's marker tokens, except latent 0, which also fires at its last
    token (so it qualifies in `prompt` but not in `second`)."""
    spans = marker_spans(prompt, subject.tokenizer)
    think, end = spans.spans["<think>"], spans.spans["</think>"]
    n = len(spans.token_ids)
    everywhere_marker = {p for s, e in think + end for p in range(s, e)}
    first_tok = {s for s, _ in think + end}
    last_tok = {e - 1 for _, e in think + end}
    designs = [
        everywhere_marker,                                                   # 0: every token of every marker
        last_tok,                                                            # 1: last token of every marker
        first_tok,                                                           # 2: first token of every marker
        everywhere_marker | {n - 1},                                         # 3: markers and elsewhere
        {p for s, e in think for p in range(s, e)},                          # 4: only <think>
        {p for s, e in (think[0], end[0]) for p in range(s, e)},             # 5: first occurrences only
        {n - 1, 0},                                                          # 6: never at a marker
    ]
    x = _clean_acts(subject, spans.token_ids, LAYER)
    targets = torch.tensor([[1.0 if p in d else -1.0 for d in designs] for p in range(n)])
    if second is not None:
        other = marker_spans(second, subject.tokenizer)
        markers2 = {p for found in other.spans.values() for s, e in found for p in range(s, e)}
        last2 = len(other.token_ids) - 1
        x = torch.cat([x, _clean_acts(subject, other.token_ids, LAYER)])
        rows = [[1.0 if p in markers2 or (fid == 0 and p == last2) else -1.0 for fid in range(len(designs))]
                for p in range(len(other.token_ids))]
        targets = torch.cat([targets, torch.tensor(rows)])
    assert x.shape[0] < x.shape[1], "the prompts must be shorter than d_model for exact planting"
    w_enc = torch.linalg.lstsq(x.double(), targets.double()).solution.float()  # x @ w_enc == targets
    assert torch.allclose(x @ w_enc, targets, atol=1e-3)
    d_sae = len(designs)
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, x.shape[1]), dim=-1)
    sae = build_topk_sae(w_enc, torch.zeros(d_sae), w_dec, torch.zeros(x.shape[1]), k=d_sae,
                         metadata={"hook_name": f"blocks.{LAYER}.hook_resid_post"})
    sae.cfg.apply_b_dec_to_input = False
    return sae, designs, spans


def _expected(designs, spans, rule, occurrences, n):
    """Which designed latents meet the definition, computed from the designs alone."""
    out = []
    for fid, active in enumerate(designs):
        ok = True
        for marker in ("<think>", "</think>"):
            per = []
            for s, e in spans.spans[marker]:
                tokens = set(range(s, e))
                per.append({"any": bool(tokens & active), "last": (e - 1) in active, "all": tokens <= active}[rule])
            ok &= all(per) if occurrences == "all" else any(per)
        markers = {p for found in spans.spans.values() for s, e in found for p in range(s, e)}
        ok &= not (active - markers)
        if ok:
            out.append(fid)
    return out


@pytest.mark.parametrize("which", ["single", "multi"])
def test_planted_features_are_recovered_under_every_rule(which, tiny_qwen2, tiny_multi):
    subject = load_subject(tiny_qwen2 if which == "single" else tiny_multi)
    sae, designs, spans = _planted(subject, PROMPT)
    if which == "single":
        assert all(e - s == 1 for found in spans.spans.values() for s, e in found)
    else:
        assert all(e - s == 3 for found in spans.spans.values() for s, e in found)
    seen = set()
    for rule, occurrences in itertools.product(("any", "last", "all"), ("all", "any")):
        cfg = FeatureConfig(marker_rule=rule, occurrences=occurrences)
        _, layers = extract_features(subject, {LAYER: sae}, "resid_post", [PROMPT], cfg)
        expected = _expected(designs, spans, rule, occurrences, len(spans.token_ids))
        assert layers[0].features == expected, (rule, occurrences)
        seen.add(tuple(expected))
    assert 0 in _expected(designs, spans, "all", "all", 0) and 3 not in seen and 6 not in seen
    if which == "multi":
        assert len(seen) >= 3  # the rules really differ for multi-token markers


def test_marker_activations_and_several_prompts(tiny_qwen2):
    subject = load_subject(tiny_qwen2)
    second = "x <think> a </think> b"
    sae, designs, spans = _planted(subject, PROMPT, second)
    cfg = FeatureConfig()
    _, layers = extract_features(subject, {LAYER: sae}, "resid_post", [PROMPT], cfg)
    assert layers[0].features == _expected(designs, spans, "any", "all", len(spans.token_ids))
    acts = layers[0].marker_activations[str(0)][0]
    assert len(acts["<think>"]) == 2 and all(v == pytest.approx(1.0, abs=1e-3) for v in acts["<think>"])
    # in the second prompt every latent fires only at the markers except latent 0 (also at the last token): a
    # feature must qualify in every prompt, so latent 0 drops out and the rest of the first prompt's stay
    _, both = extract_features(subject, {LAYER: sae}, "resid_post", [PROMPT, second], cfg)
    assert 0 in layers[0].features and len(layers[0].features) >= 2
    assert both[0].features == [f for f in layers[0].features if f != 0]


def test_spliced_mode(tiny_qwen2):
    subject = load_subject(tiny_qwen2)
    planted, _, _ = _planted(subject, PROMPT)
    d = subject.facts.d_model
    eye = torch.eye(d)
    # a perfect SAE (relu(x) - relu(-x) = x) at layer 1 leaves the model unchanged
    perfect = build_topk_sae(torch.cat([eye, -eye], 1), torch.zeros(2 * d), torch.cat([eye, -eye]), torch.zeros(d),
                             k=2 * d, metadata={"hook_name": "blocks.1.hook_resid_post"})
    clean = extract_features(subject, {1: perfect, LAYER: planted}, "resid_post", [PROMPT], FeatureConfig())[1]
    spliced = extract_features(subject, {1: perfect, LAYER: planted}, "resid_post", [PROMPT],
                               FeatureConfig(spliced=True))[1]
    assert spliced[1].features == clean[1].features and clean[1].count > 0
    # a destructive SAE at layer 1 changes what layer 2 sees
    broken = build_topk_sae(torch.cat([eye, -eye], 1), torch.zeros(2 * d), torch.zeros(2 * d, d), torch.zeros(d),
                            k=2 * d, metadata={"hook_name": "blocks.1.hook_resid_post"})
    changed = extract_features(subject, {1: broken, LAYER: planted}, "resid_post", [PROMPT],
                               FeatureConfig(spliced=True))[1]
    assert changed[1].features != clean[1].features


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory, embedded):
    """A small Stage I run on the embedded model at three layers, shared by the integration tests."""
    from resa_interp.sae import SAETrainConfig, train_saes

    run = tmp_path_factory.mktemp("embedded") / "run"
    train_saes(SAETrainConfig(layers="3,12,24", tokens=8192, heldout=8), run, subject=embedded)
    return run


def _by_hand(latents, spans):
    """The definition applied by hand to latents [T, d_sae] (default rules): Python sets of active positions."""
    markers = {m: [set(range(s, e)) for s, e in found] for m, found in spans.spans.items()}
    marker_positions = set().union(*markers["<think>"], *markers["</think>"])
    found = []
    for fid in range(latents.shape[1]):
        active = {p for p in range(latents.shape[0]) if latents[p, fid] > 0}
        at_every = all(occ & active for m in markers for occ in markers[m])
        if at_every and not (active - marker_positions):
            found.append(fid)
    return found


def _independent_features(subject, run, layer, spans):
    """The definition applied by hand: raw HF hidden states, a plain sae_lens encode, Python sets."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(run / "saes" / f"blocks.{layer}.hook_resid_post"))
    return _by_hand(sae.encode(_clean_acts(subject, spans.token_ids, layer)), spans)


def _saelens_latents(subject, saes, ids):
    """Hook name -> latents [T, d_sae] as SAELens computes them on the *clean* model: its HookedSAETransformer
    (our view of the model) with one SAE attached at a time (`run_with_cache_with_saes`). Attaching several at
    once would splice the upstream ones into the forward pass, so a downstream SAE would read reconstructed
    activations, not the clean ones `features` reads."""
    model = subject.hooked
    assert type(model).__name__ == "HookedSAETransformer"
    out = {}
    with torch.no_grad():
        for sae in saes:
            hook = sae.cfg.metadata.hook_name
            _, cache = model.run_with_cache_with_saes(torch.tensor([ids]), saes=[sae])
            out[hook] = cache[f"{hook}.hook_sae_acts_post"][0]
    return out


def _assert_saelens_reproduces(subject, layers, saes_by_layer, text, atol):
    """`features`' reasoning features and marker activations equal the definition applied to SAELens' latents."""
    spans = marker_spans(text, subject.tokenizer)
    latents = _saelens_latents(subject, saes_by_layer.values(), spans.token_ids)
    for layer in layers:
        mine = latents[layer.hook_name]
        assert layer.features == _by_hand(mine, spans), layer.layer
        for fid, per_prompt in layer.marker_activations.items():
            for marker, values in per_prompt[0].items():
                expected = [mine[s:e, int(fid)].max().item() for s, e in spans.spans[marker]]
                assert values == pytest.approx(expected, abs=atol), (layer.layer, fid, marker)


def test_saelens_hooked_sae_transformer_reproduces_features(tiny_qwen2, tmp_path):
    """SAELens' own HookedSAETransformer, built from our view with the SAE loaded by `SAE.load_from_disk` and
    attached (`run_with_cache_with_saes`), gives the reasoning features and marker activations `features` finds
    by HF forward hooks."""
    from sae_lens import SAE

    subject = load_subject(tiny_qwen2)
    planted, designs, spans = _planted(subject, PROMPT)
    planted.save_model(tmp_path / "sae")
    sae = SAE.load_from_disk(str(tmp_path / "sae"))
    infos, layers = extract_features(subject, {LAYER: sae}, "resid_post", [PROMPT], FeatureConfig())
    assert layers[0].features == _expected(designs, spans, "any", "all", 0) and layers[0].count >= 2
    _assert_saelens_reproduces(subject, layers, {LAYER: sae}, infos[0].text, atol=1e-4)


def test_the_saelens_recount_compares_clean_activations(tiny_qwen2):
    """The recount reads each SAE on the clean model: it agrees with `features`' clean extraction at two layers
    whose upstream SAE is destructive, and it fails on the spliced extraction of the same SAEs (the mistake of
    attaching all SAEs at once, which made the embedded check compare clean features with spliced ones)."""
    subject = load_subject(tiny_qwen2)
    planted, _, _ = _planted(subject, PROMPT)
    d = subject.facts.d_model
    eye = torch.eye(d)
    broken = build_topk_sae(torch.cat([eye, -eye], 1), torch.zeros(2 * d), torch.zeros(2 * d, d), torch.zeros(d),
                            k=2 * d, metadata={"hook_name": "blocks.1.hook_resid_post"})
    saes = {1: broken, LAYER: planted}
    infos, clean = extract_features(subject, saes, "resid_post", [PROMPT], FeatureConfig())
    assert clean[1].count > 0
    _assert_saelens_reproduces(subject, clean, saes, infos[0].text, atol=1e-4)
    _, spliced = extract_features(subject, saes, "resid_post", [PROMPT], FeatureConfig(spliced=True))
    assert spliced[1].features != clean[1].features
    with pytest.raises(AssertionError):
        _assert_saelens_reproduces(subject, spliced, saes, infos[0].text, atol=1e-4)


@pytest.mark.slow
def test_embedded_features_match_an_independent_recount(cli, embedded, embedded_run):
    from sae_lens import SAE

    code, out, _ = cli(["features", "--out", str(embedded_run), "--layers", "3,12,24"])
    assert code == 0, out
    doc = json.loads((embedded_run / "features.json").read_text())
    spans = marker_spans(doc["prompts"][0]["text"], embedded.tokenizer)
    # the authors' prompt, 91 tokens: <think> at [50,53) and [72,75), </think> at [53,56) and [78,81) (three tokens
    # each in SmolLM2); checked by decoding the spans, not against a copy of the extractor's own output
    ids = doc["prompts"][0]["token_ids"]
    for marker, found in doc["prompts"][0]["marker_spans"].items():
        assert len(found) == doc["prompts"][0]["text"].count(marker) == 2
        assert all(embedded.tokenizer.decode(ids[s:e]).strip() == marker for s, e in found)
        assert all(marker not in embedded.tokenizer.decode(ids[e:e + 1]) for s, e in found)
    assert doc["prompts"][0]["excluded_positions"] == [] and doc["definition"].startswith("Definition")
    for layer in doc["layers"]:
        assert layer["features"] == _independent_features(embedded, embedded_run, layer["layer"], spans)
        assert 0 < layer["sae_quality"]["explained_variance"] <= 1
    # SAELens' HookedSAETransformer with the run's SAEs attached finds the same features and marker activations
    layers = [SimpleNamespace(**layer) for layer in doc["layers"]]
    saes = {layer.layer: SAE.load_from_disk(str(embedded_run / "saes" / layer.hook_name)) for layer in layers}
    assert sum(layer.count for layer in layers) > 0
    _assert_saelens_reproduces(embedded, layers, saes, doc["prompts"][0]["text"], atol=1e-4)
    # every code path gives the same features: HF hooks, the TransformerLens view, SAELens' hooked model; the
    # bfloat16 model too, for every feature whose margin is beyond the bfloat16 noise
    for layer in doc["layers"]:
        paths = layer["boundary"]["paths"]
        assert paths["hf"] == paths["transformerlens"] == paths["saelens"] == layer["features"], layer["layer"]
        assert layer["boundary"]["noise"]["transformerlens"] < 1e-2 and not layer["boundary"]["fragile_fp32"]
        clear = [f for f in layer["features"] if f not in layer["boundary"]["fragile_precision"]]
        assert set(clear) <= set(paths["bfloat16"]), layer["layer"]
    counts = (embedded_run / "counts.csv").read_text().splitlines()
    assert counts[0] == "layer,count" and len(counts) == 4
    assert (embedded_run / "figures" / "feature_counts.html").exists()
    assert "EV q/a" in out


def test_errors(cli, tiny_qwen2, tiny_llama, tmp_path):
    from resa_interp.sae import SAETrainConfig, train_saes

    run = tmp_path / "run"
    train_saes(SAETrainConfig(model=tiny_qwen2, layers="1,2", expansion_factor=2, k=4, tokens=1024,
                              batch_tokens=256, buffer_tokens=512, heldout=2, n_examples=30), run)
    base = ["features", "--model", tiny_qwen2, "--saes", str(run), "--out", str(tmp_path / "f")]
    cases = [
        (base + ["--layers", "1,2", "--prompt", "no markers here"], "has no <think> and no </think>"),
        (base + ["--layers", "1,2", "--prompt", "only <think> here"], "has no </think>"),
        (base + ["--layers", "1,3"], "has no resid_post SAE for layer(s) 3"),
        (base + ["--layers", "1,2", "--threshold", "abc"], "Invalid value for '--threshold'"),
        (["features", "--model", tiny_llama, "--saes", str(run), "--layers", "1,2", "--out", str(tmp_path / "g")],
         "was trained on"),
    ]
    for args, needle in cases:
        code, _, err = cli(args)
        assert code == 2 and needle in err and err.count("\n") == 1, (args[-2:], code, err, _)
    code, out, _ = cli(base + ["--layers", "1,2"])
    assert code == 0 and "count" in out


def test_d_in_mismatch(tmp_path, tiny_qwen2):
    subject = load_subject(tiny_qwen2)
    wrong = build_topk_sae(torch.zeros(32, 8), torch.zeros(8), torch.zeros(8, 32), torch.zeros(32), k=2,
                           metadata={"hook_name": "blocks.1.hook_resid_post"})
    with pytest.raises(ResaError, match="d_in 32, the model.s resid_post activations have width 64"):
        extract_features(subject, {1: wrong}, "resid_post", [PROMPT], FeatureConfig())


def test_prompt_file_jsonl_through_the_cli(cli, tiny_qwen2, tmp_path):
    from resa_interp.sae import SAETrainConfig, train_saes

    run = tmp_path / "run"
    train_saes(SAETrainConfig(model=tiny_qwen2, layers="1,2", expansion_factor=2, k=4, tokens=1024,
                              batch_tokens=256, buffer_tokens=512, heldout=2, n_examples=30), run)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n" + json.dumps({"text": "a <think> b </think> c"}) + "\n")
    code, out, err = cli(["features", "--model", tiny_qwen2, "--saes", str(run), "--prompt-file", str(prompts),
                          "--out", str(tmp_path / "f")])
    assert code == 0, err
    doc = json.loads((tmp_path / "f" / "features.json").read_text())
    assert [p["text"] for p in doc["prompts"]] == [PROMPT, "a <think> b </think> c"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"other": 1}\n')
    code, _, err = cli(["features", "--model", tiny_qwen2, "--saes", str(run), "--prompt-file", str(bad),
                        "--out", str(tmp_path / "g")])
    assert code == 2 and "line 1 is not JSON with 'prompt' or 'text'" in err


def test_a_moved_run_still_points_at_its_saes(cli, tiny_qwen2, tmp_path):
    from resa_interp.sae import SAETrainConfig, train_saes
    from resa_interp.sae.folders import load_sae

    run = tmp_path / "run"
    train_saes(SAETrainConfig(model=tiny_qwen2, layers="1,2", expansion_factor=2, k=4, tokens=1024,
                              batch_tokens=256, buffer_tokens=512, heldout=2, n_examples=30), run)
    code, _, err = cli(["features", "--model", tiny_qwen2, "--layers", "1,2", "--out", str(run)])
    assert code == 0, err
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(run, moved)  # nothing is left at the old place
    doc = json.loads((moved / "features.json").read_text())
    metrics = json.loads((moved / "saes" / "metrics.json").read_text())
    assert [row["sae_path"] for row in doc["layers"]] == [f"saes/blocks.{n}.hook_resid_post" for n in (1, 2)]
    assert [row["sae_path"] for row in metrics] == [row["sae_path"] for row in doc["layers"]]
    for row in doc["layers"]:
        assert load_sae(moved / row["sae_path"]).cfg.metadata.hook_name == row["hook_name"]
    assert json.loads((moved / "manifest.json").read_text())["stages"]["features"]["saes"] == "."


def test_default_prompt_is_the_authors_r1_prompt_and_the_printed_form_is_selectable():
    from resa_interp.data.templates import R1_PAPER_SYSTEM_PROMPT, R1_SYSTEM_PROMPT
    from resa_interp.features import read_prompts

    assert read_prompts(None, None) == [R1_SYSTEM_PROMPT] == list(FeatureConfig().prompts)
    assert read_prompts(None, None, "r1-paper") == [R1_PAPER_SYSTEM_PROMPT]
    assert R1_SYSTEM_PROMPT.startswith("\n") and R1_SYSTEM_PROMPT.count("\n") == 6  # the authors' line breaks
    with pytest.raises(ResaError, match="--prompt-style 'paper' is unknown"):
        read_prompts(None, None, "paper")


def _saved(sae, folder, seed, order=None, w_dec=None, negate=()):
    """Save `sae` as a Stage I SAE folder of `seed`, its latents reordered so new latent j is old latent order[j],
    optionally with other decoder rows (`w_dec`, in the old order) and with the encoders of the old latents
    `negate` flipped (they then fire everywhere but at their designed positions)."""
    w_enc, b_enc = sae.W_enc.detach().clone(), sae.b_enc.detach().clone()
    dec = (sae.W_dec.detach() if w_dec is None else w_dec).clone()
    for fid in negate:
        w_enc[:, fid] = -w_enc[:, fid]
    order = list(range(w_enc.shape[1])) if order is None else order
    out = build_topk_sae(w_enc[:, order], b_enc[order], dec[order], sae.b_dec.detach(), k=w_enc.shape[1],
                         metadata={"hook_name": f"blocks.{LAYER}.hook_resid_post", "seed": seed})
    out.cfg.apply_b_dec_to_input = False
    out.save_model(str(folder))
    return folder


def test_multi_seed_run_matches_planted_copies_and_counts_each_seed_as_a_single_run(tiny_qwen2, tmp_path, cli):
    """Three seeds of one layer: seed 1 is seed 0's SAE with its latents permuted (every reasoning feature has a
    twin), seed 2 keeps latent 2, loses latent 0 (encoder flipped: no longer a reasoning feature) and gets a
    random decoder for latent 1 (still a reasoning feature, but matches nothing)."""
    from resa_interp.features.extract import run_features
    from resa_interp.layers.analysis import read_counts
    from resa_interp.sae.folders import load_sae

    subject = load_subject(tiny_qwen2)
    sae, designs, spans = _planted(subject, PROMPT)
    run = tmp_path / "run"
    perm1 = [3, 0, 6, 1, 5, 2, 4]  # seed 1's latent j is seed 0's latent perm1[j]
    perm2 = [2, 4, 1, 0, 6, 5, 3]
    noisy = torch.nn.functional.normalize(sae.W_dec.detach() + 0.05 * torch.randn(sae.W_dec.shape), dim=-1)
    noisy[1] = torch.nn.functional.normalize(torch.randn(sae.W_dec.shape[1]), dim=0)
    folders = {
        0: _saved(sae, run / "saes" / f"blocks.{LAYER}.hook_resid_post", 0),
        1: _saved(sae, run / "saes" / "seed-1" / f"blocks.{LAYER}.hook_resid_post", 1, order=perm1),
        2: _saved(sae, run / "saes" / "seed-2" / f"blocks.{LAYER}.hook_resid_post", 2, order=perm2, w_dec=noisy,
                  negate=(0,)),
    }
    cfg = FeatureConfig(layers=str(LAYER), saes=str(run), prompts=(PROMPT,))
    result = run_features(cfg, tmp_path / "out", subject=subject)

    # each seed's features equal an extraction of that seed's SAEs alone
    single = {s: extract_features(subject, {LAYER: load_sae(f)}, "resid_post", [PROMPT], FeatureConfig())[1][0]
              for s, f in folders.items()}
    expected0 = _expected(designs, spans, "any", "all", len(spans.token_ids))
    assert expected0 == [0, 1, 2] and single[0].features == expected0
    assert single[1].features == sorted(perm1.index(f) for f in expected0)
    assert single[2].features == sorted(perm2.index(f) for f in (1, 2))
    assert {s: r[0].features for s, r in result.seed_layers.items()} == {s: r.features for s, r in single.items()}
    (st,) = result.stability
    assert st.counts == {0: 3, 1: 3, 2: 2} and st.stable_count == 3  # majority: 2 of 3
    groups = {tuple(g.ids[0]): g.ids for g in st.groups if g.ids[0]}
    for fid in expected0:
        assert groups[(fid,)][1] == [perm1.index(fid)]
    assert groups[(2,)][2] == [perm2.index(2)] and groups[(0,)][2] == [] and groups[(1,)][2] == []
    lonely = [g for g in st.groups if not g.ids[0]]
    assert [g.ids for g in lonely] == [{0: [], 1: [], 2: [perm2.index(1)]}] and not lonely[0].stable
    flipped = [m for m in st.matches if (m.seed_a, m.feature_a, m.seed_b) == (0, 0, 2)]
    assert flipped and flipped[0].feature_b == perm2.index(0) and not flipped[0].reasoning_b  # matched, not reasoning

    rows = (tmp_path / "out" / "counts.csv").read_text().splitlines()
    assert rows == ["layer,stable,count,count_seed_0,count_seed_1,count_seed_2,count_mean,count_std",
                    f"{LAYER},3,3,3,3,2,{round(8 / 3, 6)},{round(float(torch.tensor([3., 3, 2]).std()), 6)}"]
    doc = json.loads((tmp_path / "out" / "features.json").read_text())
    assert doc["seeds"]["seeds"] == [0, 1, 2] and doc["seeds"]["min_seeds"] == 2
    assert doc["layers"][0]["features"] == expected0  # the primary seed's, as before
    for source in ("counts.csv", "features.json"):
        data = read_counts(tmp_path / "out" / source)
        assert data.values.tolist() == [3] and data.seed_values.tolist() == [[3], [3], [2]]

    strict = run_features(replace(cfg, min_seeds=3), tmp_path / "o3", subject=subject)
    assert strict.stability[0].stable_count == 1  # only latent 2 is a reasoning feature in all three seeds
    code, _, err = cli(["features", "--model", tiny_qwen2, "--saes", str(run), "--out", str(tmp_path / "o4"),
                        "--layers", str(LAYER), "--prompt", PROMPT, "--min-seeds", "4"])
    assert code == 2 and err.strip().splitlines() == ["error: --min-seeds 4: the run has 3 seed(s); accepted 1..3"]


def _info(n: int, think: list[tuple[int, int]], end: list[tuple[int, int]], excluded=()):
    from resa_interp.features.extract import PromptInfo

    return PromptInfo("", list(range(n)), {"<think>": [list(s) for s in think], "</think>": [list(s) for s in end]},
                      list(excluded))


def test_margins_tolerances_and_the_boundary_by_hand():
    """Margins, the relative threshold and the near-boundary sets against a plain-Python reading of the definition
    on planted latents: a clear feature, a barely-active one, one that fires weakly elsewhere, one not selected."""
    from resa_interp.features.boundary import near_boundary, sides, thresholds
    from resa_interp.features.extract import qualifying

    info = _info(8, think=[(1, 3)], end=[(5, 6)], excluded=[0])
    lat = torch.zeros(8, 5)
    lat[[1, 5], 0] = torch.tensor([2.0, 3.0])           # clear feature, margin 2
    lat[[2, 5], 1] = torch.tensor([1e-6, 0.5])           # active at a marker by 1e-6 only
    lat[[1, 5, 7], 2] = torch.tensor([1.0, 1.0, 0.05])   # fires weakly elsewhere (position 7)
    lat[[1, 7], 3] = torch.tensor([1.0, 0.2])            # never at </think>
    lat[0, 4] = 9.0                                      # only at the excluded sink
    cfg = FeatureConfig()
    assert qualifying(lat, info, cfg).nonzero().flatten().tolist() == [0, 1]
    side = sides(lat, info, cfg)

    def by_hand(fid):  # smallest over markers of the largest over each span's tokens; largest selected elsewhere
        marker = min(max(float(lat[p, fid]) for p in range(s, e)) for found in info.marker_spans.values()
                     for s, e in found)
        other = [float(lat[p, fid]) for p in (3, 4, 6, 7) if lat[p, fid] != 0]
        return marker, max(other, default=-float("inf"))

    for fid in range(5):
        assert (float(side.marker[fid]), float(side.other[fid])) == by_hand(fid)
    limit = thresholds(lat, cfg)
    fragile, near = near_boundary(side, limit, torch.full((5,), 1e-4))
    assert fragile.nonzero().flatten().tolist() == [1] and near.nonzero().flatten().tolist() == []
    fragile, near = near_boundary(side, limit, torch.full((5,), 0.1))
    assert fragile.nonzero().flatten().tolist() == [1] and near.nonzero().flatten().tolist() == [2]
    # a declared tolerance relative to each latent's peak: latent 2's 0.05 is 5% of its peak
    relaxed = FeatureConfig(relative_threshold=0.1)
    assert qualifying(lat, info, relaxed).nonzero().flatten().tolist() == [0, 2]
    with pytest.raises(ResaError, match="--relative-threshold 1.5"):
        replace(relaxed, relative_threshold=1.5).check()


def test_features_records_margins_and_every_code_path(tiny_qwen2, tmp_path):
    """run_features writes each feature's margin (recomputed from its marker activations) and the feature set of
    every code path; on the planted SAE the float32 paths agree with the HF path."""
    from resa_interp.features.extract import run_features

    subject = load_subject(tiny_qwen2)
    planted, designs, spans = _planted(subject, PROMPT)
    planted.save_model(tmp_path / "run" / "saes" / f"blocks.{LAYER}.hook_resid_post")
    result = run_features(FeatureConfig(layers=str(LAYER), saes=str(tmp_path / "run"), prompts=(PROMPT,),
                                        allow_model_mismatch=True), tmp_path / "f", subject=subject)
    layer = result.layers[0]
    assert layer.features == _expected(designs, spans, "any", "all", 0)
    for fid, acts in layer.marker_activations.items():
        low = min(min(values) for values in acts[0].values())
        assert layer.margins[fid]["marker_min"] == pytest.approx(low, abs=1e-6)
        assert layer.margins[fid]["margin"] == pytest.approx(low - layer.margins[fid]["other_max"], abs=1e-6)
    paths = layer.boundary["paths"]
    assert {"hf", "transformerlens", "saelens", "bfloat16"} <= set(paths)
    assert paths["hf"] == paths["transformerlens"] == paths["saelens"] == layer.features
    assert 0 < layer.boundary["noise"]["transformerlens"] < 1e-3
    doc = json.loads((tmp_path / "f" / "features.json").read_text())
    assert doc["layers"][0]["margins"] == json.loads(json.dumps(layer.margins)) and doc["boundary"]
