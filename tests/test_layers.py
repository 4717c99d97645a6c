"""Layer alignment: the weighted EM against scikit-learn, planted mixtures recovered, BIC, the permutation test,
determinism and row-order invariance, the recommendation, and one-line errors through the real CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.mixture import GaussianMixture

from resa_interp.errors import ResaError
from resa_interp.layers import (
    LayerConfig,
    Mixture,
    analyze_layers,
    expand,
    fit_weighted,
    hellinger,
    markdown_summary,
    read_counts,
    read_scores,
    transform_scores,
)
from resa_interp.numbering import layer_of_paper_label, layer_title, paper_label

FAST = LayerConfig(restarts=20, resample_restarts=5, bootstrap=40, permutations=0)
LAYERS = np.arange(30)
TRUE_MEANS, TRUE_STDS, TRUE_WEIGHTS = np.array([5.0, 15.0, 24.0]), np.array([1.5, 2.0, 1.5]), np.array([0.5, 0.3, 0.2])


def planted_counts(n: int, means=TRUE_MEANS, stds=TRUE_STDS, weights=TRUE_WEIGHTS) -> np.ndarray:
    """Feature counts per layer: n features from a Gaussian mixture, binned to layers (mass rounded)."""
    mass = sum(
        w * (norm.cdf(LAYERS + 0.5, m, s) - norm.cdf(LAYERS - 0.5, m, s)) for m, s, w in zip(means, stds, weights)
    )
    return np.round(n * mass / mass.sum()).astype(int)


def write_csv(path, header: str, rows) -> str:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def counts_csv(tmp_path, counts, name="counts.csv", order=None) -> str:
    rows = [(layer, c) for layer, c in zip(LAYERS, counts)]
    if order is not None:
        rows = [rows[i] for i in order]
    return write_csv(tmp_path / name, "layer,count", rows)


# ---------------------------------------------------------------- the maths


def test_weighted_em_reaches_sklearn_optimum_on_integer_weights():
    rng = np.random.default_rng(3)
    for planted, counts in ((True, planted_counts(400)), (False, rng.integers(0, 6, size=30))):
        x = np.repeat(LAYERS, counts).astype(float)[:, None]
        for k in (2, 3):
            ours = fit_weighted(LAYERS, counts, k, restarts=20, seed=0, likelihood="continuous").mixtures[0]
            gm = GaussianMixture(k, n_init=10, reg_covar=1 / 12, tol=1e-10, max_iter=5000, random_state=0).fit(x)
            # same objective: our mean log-likelihood on the expanded observations is at least sklearn's best
            assert np.log(ours.pdf(x.ravel())).mean() >= gm.score(x) - 1e-7
            # and our solution is a fixed point of sklearn's own EM
            again = GaussianMixture(
                k,
                reg_covar=1 / 12,
                tol=1e-12,
                max_iter=5000,
                means_init=ours.means[:, None],
                weights_init=ours.weights,
                precisions_init=(1 / ours.stds**2).reshape(k, 1, 1),
            ).fit(x)
            np.testing.assert_allclose(again.means_.ravel(), ours.means, atol=1e-3)
            np.testing.assert_allclose(again.weights_, ours.weights, atol=1e-4)
            np.testing.assert_allclose(np.sqrt(again.covariances_.ravel()), ours.stds, rtol=1e-3)
            if planted:  # one clear optimum: both searches find it
                order = np.argsort(gm.means_.ravel())
                np.testing.assert_allclose(ours.means, gm.means_.ravel()[order], atol=1e-3)
                np.testing.assert_allclose(ours.weights, gm.weights_[order], atol=1e-4)


def binned_loglik(theta: np.ndarray, layers: np.ndarray, w: np.ndarray, k: int) -> float:
    """Mean truncated binned log-likelihood written out directly with scipy.stats (means, log-stds, softmax
    weights): each component's bin masses renormalised over `layers`."""
    mu, sd, pi = theta[:k], np.exp(theta[k : 2 * k]), np.exp(theta[2 * k :]) / np.exp(theta[2 * k :]).sum()
    masses = [norm.cdf(layers + 0.5, m, s) - norm.cdf(layers - 0.5, m, s) for m, s in zip(mu, sd)]
    return float((w * np.log(sum(p * m / m.sum() for p, m in zip(pi, masses)))).sum() / w.sum())


EDGE_COUNTS = np.round(60 * np.exp(-LAYERS / 3.0)).astype(int) + np.arange(30) % 3  # most mass on layer 0


def test_truncated_bin_probabilities_match_numerical_integration():
    """Each component's mass on each observed bin, integrated by quad and renormalised over the observed layers
    (contiguous or not); nothing outside them; the total is 1."""
    from scipy.integrate import quad

    m = Mixture(np.array([0.3, 6.0, 9.0]), np.array([1.5, 0.7, 3.0]), np.array([0.5, 0.2, 0.3]))
    for support in (np.arange(10), np.array([0, 1, 2, 5, 6, 9])):
        truncated = Mixture(m.means, m.stds, m.weights, support)
        expected = np.zeros(12)
        for mu, sd, pi in zip(m.means, m.stds, m.weights):
            bins = np.array([quad(norm(mu, sd).pdf, layer - 0.5, layer + 0.5)[0] for layer in support])
            expected[support] += pi * bins / bins.sum()
        np.testing.assert_allclose(truncated.bin_probs(np.arange(12)), expected, atol=1e-12)
        assert truncated.bin_probs(support).sum() == pytest.approx(1.0, abs=1e-12)
        grid = np.linspace(-0.5, 9.5, 20001)
        assert np.trapezoid(truncated.pdf(grid), grid) == pytest.approx(1.0, abs=2e-3)
    assert m.bin_probs(np.arange(10)).sum() < 0.97  # untruncated: the first component loses mass below layer 0


def test_binned_em_is_a_maximum_of_the_binned_likelihood():
    """The EM's likelihood is the truncated binned likelihood computed independently, and a general-purpose
    optimiser started at the fit, under the same constraints (0.5 ≤ σ ≤ 30, the span of the layers; means
    within the layers' bins), finds nothing better; at a bound the fit is a constrained maximum, still checked."""
    from scipy.optimize import minimize

    bounds = [(-0.5, 29.5)] * 3 + [(math.log(0.5), math.log(30))] * 3 + [(None, None)] * 3
    at_bound = []
    for counts in (planted_counts(300), np.random.default_rng(5).integers(0, 6, size=30), EDGE_COUNTS):
        fit = fit_weighted(LAYERS, counts, 3, restarts=50, seed=0)
        m = fit.mixtures[0]
        theta = np.concatenate([m.means, np.log(m.stds), np.log(m.weights)])
        assert binned_loglik(theta, LAYERS, counts, 3) == pytest.approx(fit.mean_loglik[0], abs=1e-10)
        better = minimize(
            lambda t, counts=counts: -binned_loglik(t, LAYERS, counts, 3),
            theta,
            method="Nelder-Mead",
            bounds=bounds,
            options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000},
        )
        assert -better.fun <= fit.mean_loglik[0] + 1e-7
        at_bound.append(bool(np.isin(m.stds, [0.5, 30.0]).any() or np.isin(m.means, [-0.5, 29.5]).any()))
    assert at_bound == [False, True, True]  # both kinds of maximum are exercised


def test_weighted_em_uses_real_weights_exactly():
    """Non-integer weights enter the likelihood as they are: the continuous fit to real weights satisfies the
    weighted EM fixed-point equations (responsibilities by scipy.stats), and differs from the fit to the
    rounded weights."""
    w = np.abs(np.sin(LAYERS / 3.0)) * 3 + 0.1
    fit = fit_weighted(LAYERS, w, 3, restarts=10, seed=1, likelihood="continuous")
    m = fit.mixtures[0]
    dens = np.stack([p * norm.pdf(LAYERS, mu, sd) for mu, sd, p in zip(m.means, m.stds, m.weights)])
    resp = w * dens / dens.sum(0)
    nk = resp.sum(1)
    np.testing.assert_allclose(m.weights, nk / nk.sum(), atol=1e-6)
    np.testing.assert_allclose(m.means, resp @ LAYERS / nk, atol=1e-5)
    var = (resp * (LAYERS - m.means[:, None]) ** 2).sum(1) / nk + 1 / 12
    np.testing.assert_allclose(m.stds**2, var, rtol=1e-5)
    rounded = fit_weighted(LAYERS, np.round(w), 3, restarts=10, seed=1, likelihood="continuous").mixtures[0]
    assert np.abs(rounded.means - m.means).max() > 0.05
    assert fit.converged.all()


def test_hellinger_and_entropy_match_closed_forms():
    a = Mixture(np.array([3.0]), np.array([1.2]), np.array([1.0]))
    b = Mixture(np.array([5.0]), np.array([2.0]), np.array([1.0]))
    s = 1.2**2 + 2.0**2
    expected = math.sqrt(1 - math.sqrt(2 * 1.2 * 2.0 / s) * math.exp(-((3 - 5) ** 2) / (4 * s)))
    assert hellinger(a, b) == pytest.approx(expected, abs=1e-6)
    assert hellinger(a, a) == pytest.approx(0.0, abs=1e-6)
    assert a.entropy() == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 1.2**2), abs=1e-6)
    # far-apart components: entropy = Σ w_k h_k + H(w)
    far = Mixture(np.array([0.0, 100.0]), np.array([1.0, 2.0]), np.array([0.3, 0.7]))
    h = [0.5 * math.log(2 * math.pi * math.e * s**2) for s in (1.0, 2.0)]
    weight_h = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert far.entropy() == pytest.approx(0.3 * h[0] + 0.7 * h[1] + weight_h, abs=1e-5)
    assert far.weight_entropy() == pytest.approx(weight_h)


def test_score_transforms():
    s = np.array([45.5, 49.4, 47.0, 46.1])
    shift = transform_scores(s, "shift-min")
    minmax = (s - s.min()) / (s.max() - s.min())
    np.testing.assert_allclose(shift / shift.sum(), minmax / minmax.sum())  # min-max is the same distribution
    soft = transform_scores(s, "softmax", temperature=0.5)
    np.testing.assert_allclose(soft / soft.sum(), np.exp(s / 0.5) / np.exp(s / 0.5).sum())
    np.testing.assert_allclose(transform_scores(s, "raw"), s)


def test_a_flat_pass_column_points_to_the_continuous_one(tmp_path):
    """A sweep's scores.csv where every Pass@1 is 0: the default column is refused with the columns that vary named;
    the log-probability column is read as it is and softmax turns it into likelihood-ratio weights."""
    logprob = [-2.31, -2.05, -2.47, -2.20]
    path = write_csv(tmp_path / "scores.csv", "layer,synthetic,avg,gold_logprob,gold_logprob_sum",
                     [(layer, 0, 0, lp, 3 * lp) for layer, lp in enumerate(logprob)])
    with pytest.raises(ResaError, match=r"every layer's avg is 0, so it cannot tell layers apart; pick one that "
                                        r"varies with --score-column: gold_logprob, gold_logprob_sum"):
        read_scores(path)
    with pytest.raises(ResaError, match="every layer's synthetic is 0"):
        read_scores(path, "synthetic", "softmax")  # no transform makes a flat column informative
    data = read_scores(path, "gold_logprob", "softmax", temperature=1.0)
    np.testing.assert_allclose(data.values, logprob)
    np.testing.assert_allclose(data.weights / data.weights.sum(), np.exp(logprob) / np.exp(logprob).sum())
    flat = write_csv(tmp_path / "flat.csv", "layer,avg,other", [(0, 5, 1), (1, 5, 1)])
    with pytest.raises(ResaError, match="every layer's avg is 5, so it cannot tell layers apart; no other column"):
        read_scores(flat)


def test_expand_uses_largest_remainder():
    x = expand(np.array([1, 2, 3]), np.array([0.334, 0.333, 0.333]), 10)
    assert x.tolist() == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]


# ---------------------------------------------------------------- the analysis


def test_planted_trimodal_mixture_is_recovered(tmp_path):
    counts = read_counts(counts_csv(tmp_path, planted_counts(3000)))
    fit = analyze_layers(counts, None, FAST).counts
    means = np.array([c.mean for c in fit.components])
    weights = np.array([c.weight for c in fit.components])
    np.testing.assert_allclose(means, TRUE_MEANS, atol=0.1)
    np.testing.assert_allclose(weights, TRUE_WEIGHTS, atol=0.01)
    np.testing.assert_allclose([c.std for c in fit.components], TRUE_STDS, rtol=0.02)  # binned: no bin inflation
    for c, m, w in zip(fit.components, TRUE_MEANS, TRUE_WEIGHTS):
        assert c.mean_ci[0] <= m <= c.mean_ci[1] and c.weight_ci[0] <= w <= c.weight_ci[1]
        assert c.mean_ci[1] - c.mean_ci[0] < 1.0
    assert fit.sklearn_check is None  # binned likelihood: GaussianMixture has no such objective


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bic_prefers_the_true_number_of_components(tmp_path, k):
    counts = planted_counts(600, TRUE_MEANS[:k], TRUE_STDS[:k], TRUE_WEIGHTS[:k] / TRUE_WEIGHTS[:k].sum())
    fit = analyze_layers(read_counts(counts_csv(tmp_path, counts)), None, LayerConfig(restarts=20, bootstrap=0)).counts
    assert sorted(fit.bic) == [1, 2, 3, 4, 5]
    assert fit.bic_best == k


def test_point_density_bic_overfits_layer_data_and_the_binned_likelihood_does_not(tmp_path):
    """Why binned is the default: on 600 features from one Gaussian, a density at integer layers buys
    likelihood with narrow components on single layers, and BIC follows it."""
    data = read_counts(counts_csv(tmp_path, planted_counts(600, TRUE_MEANS[:1], TRUE_STDS[:1], [1.0])))
    best = {
        lik: analyze_layers(data, None, LayerConfig(likelihood=lik, restarts=20, bootstrap=0)).counts.bic_best
        for lik in ("binned", "continuous")
    }
    assert best == {"binned": 1, "continuous": 5}


def aligned_scores(counts: np.ndarray) -> np.ndarray:
    """Scores that rise and fall with the count distribution (a floor of 40 plus up to 10 points)."""
    share = counts / counts.max()
    return np.round(40 + 10 * share, 2)


def test_permutation_p_value_small_when_aligned_and_not_when_shuffled(tmp_path):
    counts = planted_counts(300)
    cfg = LayerConfig(restarts=20, resample_restarts=6, bootstrap=0, permutations=99, max_components=3)
    c = read_counts(counts_csv(tmp_path, counts))
    aligned = aligned_scores(counts)
    write_csv(tmp_path / "aligned.csv", "layer,avg", zip(LAYERS, aligned))
    shuffled = np.random.default_rng(11).permutation(aligned)
    write_csv(tmp_path / "shuffled.csv", "layer,avg", zip(LAYERS, shuffled))
    good = analyze_layers(c, read_scores(tmp_path / "aligned.csv"), cfg).alignment
    bad = analyze_layers(c, read_scores(tmp_path / "shuffled.csv"), cfg).alignment
    assert good.p_value == pytest.approx(0.01)  # no shuffle comes as close as the aligned scores
    assert good.statistic == pytest.approx(good.hellinger, abs=1e-6) and good.statistic < np.percentile(good.null, 1)
    assert bad.p_value > 0.2 and bad.statistic > good.statistic
    assert [(p.counts_component, p.scores_component) for p in good.pairs] == [(0, 0), (1, 1), (2, 2)]
    assert max(p.abs_mean_diff for p in good.pairs) < 1.0


def test_recommendation_picks_the_modes(tmp_path):
    counts = planted_counts(1000)
    analysis = analyze_layers(read_counts(counts_csv(tmp_path, counts)), None, FAST)
    rec = analysis.recommendation
    # densities at the modes: w/σ ranks 5 (0.5/1.5) > 24 (0.2/1.5) ≈ 15 (0.3/2.0); all three are modes
    assert rec.layers[0] == 5 and sorted(rec.layers) == [5, 15, 24]
    assert all(d["mode"] for d in rec.details) and "modes first" in rec.rule


# ---------------------------------------------------------------- the command


def run_select(cli, out, *args):
    return cli(
        [
            "select-layers",
            "--out",
            str(out),
            "--restarts",
            "20",
            "--resample-restarts",
            "5",
            "--bootstrap",
            "20",
            "--permutations",
            "19",
            "--max-components",
            "3",
            *args,
        ]
    )


def test_deterministic_and_row_order_free(tmp_path):
    """Same files twice, and the same rows shuffled: identical JSON and identical printed summary."""
    counts = planted_counts(200)
    scores = aligned_scores(counts) + np.random.default_rng(0).normal(0, 0.5, size=30).round(2)
    order = np.random.default_rng(1).permutation(30)
    cfg = LayerConfig(restarts=20, resample_restarts=5, bootstrap=20, permutations=19, max_components=3)
    results = []
    for name, rows in (("a", range(30)), ("b", range(30)), ("c", order)):
        (tmp_path / name).mkdir()
        cpath = counts_csv(tmp_path / name, counts, order=list(rows))
        spath = write_csv(
            tmp_path / name / "scores.csv", "layer,aime24,avg", [(LAYERS[i], 30, scores[i]) for i in rows]
        )
        analysis = analyze_layers(read_counts(cpath), read_scores(spath), cfg)
        data = json.loads(json.dumps(analysis.to_dict()))
        for key in ("counts", "scores"):
            data[key].pop("source")
        data.pop("inputs")
        results.append((data, markdown_summary(analysis).replace(str(tmp_path / name), "")))
    assert results[0] == results[1] == results[2]
    assert results[0][0]["alignment"]["permutations"] == 19 and len(results[0][0]["per_layer"]) == 30


def test_cli_writes_the_report(cli, tmp_path):
    counts = planted_counts(200)
    cpath = counts_csv(tmp_path, counts)
    spath = write_csv(tmp_path / "scores.csv", "layer,math_500", zip(LAYERS, aligned_scores(counts)))
    out = tmp_path / "run"
    code, stdout, err = run_select(cli, out, "--counts", cpath, "--scores", spath, "--top", "2")
    assert code == 0, err
    data = json.loads((out / "layers.json").read_text())
    assert data["inputs"]["scores"].endswith("[math_500]")  # the only score column
    assert len(data["recommended_layers"]["layers"]) == 2 and data["recommended_layers"]["rule"]
    assert data["recommended_layers"]["layers"] == [5, 15]  # the two highest modes of the joint mass
    assert "differential entropy" in data["method"]["entropy"] and data["alignment"]["permutations"] == 19
    assert [c["mean"] for c in data["counts"]["components"]] == sorted(c["mean"] for c in data["counts"]["components"])
    report = (out / "layer_report.html").read_text()
    assert "<script src=" not in report and "Plotly.newPlot" in report and "Recommended layers" in report
    assert "| counts | 1 |" in stdout and "permutation p-value" in stdout
    # layers named in both numberings; the score fit's likelihood columns say it is a pseudo-likelihood
    assert "Recommended layers: blocks.5 (paper: 6th), blocks.15 (paper: 16th)" in stdout
    assert "| 1 | blocks.5 | 6th | yes |" in stdout and "hook indices" in data["method"]["layers"]
    assert "| K | counts | scores (pseudo-likelihood) |" in stdout and "pseudo-likelihood" in data["method"]["bic"]
    assert [(r["layer"], r["paper_label"]) for r in data["per_layer"][:3]] == [(0, "1st"), (1, "2nd"), (2, "3rd")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["select-layers"]["recommended_layers"] == data["recommended_layers"]["layers"]
    if shutil.which("chromium") or shutil.which("google-chrome"):
        assert all((out / f"layers_{n}.png").stat().st_size > 1000 for n in ("gmm", "bic", "null"))


def test_features_json_counts_match_csv(tmp_path):
    counts = planted_counts(100)
    (tmp_path / "features.json").write_text(
        json.dumps(
            {
                "model": "x",
                "layers": [{"layer": int(i), "count": int(c), "features": []} for i, c in zip(LAYERS, counts)],
            }
        )
    )
    a, b = read_counts(tmp_path / "features.json"), read_counts(counts_csv(tmp_path, counts))
    assert np.array_equal(a.layers, b.layers) and np.array_equal(a.values, b.values)


TABLE6 = Path(__file__).parent.parent / "analysis" / "paper_table6.csv"
RESA_STILL_V1 = {  # Table 3 of the paper, row "Resa-STILL-v1 (CoT-free SAE-Tuning)"
    "aime24": "33.33", "aime25": "33.33", "amc23": "75.00", "math_500": "83.80", "gpqa_diamond": "29.41",
    "minerva": "28.79", "avg": "47.28",
}
RESA_STILL_V1_HOOK = "model.layers.12"  # shangshang-wang/Resa scripts/eval/eval_sae_tuning.sh:25 (SAE_HOOKPOINT)


def _table6_rows() -> list[dict[str, str]]:
    return list(csv.DictReader(r for r in TABLE6.read_text().splitlines() if not r.startswith("#")))


def test_paper_table6_transcription_is_consistent():
    """Every Avg. in the transcribed Table 6 is the mean of its six benchmark scores (to print precision)."""
    rows = _table6_rows()
    assert list(rows[0]) == ["paper_label", "layer", *RESA_STILL_V1, "count"]
    for r in rows:
        assert abs(sum(float(r[c]) for c in list(RESA_STILL_V1)[:6]) / 6 - float(r["avg"])) < 0.006, r
    assert sum(int(r["count"]) for r in rows) == 53 and max(int(r["count"]) for r in rows) == 5


def test_paper_layer_labels_are_hook_index_plus_one():
    """The paper's 13th layer is Resa-STILL-v1's layer (same scores on every task), which the authors hook at
    model.layers.12: the labels map to hook indices by `layer_of_paper_label`, and Table 6 covers blocks 1..26."""
    rows = _table6_rows()
    still_v1 = [r for r in rows if all(r[c] == v for c, v in RESA_STILL_V1.items())]
    assert [r["paper_label"] for r in still_v1] == ["13th"]
    assert layer_of_paper_label(still_v1[0]["paper_label"]) == int(RESA_STILL_V1_HOOK.rsplit(".", 1)[1])
    assert int(still_v1[0]["layer"]) == layer_of_paper_label("13th")
    assert [int(r["layer"]) for r in rows] == [layer_of_paper_label(r["paper_label"]) for r in rows]
    assert [int(r["layer"]) for r in rows] == list(range(1, 27))  # all but the first and last of 28 layers
    assert read_counts(TABLE6).layers.tolist() == list(range(1, 27))
    labels = [paper_label(n) for n in range(120)]
    assert labels[:4] + labels[10:13] + labels[20:23] + labels[110:113] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "111th", "112th", "113th"
    ]
    assert [layer_of_paper_label(s) for s in labels] == list(range(120))
    assert layer_title(12) == "blocks.12 (paper: 13th)"
    for bad in ("13", "13rd", "0th", "twelfth"):
        with pytest.raises(ResaError, match="not an ordinal"):
            layer_of_paper_label(bad)


@pytest.mark.parametrize(
    "counts_rows, scores_rows, extra, needle",
    [
        ([(0, 5), (1, 0), (2, 4), (3, 0)], None, [], "only 2 layer(s) with positive counts"),
        ([(0, 5), (1, -1), (2, 4), (3, 2)], None, [], "count '-1' at layer 1 is negative"),
        ([(0, 5), (1, 2.5), (2, 4), (3, 2)], None, [], "count '2.5' at layer 1 is not an integer"),
        ([(0, 5), (1, 1), (2, 4), (3, 2)], [(0, 40), (1, "nan"), (2, 41), (3, 42)], [], "avg at layer 1 is 'nan'"),
        (
            [(0, 5), (1, 1), (2, 4), (3, 2)],
            [(0, 40), (1, 41), (2, 41), (5, 42)],
            [],
            "only in scores [5], only in counts [3]",
        ),
        (
            [(0, 5), (1, 1), (2, 4), (3, 2)],
            [(0, 40), (1, 41), (2, 41), (3, 42)],
            ["--score-column", "gpqa"],
            "no column 'gpqa'",
        ),
        (
            [(0, 5), (1, 1), (2, 4), (3, 2)],
            [(0, 40), (1, 41), (2, 41), (3, 42)],
            ["--score-transform", "rank"],
            "--score-transform 'rank' is not one of",
        ),
        ([(0, 5), (0, 1), (2, 4), (3, 2)], None, [], "layer 0 appears twice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, counts_rows, scores_rows, extra, needle):
    args = ["--counts", write_csv(tmp_path / "counts.csv", "layer,count", counts_rows)]
    if scores_rows is not None:
        args += ["--scores", write_csv(tmp_path / "scores.csv", "layer,avg", scores_rows)]
    code, out, err = run_select(cli, tmp_path / "out", *args, *extra)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out" / "layers.json").exists()


def test_missing_columns_and_ambiguous_scores_are_refused(cli, tmp_path):
    good = write_csv(tmp_path / "counts.csv", "layer,count", [(0, 5), (1, 1), (2, 4), (3, 2)])
    cases = [
        (["--counts", write_csv(tmp_path / "c2.csv", "layer,n", [(0, 5)])], "missing column(s) count"),
        (["--counts", good, "--scores", write_csv(tmp_path / "s1.csv", "avg", [(40,)])], "missing column(s) layer"),
        (
            ["--counts", good, "--scores", write_csv(tmp_path / "s2.csv", "layer,aime24,gpqa", [(0, 1, 2)])],
            "several score columns (aime24, gpqa) and no 'avg'",
        ),
        (["--counts", str(tmp_path / "nope.csv")], "cannot be read"),
    ]
    (tmp_path / "features.json").write_text(json.dumps({"layers": [{"layer": 1}]}))
    cases.append((["--counts", str(tmp_path / "features.json")], "layers[0] is missing 'layer' or 'count'"))
    for args, needle in cases:
        code, _, err = run_select(cli, tmp_path / "out", *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, (args, err)
