"""Cross-seed stability: the one-to-one decoder matching (planted permuted/noised copies, the optimal assignment
where nearest neighbours collide, the threshold), the groups of a layer, and select-layers' seed variation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resa_interp.errors import ResaError
from resa_interp.features.stability import check_min_seeds, default_min_seeds, layer_stability, match_latents
from resa_interp.layers import LayerConfig, analyze_layers, markdown_summary, read_counts

FAST = LayerConfig(restarts=5, resample_restarts=4, bootstrap=30, permutations=0, max_components=3)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_matching_recovers_a_planted_permutation_and_leaves_weak_pairs_unmatched():
    """B holds noised copies of A's rows 0..9 at random places (cosine about 0.95) and half-copies of rows 10, 11
    (cosine about 0.5): the matching finds the places of 0..9, with their true cosines, and leaves 10, 11 out."""
    gen = torch.Generator().manual_seed(0)
    a = _unit(torch.randn(40, 64, generator=gen))
    b = _unit(torch.randn(300, 64, generator=gen))
    place = torch.randperm(300, generator=gen)[:12].tolist()
    for i in range(10):
        b[place[i]] = _unit(a[i] + 0.3 * _unit(torch.randn(64, generator=gen)))
    for i in (10, 11):
        b[place[i]] = _unit(a[i] + 1.7 * _unit(torch.randn(64, generator=gen)))
    rows = list(range(12))
    found = match_latents(a * 3.0, rows, b, threshold=0.7)  # decoder norms do not matter
    assert [(i, j) for i, j, _ in found] == [(i, place[i]) for i in range(10)]
    truth = torch.nn.functional.cosine_similarity(a[:10].double(), b[place[:10]].double(), dim=-1)
    np.testing.assert_allclose([c for _, _, c in found], truth.numpy(), atol=1e-12)
    assert all(0.9 < c for _, _, c in found)
    weak = torch.nn.functional.cosine_similarity(a[10:12], b[place[10:12]], dim=-1)
    assert (weak < 0.7).all() and (weak > 0.3).all()  # planted, but below the threshold
    assert match_latents(a, [], b, 0.7) == []


def test_matching_is_one_to_one_and_optimal_where_nearest_neighbours_collide():
    """Both rows of A are nearest to b0; nearest-neighbour or greedy matching gives b0 twice or leaves a1 with
    cosine 0; the optimal one-to-one assignment pairs a0-b1 (0.69) and a1-b0 (0.71)."""
    b = torch.eye(3)[:2]  # b0, b1; the third axis only makes A's rows unit vectors
    a = torch.tensor([[0.72, 0.69, (1 - 0.72**2 - 0.69**2) ** 0.5], [0.71, 0.0, (1 - 0.71**2) ** 0.5]])
    assert (a @ b.T).argmax(1).tolist() == [0, 0]
    found = match_latents(a, [0, 1], b, threshold=0.65)
    assert [(i, j) for i, j, _ in found] == [(0, 1), (1, 0)]
    np.testing.assert_allclose([c for _, _, c in found], [0.69, 0.71], atol=1e-7)


def test_layer_groups_need_mutual_reasoning_matches_in_enough_seeds():
    gen = torch.Generator().manual_seed(1)
    base = _unit(torch.randn(20, 32, generator=gen))
    perm = torch.randperm(20, generator=gen)
    decoders = {0: base, 5: base[perm], 9: _unit(torch.randn(20, 32, generator=gen))}
    inverse = perm.argsort().tolist()  # seed 5's latent inverse[i] is seed 0's latent i
    features = {0: [2, 7], 5: [inverse[2]], 9: [4]}
    st = layer_stability(3, decoders, features, threshold=0.7, min_seeds=2)
    assert st.counts == {0: 2, 5: 1, 9: 1} and st.mean == pytest.approx(4 / 3)
    assert st.std == pytest.approx(float(np.std([2, 1, 1], ddof=1)))
    assert [(g.ids, g.stable) for g in st.groups] == [
        ({0: [2], 5: [inverse[2]], 9: []}, True),
        ({0: [7], 5: [], 9: []}, False),  # its twin in seed 5 exists but is no reasoning feature there
        ({0: [], 5: [], 9: [4]}, False),
    ]
    twin = [m for m in st.matches if (m.seed_a, m.feature_a, m.seed_b) == (0, 7, 5)]
    assert twin[0].feature_b == inverse[7] and twin[0].cosine == pytest.approx(1.0) and not twin[0].reasoning_b
    assert layer_stability(3, decoders, features, 0.7, min_seeds=3).stable_count == 0


def test_min_seeds_default_and_bad_values():
    assert [default_min_seeds(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert check_min_seeds(None, 3) == 2 and check_min_seeds(3, 3) == 3
    for m in (0, 4):
        with pytest.raises(ResaError, match=f"--min-seeds {m}: the run has 3 seed"):
            check_min_seeds(m, 3)


# ---------------------------------------------------------------- select-layers with seeds

LAYERS = np.arange(20)


def _profile(means, n=150):
    from scipy.stats import norm

    mass = sum(norm.cdf(LAYERS + 0.5, m, 1.5) - norm.cdf(LAYERS - 0.5, m, 1.5) for m in means)
    return np.round(n * mass / mass.sum()).astype(int)


def _seed_csv(path, seeds: list[np.ndarray]) -> str:
    header = "layer,count," + ",".join(f"count_seed_{s}" for s in range(len(seeds)))
    rows = [",".join(map(str, [layer, seeds[0][i], *(s[i] for s in seeds)])) for i, layer in enumerate(LAYERS)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_identical_seeds_add_no_seed_variance_and_different_seeds_widen_the_intervals(tmp_path):
    base = _profile([4, 10, 16])
    same = analyze_layers(read_counts(_seed_csv(tmp_path / "same.csv", [base, base, base])), None, FAST).counts
    assert same.data.seed_values.shape == (3, 20)
    for row in same.seed_variance:
        for v in row.values():
            assert v["seed"] == 0 and v["seed_share"] == 0 and v["features"] > 0

    shifted = [base, _profile([6, 12, 18]), _profile([2, 8, 14])]
    varied = analyze_layers(read_counts(_seed_csv(tmp_path / "varied.csv", shifted)), None, FAST).counts
    single = analyze_layers(read_counts(_seed_csv(tmp_path / "one.csv", [base])), None, FAST).counts
    assert single.data.seed_values is None and single.seed_variance is None
    for c_varied, c_single, row in zip(varied.components, single.components, varied.seed_variance):
        width = lambda ci: ci[1] - ci[0]  # noqa: E731
        assert width(c_varied.mean_ci) > 2 * width(c_single.mean_ci)
        assert c_varied.mean_ci[0] < c_single.mean - 1.5 and c_varied.mean_ci[1] > c_single.mean + 1.5
        # means moved by 2 layers between seeds: variance over seeds = 8/3, far above the features' share
        assert row["mean"]["seed"] == pytest.approx(8 / 3, rel=0.1) and row["mean"]["seed_share"] > 0.8
    report = markdown_summary(analyze_layers(read_counts(tmp_path / "varied.csv"), None, FAST))
    assert "## Uncertainty from SAE training (3 seeds" in report


def test_count_must_be_the_first_seeds_count(tmp_path):
    """`count` is the first seed's count (what one-seed readers fit); a file where it is not is refused."""
    a, b = _profile([4, 10, 16]), _profile([5, 11, 17])
    path = tmp_path / "bad.csv"
    path.write_text("layer,count,count_seed_0,count_seed_1\n"
                    + "".join(f"{layer},{b[layer]},{a[layer]},{b[layer]}\n" for layer in LAYERS))
    with pytest.raises(ResaError, match="column count differs from count_seed_0"):
        read_counts(path)


def test_the_seed_table_of_a_one_seed_run_says_what_it_needs():
    from resa_interp.features import format_seed_table

    assert "needs a multi-seed run" in format_seed_table([]) and "--n-seeds 3" in format_seed_table([])
