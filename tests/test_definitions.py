"""The marker rule and ReasonScore side by side on the same SAEs (`compare_definitions`, what
analysis/reasonscore_comparison.py reports): on texts where ReasonScore selects features, each layer's two sets and
their overlap, and `steer`'s ablation of each set against a frequency-matched control of its own size, one effect
recomputed by hand through the model."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import resa_interp.features.outputs as outputs
import resa_interp.interventions.report as report
from resa_interp.data import format_trigger, synthetic_qa
from resa_interp.figures import save_figure
from resa_interp.interventions import compare_definitions
from resa_interp.model import load_subject
from resa_interp.sae import load_sae, require_sae_dirs

PLANTED = [
    "Hmm, 9 + 4 is 13. Wait, check it: 4 + 9 = 13. However, 9 - 4 = 5, not 13.",
    "Perhaps the sides are 3 and 4. Alternatively 6 and 2. Wait, 3 * 4 = 12 and 6 * 2 = 12 too.",
    "Let me verify 15 / 3. Hmm, 3 * 5 = 15, so 5. But maybe 15 / 5 = 3? Yes, that is the other way.",
    "The sum is 20. Wait, 8 + 11 = 19. Hmm, so 19. However, another way: 10 + 9 = 19.",
]
"""Short texts holding several of the authors' reasoning words (hmm, wait, however, perhaps, alternatively, maybe,
but, verify, another way), so that ReasonScore has windows to score."""

MARKERS = {1: [3, 5, 17, 40], 2: [7, 11, 60]}
"""The marker-rule sets the comparison is given, per layer."""

DRAWS, WINDOW, STEER_TEXTS = 2, 20, 4  # control draws, steer's default window, trigger texts per steer run


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_qwen2, tiny_stage1_copy):
    """A copy of the shared tiny run with a marker-rule features.json, and the comparison over the planted texts."""
    root = tmp_path_factory.mktemp("definitions")
    run = tiny_stage1_copy(root / "run")
    subject = load_subject(tiny_qwen2)
    texts = root / "planted.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in PLANTED))
    # the marker rule's features.json, its sets planted (the random tiny model's own marker rule finds none)
    (run / "features.json").write_text(json.dumps({"hook": "resid_post", "model_path": str(subject.path), "layers": [
        {"layer": layer, "features": ids} for layer, ids in MARKERS.items()]}))
    with pytest.MonkeyPatch.context() as patch:  # figures as HTML only: no PNG is looked at here
        for module in (outputs, report):
            patch.setattr(module, "save_figure", functools.partial(save_figure, png=False))
        doc = compare_definitions(run, texts, root / "out", quantile=0.95, steer_layers=2, steer_texts=STEER_TEXTS,
                                  subject=subject, control_draws=DRAWS, bootstrap=50)
    return run, root / "out", subject, doc


def test_each_layer_holds_both_sets_and_their_overlap(compared):
    run, out, _, doc = compared
    markers = MARKERS
    scored = {r["layer"]: r["features"] for r in json.loads((out / "features" / "features.json").read_text())["layers"]}
    assert [r["layer"] for r in doc["layers"]] == [1, 2]
    for row in doc["layers"]:
        a, b = set(row["markers"]), set(row["reasonscore"])
        assert row["markers"] == markers[row["layer"]] and row["reasonscore"] == scored[row["layer"]]
        assert row["intersection"] == sorted(a & b)
        assert row["jaccard"] == (len(a & b) / len(a | b) if a | b else None)
        assert row["reasonscore_counts"] == {"0": len(b)} and row["marker_counts"] == {"0": len(a)}
    assert doc["n_texts"] == len(PLANTED) and "reasonscore_refused" not in doc
    # substrings of every spelling ("Wait", " wait", ...): an upper bound on the windows found in the tokens
    assert doc["word_occurrences"]["wait"] >= sum(t.lower().count("wait") for t in PLANTED)
    assert any(doc["word_windows"].values()), "no reasoning-word window in the tokens"


def _rank(log_rates: torch.Tensor) -> np.ndarray:
    rank = np.empty(len(log_rates), dtype=int)
    rank[np.argsort(log_rates.numpy(), kind="stable")] = np.arange(len(log_rates))
    return rank


def test_each_set_is_steered_against_a_matched_control_of_its_size(compared):
    run, _, _, doc = compared
    both = [str(r["layer"]) for r in doc["layers"] if r["markers"] and r["reasonscore"]]
    assert both, "no layer where both definitions select features: the steer comparison did not run"
    assert list(doc["steer"]) == both[:2]
    for layer, sets in doc["steer"].items():
        row = next(r for r in doc["layers"] if str(r["layer"]) == layer)
        folder = require_sae_dirs(run, "resid_post", [int(layer)])[int(layer)]
        rank = _rank(load_file(str(folder / "sparsity.safetensors"))["sparsity"].float())
        assert list(sets) == ["markers", "reasonscore"]
        for name, eff in sets.items():
            assert eff["latents"] == row[name] and eff["n_texts"] == STEER_TEXTS
            assert len(eff["control_latents"]) == DRAWS
            for draw in eff["control_latents"]:
                assert len(draw) == len(row[name]) == len(set(draw)), (layer, name, draw)
                assert not set(draw) & set(row[name]), "a control latent is one of the set's"
                # matched by firing frequency: within the window of nearest ranks (plus the latents taken before)
                gaps = np.abs(rank[draw] - rank[row[name]])
                assert gaps.max() <= WINDOW + 2 * len(draw), (layer, name, gaps)
            for kind in ("reasoning", "control", "difference"):
                for metric, est in eff[kind].items():
                    assert math.isfinite(est["mean"]) and all(map(math.isfinite, est["ci"])), (kind, metric)
                    assert est["ci"][0] <= est["mean"] <= est["ci"][1], (kind, metric, est)
            for metric in ("dlogp_marker", "dlogp_other", "kl"):  # paired over the same texts, none NaN here
                assert eff["difference"][metric]["mean"] == pytest.approx(
                    eff["reasoning"][metric]["mean"] - eff["control"][metric]["mean"], abs=1e-9)
            assert eff["reasoning"]["kl"]["mean"] > 0 and eff["control"]["kl"]["mean"] > 0


def test_a_sets_effect_recomputes_by_hand(compared):
    """The ReasonScore set's mean KL at the first steered layer, recomputed without `steer`: its latents' decoder
    directions, times their activations, taken out of the block's output from position 1 on, one text at a time."""
    run, _, subject, doc = compared
    layer = next(iter(doc["steer"]))
    ids_set = doc["steer"][layer]["reasonscore"]["latents"]
    sae = load_sae(require_sae_dirs(run, "resid_post", [int(layer)])[int(layer)])
    block = subject.hf.model.layers[int(layer)]

    def ablate(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        f = sae.encode(hidden)
        delta = f[..., ids_set] @ sae.W_dec[ids_set]
        delta[:, :1] = 0  # the sink position keeps its clean activation
        edited = hidden - delta
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    kls = []
    tokenizer = subject.tokenizer
    with torch.no_grad():
        for e in synthetic_qa(STEER_TEXTS, seed=0):
            ids = torch.tensor([tokenizer(format_trigger(e.problem, e.answer))["input_ids"]])
            clean = torch.log_softmax(subject.hf(input_ids=ids).logits[0].double(), -1)
            handle = block.register_forward_hook(ablate)
            try:
                edited = torch.log_softmax(subject.hf(input_ids=ids).logits[0].double(), -1)
            finally:
                handle.remove()
            kl = (clean.exp() * (clean - edited)).sum(-1)[1:-1]  # predictions of tokens 2..T-1
            kls.append(float(kl.clamp_min(0).mean()))
    assert doc["steer"][layer]["reasonscore"]["reasoning"]["kl"]["mean"] == pytest.approx(np.mean(kls), rel=1e-3)


def test_texts_without_reasoning_words_are_recorded_as_refused(compared, tmp_path, monkeypatch):
    import resa_interp.interventions.definitions as definitions

    run, _, _, _ = compared
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"text": "Add the ones: 3 + 4 = 7, write 7. So 23 + 4 = 27."}) + "\n")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for texts ReasonScore refuses")

    monkeypatch.setattr(definitions, "load_subject", no_model)
    doc = compare_definitions(run, plain, tmp_path / "out", quantile=0.95)
    assert "none of its 1 texts holds a reasoning word" in doc["reasonscore_refused"]
    assert "steer" not in doc and all("reasonscore" not in r for r in doc["layers"])
    assert not (tmp_path / "out").exists()
