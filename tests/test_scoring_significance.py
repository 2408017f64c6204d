"""McNemar's exact test, the paired bootstrap interval of a difference, Holm's correction, the marks."""

import numpy as np
import pytest

from zerovlm.scoring.significance import (bootstrap_means, discordant_counts, holm, mcnemar_exact_p,
                                          paired_bootstrap_ci, significance_mark)


@pytest.mark.parametrize("b, c, expected", [
    (0, 0, 1.0),                      # never disagree: no evidence
    (5, 0, 2 * 1 / 2 ** 5),           # 0.0625: five discordant pairs can never reach 0.05
    (6, 0, 2 * 1 / 2 ** 6),           # 0.03125
    (0, 6, 2 * 1 / 2 ** 6),           # symmetric in b and c
    (1, 4, 2 * (1 + 5) / 2 ** 5),     # 0.375
    (10, 2, 2 * (1 + 12 + 66) / 2 ** 12),  # 0.03857421875
    (3, 3, 1.0),                      # 2 * 42/64 > 1 is capped
    (7, 8, 1.0),
])
def test_mcnemar_exact_matches_hand_computed_values(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed (it comes with scikit-learn)")
    for b in range(0, 40, 3):
        for c in range(0, 40, 5):
            if b + c:
                assert mcnemar_exact_p(b, c) == pytest.approx(stats.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact_p(900, 1000) == pytest.approx(stats.binomtest(900, 1900, 0.5).pvalue, rel=1e-6)


def test_discordant_counts_pair_by_position():
    assert discordant_counts([True, True, False, False, True], [True, False, True, True, True]) == (1, 2)
    with pytest.raises(ValueError, match="differ in length"):
        discordant_counts([True], [True, False])


def test_paired_bootstrap_interval_is_narrow_when_the_difference_is_consistent():
    rng = np.random.default_rng(1)
    baseline = (rng.random(200) < 0.5).astype(float)
    treatment = baseline.copy()
    flips = np.flatnonzero(baseline == 0)[:20]
    treatment[flips] = 1.0                                  # 20 more right, none lost: +0.10
    low, high = paired_bootstrap_ci(baseline, treatment, samples=2000, seed=0)
    assert 0.05 < low < 0.10 < high < 0.15                  # unpaired, the interval would straddle 0
    assert paired_bootstrap_ci(baseline, treatment, samples=2000, seed=0) == [low, high]  # seeded
    assert paired_bootstrap_ci(baseline, baseline, 500, 0) == [0.0, 0.0]
    assert paired_bootstrap_ci(np.zeros(10), np.ones(10), 500, 0) == [1.0, 1.0]
    assert paired_bootstrap_ci(baseline, treatment, samples=0, seed=0) is None


def test_paired_bootstrap_interval_covers_zero_for_a_noisy_tie():
    rng = np.random.default_rng(2)
    baseline = (rng.random(100) < 0.6).astype(float)
    treatment = (rng.random(100) < 0.6).astype(float)
    low, high = paired_bootstrap_ci(baseline, treatment, 1000, 0)
    assert low < treatment.mean() - baseline.mean() < high and low < 0 < high


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_significance_marks():
    assert [significance_mark(p, 0.05) for p in (0.0005, 0.005, 0.03, 0.05, None)] == ["***", "**", "*", "", ""]


def test_a_cluster_is_resampled_whole():
    values = np.array([1.0, 1.0, 1.0, 0.0])  # cluster a: three right answers; cluster b: one wrong
    means = bootstrap_means(values, samples=500, seed=0, clusters=["a", "a", "a", "b"])
    assert set(np.unique(means)) <= {0.0, 0.75, 1.0}  # (b, b), (a, b) or (b, a), (a, a)
    assert len(set(np.unique(bootstrap_means(values, samples=500, seed=0)))) > 3  # one by one: more means
    one_each = bootstrap_means(values, samples=500, seed=0, clusters=["d", "c", "b", "a"])
    assert np.array_equal(one_each, bootstrap_means(values, samples=500, seed=0))  # same draws as example-wise


def test_correlated_clusters_widen_the_interval():
    """20 images with 4 captions each, all answered alike: 20 independent verdicts, not 80."""
    rng = np.random.default_rng(1)
    per_image = rng.random(20) < 0.6
    baseline = np.zeros(80)
    treatment = np.repeat(per_image, 4).astype(float)
    images = np.repeat([f"image{i}" for i in range(20)], 4)
    low, high = paired_bootstrap_ci(baseline, treatment, samples=2000, seed=0)
    cluster_low, cluster_high = paired_bootstrap_ci(baseline, treatment, samples=2000, seed=0, clusters=images)
    assert cluster_high - cluster_low > 1.6 * (high - low)  # about 2 = sqrt(80 / 20)
