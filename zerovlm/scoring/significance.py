"""Paired comparisons of a configuration with the origin baseline on the same examples.

- McNemar's exact test, over clusters of correlated examples (the captions of one image, a What'sUp set
  of four; each example on its own with `score.sampling_unit: example`). Per cluster k, b_k examples are
  right only with the baseline and c_k only with the configuration. Under "no difference" the two
  methods' verdicts are exchangeable within a cluster, so each lean d_k = b_k - c_k is as likely as -d_k:
  the two-sided p-value is P[|sum_k s_k |d_k|| >= |sum_k d_k|] over independent random signs s_k (an
  exact sign-flip test). Four identical answers per image thus count as one piece of evidence, not four.
  When every |d_k| <= 1 (always with one example per cluster) this is McNemar's exact test on the
  clusters that lean, b to the baseline and c to the configuration: min(1, 2 * P[X <= min(b, c)]),
  X ~ Binomial(b + c, 1/2), computed in exact integer arithmetic (equal to scipy.stats.binomtest, which
  tests/test_scoring_significance.py checks; by hand it saves the 1.6 s import of scipy.stats in every
  score process). Otherwise the null distribution is a convolution of binomials, one per distinct |d_k|,
  in float64. One test for every clustering, so a p-value never jumps between two tests when one
  cluster gains an example.
- The difference of accuracies with a paired percentile bootstrap 95% interval: examples are resampled
  with replacement and both verdicts of a resampled example move together. Given cluster ids, whole
  clusters are resampled instead (the captions of one image, a What'sUp set of four): examples of a
  cluster are correlated, and resampling them one by one would make the interval too narrow.
- Holm's step-down correction for the family of comparisons of one (dataset, VLM, task).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def discordant_counts(baseline: Sequence[bool], treatment: Sequence[bool]) -> tuple[int, int]:
    """(b, c): examples right only with the baseline, right only with the treatment (paired by position)."""
    if len(baseline) != len(treatment):
        raise ValueError(f"paired verdicts differ in length: {len(baseline)} != {len(treatment)}")
    b = sum(1 for x, y in zip(baseline, treatment) if x and not y)
    c = sum(1 for x, y in zip(baseline, treatment) if y and not x)
    return b, c


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (1.0 when the two never disagree)."""
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))  # P[X <= min(b, c)] * 2**n
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def cluster_leans(baseline: Sequence[bool], treatment: Sequence[bool], clusters: Sequence | None) -> list[int]:
    """d_k = b_k - c_k per cluster (each example its own cluster when `clusters` is None)."""
    if len(baseline) != len(treatment):
        raise ValueError(f"paired verdicts differ in length: {len(baseline)} != {len(treatment)}")
    lean = np.asarray(baseline, dtype=np.int64) - np.asarray(treatment, dtype=np.int64)  # +1 b, -1 c, 0 neither
    if clusters is None:
        return lean.tolist()
    if len(clusters) != len(lean):
        raise ValueError(f"cluster ids and paired verdicts differ in length: {len(clusters)} != {len(lean)}")
    _, cluster_of = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    return np.bincount(cluster_of, weights=lean).astype(np.int64).tolist()


def sign_flip_p(leans: Sequence[int]) -> float:
    """Two-sided exact p-value of sum(leans) when each lean's sign is a fair coin (module docstring)."""
    leans = [int(d) for d in leans if d]
    if all(abs(d) == 1 for d in leans):
        to_baseline = sum(d > 0 for d in leans)
        return mcnemar_exact_p(to_baseline, len(leans) - to_baseline)
    # sum over the m clusters of lean magnitude a: a * (2j - m), j ~ Binomial(m, 1/2)
    magnitudes = Counter(abs(d) for d in leans)
    total = sum(a * m for a, m in magnitudes.items())
    pmf = np.ones(1)  # index i: a sum of i - total
    for a, m in sorted(magnitudes.items()):
        binomial = np.zeros(2 * a * m + 1)
        binomial[:: 2 * a] = [math.comb(m, j) / 2**m for j in range(m + 1)]
        pmf = np.convolve(pmf, binomial)
    sums = np.arange(len(pmf)) - total
    return float(min(1.0, pmf[np.abs(sums) >= abs(sum(leans))].sum()))


def mcnemar_p(baseline: Sequence[bool], treatment: Sequence[bool], clusters: Sequence | None = None) -> float:
    """McNemar's exact test over clusters of paired 0/1 verdicts (module docstring)."""
    return sign_flip_p(cluster_leans(baseline, treatment, clusters))


def bootstrap_means(values: np.ndarray, samples: int, seed: int, clusters: Sequence | None = None) -> np.ndarray:
    """Means of `samples` bootstrap resamples of `values`: of single values, or with `clusters` (one id
    per value) of whole clusters drawn with replacement (the mean over the drawn clusters' values)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    if clusters is None:
        return values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    # clusters numbered by first appearance: one-example clusters draw exactly the example-wise resamples
    _, first, cluster_of = np.unique(np.asarray(clusters, dtype=str), return_index=True, return_inverse=True)
    number = np.empty(len(first), dtype=int)
    number[np.argsort(first)] = np.arange(len(first))
    cluster_of = number[cluster_of]
    count = len(first)
    sums = np.bincount(cluster_of, weights=values, minlength=count)  # per cluster
    sizes = np.bincount(cluster_of, minlength=count)
    drawn = rng.integers(0, count, size=(samples, count))  # (samples, clusters)
    return sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)


def percentile_interval(means: np.ndarray) -> list[float]:
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def paired_bootstrap_ci(
    baseline: np.ndarray, treatment: np.ndarray, samples: int, seed: int, clusters: Sequence | None = None
) -> list[float] | None:
    """Percentile bootstrap 95% interval of mean(treatment) - mean(baseline) over paired 0/1 verdicts,
    resampling examples, or whole clusters when `clusters` gives one id per example.

    The same seed and length draw the same resamples, so every configuration of one task is compared
    on the same bootstrap samples. None when disabled (samples == 0) or empty.
    """
    baseline, treatment = np.asarray(baseline, dtype=float), np.asarray(treatment, dtype=float)
    if baseline.shape != treatment.shape:
        raise ValueError(f"paired verdicts differ in shape: {baseline.shape} != {treatment.shape}")
    if samples == 0 or len(baseline) == 0:
        return None
    return percentile_interval(bootstrap_means(treatment - baseline, samples, seed, clusters))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (monotone, capped at 1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def significance_mark(p: float | None, alpha: float) -> str:
    """'***' below alpha/50, '**' below alpha/5, '*' below alpha, '' otherwise (0.001/0.01/0.05 at 0.05)."""
    if p is None:
        return ""
    for threshold, mark in ((alpha / 50, "***"), (alpha / 5, "**"), (alpha, "*")):
        if p < threshold:
            return mark
    return ""
