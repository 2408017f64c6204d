"""Paired comparisons of a configuration with the origin baseline on the same examples.

- McNemar's exact test: of the examples on which the two disagree, b are right only with the baseline
  and c only with the configuration; under "no difference" c ~ Binomial(b + c, 1/2). The two-sided
  p-value is min(1, 2 * P[X <= min(b, c)]), computed here in exact integer arithmetic (equal to
  scipy.stats.binomtest(min(b, c), b + c).pvalue, which tests/test_scoring_significance.py checks;
  doing it by hand saves the 1.6 s import of scipy.stats in every score process).
- With clusters of correlated examples (the captions of one image, a What'sUp set of four), Obuchowski's
  (1998) cluster-adjusted McNemar statistic instead, on d_k = b_k - c_k per cluster k of K:
  X2 = (K - 1) / K * (sum d_k)^2 / sum d_k^2, chi-square with 1 degree of freedom (in the simplified
  form of Yang, Sun and Hardin 2010, doi:10.1002/bimj.201000035). Its variance comes from the spread between clusters, so four identical
  answers per image count as one piece of evidence, not four; with one-example clusters it is the
  asymptotic McNemar test times (K - 1) / K, and the exact test is used instead.
- The difference of accuracies with a paired percentile bootstrap 95% interval: examples are resampled
  with replacement and both verdicts of a resampled example move together. Given cluster ids, whole
  clusters are resampled instead (the captions of one image, a What'sUp set of four): examples of a
  cluster are correlated, and resampling them one by one would make the interval too narrow.
- Holm's step-down correction for the family of comparisons of one (dataset, VLM, task).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

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
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def clustered_mcnemar_p(baseline: Sequence[bool], treatment: Sequence[bool], clusters: Sequence) -> float:
    """Two-sided p-value of Obuchowski's cluster-adjusted McNemar test (module docstring); 1.0 when no
    cluster leans either way or there is only one cluster."""
    if not len(baseline) == len(treatment) == len(clusters):
        raise ValueError(f"paired verdicts and clusters differ in length: {len(baseline)}, {len(treatment)}, "
                         f"{len(clusters)}")
    _, cluster_of = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    lean = np.asarray(baseline, dtype=int) - np.asarray(treatment, dtype=int)   # +1: b, -1: c, 0: concordant
    d = np.bincount(cluster_of, weights=lean)                                    # b_k - c_k per cluster
    count = len(d)
    if count < 2 or not d.any():
        return 1.0
    statistic = (count - 1) / count * d.sum() ** 2 / (d ** 2).sum()
    return math.erfc(math.sqrt(statistic / 2))  # chi-square(1) upper tail


def mcnemar_p(baseline: Sequence[bool], treatment: Sequence[bool],
              clusters: Sequence | None = None) -> tuple[float, str]:
    """(p-value, test name): the exact test ("exact") when examples are independent (no clusters, or every
    cluster holds one example), else the cluster-adjusted test ("obuchowski")."""
    if clusters is None or len(set(clusters)) == len(clusters):
        return mcnemar_exact_p(*discordant_counts(baseline, treatment)), "exact"
    return clustered_mcnemar_p(baseline, treatment, clusters), "obuchowski"


def bootstrap_means(values: np.ndarray, samples: int, seed: int,
                    clusters: Sequence | None = None) -> np.ndarray:
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
    sums = np.bincount(cluster_of, weights=values, minlength=count)            # per cluster
    sizes = np.bincount(cluster_of, minlength=count)
    drawn = rng.integers(0, count, size=(samples, count))                      # (samples, clusters)
    return sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)


def percentile_interval(means: np.ndarray) -> list[float]:
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def paired_bootstrap_ci(baseline: np.ndarray, treatment: np.ndarray, samples: int,
                        seed: int, clusters: Sequence | None = None) -> list[float] | None:
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
