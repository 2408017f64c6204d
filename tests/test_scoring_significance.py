"""McNemar's exact test (on examples and over clusters), the paired bootstrap interval of a difference,
Holm's correction, the marks."""

import itertools

import numpy as np
import pytest

from zerovlm.scoring.significance import (
    bootstrap_means,
    cluster_leans,
    discordant_counts,
    holm,
    mcnemar_exact_p,
    mcnemar_p,
    paired_bootstrap_ci,
    sign_flip_p,
    significance_mark,
)


@pytest.mark.parametrize(
    "b, c, expected",
    [
        (0, 0, 1.0),  # never disagree: no evidence
        (5, 0, 2 * 1 / 2**5),  # 0.0625: five discordant pairs can never reach 0.05
        (6, 0, 2 * 1 / 2**6),  # 0.03125
        (0, 6, 2 * 1 / 2**6),  # symmetric in b and c
        (1, 4, 2 * (1 + 5) / 2**5),  # 0.375
        (10, 2, 2 * (1 + 12 + 66) / 2**12),  # 0.03857421875
        (3, 3, 1.0),  # 2 * 42/64 > 1 is capped
        (7, 8, 1.0),
    ],
)
def test_mcnemar_exact_matches_hand_computed_values(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed (it comes with scikit-learn)")
    for b in range(0, 40, 3):
        for c in range(0, 40, 5):
            if b + c:
                assert mcnemar_exact_p(b, c) == pytest.approx(stats.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact_p(900, 1000) == pytest.approx(stats.binomtest(900, 1900, 0.5).pvalue, rel=1e-6)


def test_mcnemar_over_clusters_matches_a_hand_computed_value():
    # cluster a: baseline-only twice (lean +2), b: configuration-only once (-1), c: concordant (0), d: +1
    baseline = [1, 1, 0, 1, 1, 1, 0]
    treatment = [0, 0, 1, 1, 0, 1, 0]
    clusters = ["a", "a", "b", "c", "d", "c", "c"]
    assert sorted(cluster_leans(baseline, treatment, clusters)) == [-1, 0, 1, 2]
    # sums of +-2 +-1 +-1: 4, 2, 2, 0, 0, -2, -2, -4; |sum| >= 2 in 6 of 8
    assert mcnemar_p(baseline, treatment, clusters) == pytest.approx(0.75, rel=1e-12)


def test_without_evidence_the_p_value_is_one():
    assert mcnemar_p([1, 0], [0, 1], ["a", "a"]) == 1.0  # the one cluster balances out
    assert mcnemar_p([1, 1], [0, 0], ["a", "a"]) == 1.0  # one cluster: +2 and -2 equally likely
    assert mcnemar_p([1, 1, 0], [1, 1, 0], ["a", "a", "b"]) == 1.0  # never disagree
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_p([1], [1], ["a", "b"])


def test_one_example_per_cluster_is_mcnemars_exact_test():
    baseline, treatment = [1, 1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1, 1]
    exact = mcnemar_exact_p(*discordant_counts(baseline, treatment))
    assert mcnemar_p(baseline, treatment) == exact
    assert mcnemar_p(baseline, treatment, [str(i) for i in range(8)]) == exact


@pytest.mark.parametrize("seed", range(20))
def test_the_sign_flip_distribution_matches_enumerating_every_sign(seed):
    rng = np.random.default_rng(seed)
    leans = rng.integers(-4, 5, size=rng.integers(1, 12)).tolist()
    observed = abs(sum(leans))
    signs = itertools.product((-1, 1), repeat=len(leans))
    hits = sum(abs(sum(s * abs(d) for s, d in zip(flip, leans))) >= observed for flip in signs)
    assert sign_flip_p(leans) == pytest.approx(hits / 2 ** len(leans), rel=1e-12)


def test_a_concordant_example_anywhere_leaves_the_p_value_alone():
    # 100 captions of 100 images; 4 images lean to the baseline. A second, concordant caption of an
    # unrelated image must not change the test (it did when two tests were switched on cluster sizes).
    baseline, treatment = [True] * 4 + [False] * 96, [False] * 100
    clusters = [str(i) for i in range(100)]
    alone = mcnemar_p(baseline, treatment, clusters)
    assert alone == mcnemar_p(baseline + [True], treatment + [True], clusters + ["50"]) == 0.125


def test_four_identical_answers_per_image_are_one_piece_of_evidence():
    rng = np.random.default_rng(0)
    baseline, treatment = rng.random(60) < 0.6, rng.random(60) < 0.5
    clusters = [str(i) for i in range(60)]
    once = mcnemar_p(baseline, treatment, clusters)
    four = mcnemar_p(np.repeat(baseline, 4), np.repeat(treatment, 4), np.repeat(clusters, 4))
    assert four == pytest.approx(once, rel=1e-9)
    naive = mcnemar_p(np.repeat(baseline, 4), np.repeat(treatment, 4))
    assert naive < once / 10  # what counting the copies as independent would claim


def _null_rejection_rates(sizes, seed, simulations=400, alpha=0.05):
    """Share of simulated no-difference comparisons rejected at alpha, by the test on examples and by the
    test on clusters. Per cluster one outcome (baseline only right, configuration only right, both equal)
    is drawn, and every example of the cluster has it (answers that do not vary within an image)."""
    rng = np.random.default_rng(seed)
    cluster_of = np.repeat(np.arange(len(sizes)), sizes)
    naive = clustered = 0
    for _ in range(simulations):
        outcome = rng.choice(3, size=len(sizes), p=[0.15, 0.15, 0.7])[cluster_of]
        right = rng.random(len(cluster_of)) < 0.5  # concordant: both right or both wrong
        baseline = np.where(outcome == 0, True, np.where(outcome == 1, False, right))
        treatment = np.where(outcome == 1, True, np.where(outcome == 0, False, right))
        naive += mcnemar_p(baseline, treatment) < alpha
        clustered += mcnemar_p(baseline, treatment, cluster_of.astype(str)) < alpha
    return naive / simulations, clustered / simulations


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "sizes",
    [
        np.full(200, 4),  # What'sUp sets
        np.random.default_rng(1).integers(1, 5, size=300),
    ],
)  # VSR captions
def test_the_test_over_clusters_holds_its_level_where_the_test_on_examples_does_not(sizes, seed):
    naive, clustered = _null_rejection_rates(sizes, seed)
    assert clustered <= 0.075  # nominal 0.05, an exact test (400 simulations: standard error 0.011)
    assert naive >= 0.18  # counting correlated examples as independent rejects far too often


def test_discordant_counts_pair_by_position():
    assert discordant_counts([True, True, False, False, True], [True, False, True, True, True]) == (1, 2)
    with pytest.raises(ValueError, match="differ in length"):
        discordant_counts([True], [True, False])


def test_paired_bootstrap_interval_is_narrow_when_the_difference_is_consistent():
    rng = np.random.default_rng(1)
    baseline = (rng.random(200) < 0.5).astype(float)
    treatment = baseline.copy()
    flips = np.flatnonzero(baseline == 0)[:20]
    treatment[flips] = 1.0  # 20 more right, none lost: +0.10
    low, high = paired_bootstrap_ci(baseline, treatment, samples=2000, seed=0)
    assert 0.05 < low < 0.10 < high < 0.15  # unpaired, the interval would straddle 0
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
