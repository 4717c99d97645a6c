"""ReasonScore (`features.reasonscore`): windows, entropy and score against an independent numpy recomputation on
planted activations, what scores top and low, and `features --definition reasonscore` end to end on a tiny run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from resa_interp.features import (
    REASON_WORDS,
    SCORE_DEFINITION,
    reason_score,
    select_latents,
    window_masks,
    word_groups,
)
from resa_interp.features.reasonscore import ScoreStats, WordGroup

EPS = 1e-12


def np_windows(ids, groups, before, after, ignore=()):
    """Windows [G, T] by their definition: token q is in word g's window when some token p of a match of g has
    p - before <= q <= p + after; ignored tokens are in none."""
    n = len(ids)
    hit = np.zeros((len(groups), n), bool)
    for g, seqs in enumerate(groups):
        for seq in seqs:
            for i in range(n - len(seq) + 1):
                if list(ids[i:i + len(seq)]) == list(seq):
                    hit[g, i:i + len(seq)] = True
    win = np.zeros_like(hit)
    for g in range(len(groups)):
        for q in range(n):
            win[g, q] = hit[g, max(0, q - after):min(n, q + before + 1)].any()
    ign = np.array([t in ignore for t in ids], bool)
    return win & ~ign, ign


def np_score(latents, windows, ignored, alpha):
    """ReasonScore from its formula over the concatenated texts."""
    acts = np.concatenate(latents).astype(np.float64)
    win = np.concatenate(windows, axis=1)
    ign = np.concatenate(ignored)
    mu_w = np.stack([acts[w].mean(0) if w.any() else np.zeros(acts.shape[1]) for w in win])
    pos = win.any(0)
    neg = ~pos & ~ign
    mu_pos, mu_neg = acts[pos].mean(0), acts[neg].mean(0)
    p = mu_w / (mu_w.sum(0) + EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=0)
    h = h / math.log(len(mu_w)) if len(mu_w) > 1 else np.ones_like(h)
    return mu_pos / (mu_pos.sum() + EPS) * h ** alpha - mu_neg / (mu_neg.sum() + EPS)


def torch_score(latents, ids_list, groups, before, after, alpha, ignore=()):
    stats = ScoreStats(len(groups), latents[0].shape[1])
    for lat, ids in zip(latents, ids_list):
        win, ign = window_masks(ids, groups, before, after, set(ignore))
        stats.update(torch.tensor(lat), win, ign)
    return reason_score(*stats.means(), alpha).numpy()


GROUPS = [WordGroup("wait", ((7,), (8,))), WordGroup("let me", ((5, 6),)), WordGroup("hmm", ((9,),))]
SEQS = [g.sequences for g in GROUPS]


@pytest.mark.parametrize("before,after", [(1, 2), (0, 0), (2, 1), (3, 3)])
def test_windows_at_the_texts_ends_and_inside(before, after):
    cases = [
        [7, 1, 1, 1, 1, 1, 5, 6, 1, 1, 1, 8],  # a word at the very start, a two-token word, one at the very end
        [1, 9, 1, 1, 7, 7, 1, 1, 1, 1, 0, 5],  # adjacent matches; a lone first token of 'let me' is no match
        [0, 8, 1, 5, 6, 0, 1],  # ignored tokens (0) inside windows
    ]
    for ids in cases:
        win, ign = window_masks(ids, GROUPS, before, after, {0})
        ref_win, ref_ign = np_windows(ids, SEQS, before, after, {0})
        assert (win.numpy() == ref_win).all(), (ids, win.int(), ref_win.astype(int))
        assert (ign.numpy() == ref_ign).all()
    win, _ = window_masks([7, 1, 1, 1, 1, 1, 5, 6, 1, 1, 1, 8], GROUPS, 1, 2)
    # the authors' window: 1 before and 2 after, cut at the ends
    assert win[0].nonzero().flatten().tolist() == [0, 1, 2, 10, 11]
    assert win[1].nonzero().flatten().tolist() == [5, 6, 7, 8, 9]


def test_score_matches_the_formula_on_planted_activations():
    rng = np.random.default_rng(0)
    ids_list = [list(rng.choice([1, 2, 3, 5, 6, 7, 8, 9, 0], size=n)) for n in (30, 17, 45)]
    for ids in ids_list:
        ids[0], ids[-1] = 7, 9  # words at both ends of every text
    d = 12
    latents = [np.where(rng.random((len(ids), d)) < 0.3, rng.random((len(ids), d)) * 3, 0.0).astype(np.float32)
               for ids in ids_list]
    for before, after, alpha in ((1, 2, 0.7), (0, 3, 1.0), (2, 0, 0.0)):
        ref_w = [np_windows(ids, SEQS, before, after, {0}) for ids in ids_list]
        expected = np_score(latents, [w for w, _ in ref_w], [i for _, i in ref_w], alpha)
        got = torch_score(latents, ids_list, GROUPS, before, after, alpha, ignore=(0,))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def planted():
    """Three texts; latent 0 fires only in the windows of every word, latent 1 everywhere, latent 2 only in
    'wait' windows, latent 3 in every word's windows but as often elsewhere, latent 4 never."""
    ids_list = [[1, 7, 1, 1, 1, 5, 6, 1, 1, 1, 9, 1, 1, 1, 1], [9, 1, 1, 1, 8, 1, 1, 1, 5, 6]]
    latents = []
    for ids in ids_list:
        win, _ = np_windows(ids, SEQS, 1, 2)
        lat = np.zeros((len(ids), 5), np.float32)
        lat[:, 0] = 2.0 * win.any(0)
        lat[:, 1] = 1.0
        lat[:, 2] = 2.0 * win[0]
        lat[:, 3] = 1.0 * win.any(0) + 1.0 * ~win.any(0)
        latents.append(lat)
    return ids_list, latents


def test_a_latent_of_the_words_scores_top_one_active_everywhere_low():
    ids_list, latents = planted()
    scores = torch_score(latents, ids_list, GROUPS, 1, 2, 0.7)
    assert scores.argmax() == 0
    assert scores[0] > 0 > scores[1]
    assert scores[1] < scores[2] and scores[3] < scores[0] and scores[4] == 0
    assert select_latents(torch.tensor(scores), 0.9)[0] == [0]
    assert select_latents(torch.tensor(scores), 0.5, top_k=2)[0] == [0, 2]


def test_the_entropy_term_for_one_word_and_for_many():
    ids_list, latents = planted()
    # latent 2 fires at one word of three: H = 0, its positive share counts for nothing
    scores = torch_score(latents, ids_list, GROUPS, 1, 2, 0.7)
    assert scores[2] == pytest.approx(-latents_neg_share(latents, ids_list, 2), abs=1e-9)
    # with alpha 0 the entropy is ignored and latent 2 keeps its positive share
    assert torch_score(latents, ids_list, GROUPS, 1, 2, 0.0)[2] > 0
    # a single word: H is 1 by definition, the score is the shares' difference
    one = [GROUPS[0]]
    single = torch_score(latents, ids_list, one, 1, 2, 0.7)
    ref_w = [np_windows(ids, [one[0].sequences], 1, 2) for ids in ids_list]
    np.testing.assert_allclose(single, np_score(latents, [w for w, _ in ref_w], [i for _, i in ref_w], 0.7),
                               atol=1e-9)
    # latent 0 spreads its mass evenly over the three words' windows: normalised entropy close to 1
    stats = ScoreStats(len(GROUPS), 5)
    for lat, ids in zip(latents, ids_list):
        stats.update(torch.tensor(lat), *window_masks(ids, GROUPS, 1, 2))
    word_means = stats.means()[0]
    from resa_interp.features.reasonscore import word_entropy

    _, h = word_entropy(word_means)
    assert float(h[0]) == pytest.approx(1.0, abs=1e-6) and float(h[2]) == pytest.approx(0.0, abs=1e-9)


def latents_neg_share(latents, ids_list, i):
    wins = [np_windows(ids, SEQS, 1, 2)[0].any(0) for ids in ids_list]
    acts = np.concatenate(latents)
    neg = ~np.concatenate(wins)
    mu_neg = acts[neg].mean(0)
    return mu_neg[i] / (mu_neg.sum() + EPS)


def test_word_groups_join_spellings_as_the_authors_do(tiny_qwen2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    groups = word_groups(REASON_WORDS, tok)
    assert [g.word for g in groups] == ["alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore",
                                        "however", "but", "another"]
    assert len(groups[3].sequences) == 4 and groups[3].sequences[0] == tuple(tok.encode("wait"))


REASONING_TEXTS = [
    "Let me add 12 and 30. Hmm, that is 42. Wait, check: 12 + 30 = 42. Therefore 42.",
    "What is 7 times 6? Maybe 42. However, let me verify: 6 * 7 = 42. But another way is 7 + 35.",
    "Perhaps x is 3. Alternatively x could be 4. Wait, 2x + 1 = 7, so x = 3.",
]


def test_features_by_reasonscore_end_to_end(cli, tiny_qwen2, tiny_stage1, tmp_path):
    from resa_interp.features.reasonscore import read_reason_texts
    from resa_interp.model import load_subject
    from resa_interp.sae import load_sae, require_sae_dirs

    texts = tmp_path / "reasoning.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in REASONING_TEXTS))
    out = tmp_path / "rs"
    code, stdout, err = cli(["features", "--model", tiny_qwen2, "--saes", str(tiny_stage1.run), "--layers", "1,2",
                             "--definition", "reasonscore", "--texts", str(texts), "--top-k", "5", "--out", str(out)])
    assert code == 0, err
    assert "reasoning-word windows in the texts: alternatively 1, hmm 1" in stdout
    doc = json.loads((out / "features.json").read_text())
    scores = load_file(str(out / "reasonscore.safetensors"))
    assert doc["definition"] == SCORE_DEFINITION and doc["reasonscore"]["window"] == [1, 2]
    assert doc["reasonscore"]["alpha"] == 0.7 and doc["reasonscore"]["selection"] == "top 5"
    counts = (out / "counts.csv").read_text().splitlines()
    assert counts[0] == "layer,count" and counts[1:] == ["1,5", "2,5"]

    subject = load_subject(tiny_qwen2)
    tok = subject.tokenizer
    groups = [g.sequences for g in word_groups(REASON_WORDS, tok)]
    for row, rs in zip(doc["layers"], doc["reasonscore"]["layers"]):
        layer = row["layer"]
        sae = load_sae(require_sae_dirs(tiny_stage1.run, "resid_post", [layer])[layer])
        norms = sae.W_dec.detach().norm(dim=1)
        lats, wins, igns = [], [], []
        for text in read_reason_texts(texts):
            ids = tok(text)["input_ids"]
            acts = subject.harvester("resid_post", [layer])(torch.tensor([ids]))[layer][0]
            lats.append((sae.encode(acts) * norms).detach().numpy())
            w, i = np_windows(ids, groups, 1, 2, {tok.bos_token_id, tok.eos_token_id} - {None})
            wins.append(w)
            igns.append(i)
        expected = np_score(lats, wins, igns, 0.7)
        got = scores[row["hook_name"]].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
        assert row["features"] == sorted(np.argsort(-expected, kind="stable")[:5].tolist())
        assert set(rs["scores"]) == {str(i) for i in row["features"]}
        assert rs["cutoff"] == pytest.approx(min(rs["scores"].values()))

    # the steer/dashboard selection reads these features as the run's reasoning features
    from resa_interp.features import select_features

    (out / "saes").symlink_to(tiny_stage1.run / "saes")
    assert select_features(out, None).features == {r["layer"]: r["features"] for r in doc["layers"]}


def test_bad_reasonscore_input_is_refused_before_the_model_loads(cli, tiny_qwen2, tiny_stage1, tmp_path,
                                                                 monkeypatch):
    import resa_interp.features.run as run_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(run_module, "load_subject", no_model)
    empty, plain, traces = tmp_path / "empty.jsonl", tmp_path / "plain.jsonl", tmp_path / "bad.jsonl"
    empty.write_text("\n")
    plain.write_text(json.dumps({"text": "Add the ones: 3 + 4 = 7, write 7. So 23 + 4 = 27."}) + "\n")
    traces.write_text('{"problem": 1}\n')
    base = ["features", "--model", tiny_qwen2, "--saes", str(tiny_stage1.run), "--out", str(tmp_path / "o")]
    cases = [
        (["--definition", "scores"], "--definition 'scores' is unknown; accepted: markers, reasonscore"),
        (["--definition", "reasonscore"], "needs --texts FILE.jsonl"),
        (["--definition", "reasonscore", "--texts", str(tmp_path / "none.jsonl")], "no such file"),
        (["--definition", "reasonscore", "--texts", str(empty)], "holds no texts"),
        (["--definition", "reasonscore", "--texts", str(traces)], "line 1 is not JSON with a 'text'"),
        (["--definition", "reasonscore", "--texts", str(plain)], "none of its 1 texts holds a reasoning word"),
        (["--definition", "reasonscore", "--texts", str(plain), "--quantile", "1.5"], "--quantile 1.5"),
        (["--definition", "reasonscore", "--texts", str(plain), "--window-after", "-1"], "accepted >= 0"),
    ]
    for args, needle in cases:
        code, _, err = cli(base + args)
        assert code == 2 and needle in err and err.count("\n") == 1, (args, code, err)
