"""Robust statistics of timing samples: median, spread, and a distribution-free interval for the median.

Timings are skewed (a preempted round is slow, never fast), so every number is a median with its IQR and
an interval from order statistics, which assumes nothing about the distribution: for n independent rounds,
the k-th smallest and k-th largest values bracket the median with probability 1 - 2 P(B <= k - 1),
B ~ Binomial(n, 1/2) (e.g. Conover, Practical Nonparametric Statistics, 3rd ed., section 3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binom

CONFIDENCE = 0.95


def quantile(sorted_values: Sequence[float], p: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's default method)."""
    if len(sorted_values) == 0:
        raise ValueError("quantile of an empty sample")
    return float(np.quantile(np.asarray(sorted_values, dtype=float), p))


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(low, high, coverage): the order-statistic interval [x_(k), x_(n-k+1)] of the median with the largest k
    whose coverage 1 - 2 P(B <= k - 1) is at least `confidence`; `coverage` is what that interval achieves.

    Fewer than 6 rounds cannot reach 95%: the interval is then [min, max], with its lower coverage
    (1 - 2^(1-n)), so a caller can say so. ValueError on an empty sample.
    """
    values = np.sort(np.asarray(samples, dtype=float))
    n = len(values)
    if n == 0:
        raise ValueError("no samples for a confidence interval")
    ks = np.arange(1, n // 2 + 1 if n > 1 else 2)
    coverage = 1.0 - 2.0 * binom.cdf(ks - 1, n, 0.5)
    ok = ks[coverage >= confidence]
    k = int(ok.max()) if ok.size else 1
    achieved = float(max(0.0, 1.0 - 2.0 * binom.cdf(k - 1, n, 0.5)))
    return float(values[k - 1]), float(values[n - k]), achieved


def relative_spread(samples: Sequence[float]) -> float:
    """IQR / median of a sample (inf when the median is 0): the stopping rule's measure of noise."""
    values = np.asarray(samples, dtype=float)
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    return float((q3 - q1) / median) if median > 0 else float("inf")


def summarize(samples: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Median, spread (IQR and MAD), min, max, mean and the `confidence` interval of the median.

    Keys: n, median, q1, q3, iqr, mad, min, max, mean, ci_low, ci_high, ci_coverage (see `median_ci`).
    """
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    q1, median, q3 = (float(v) for v in np.quantile(values, [0.25, 0.5, 0.75]))
    low, high, coverage = median_ci(values, confidence)
    return {
        "n": int(values.size),
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "mad": float(np.median(np.abs(values - median))),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "ci_low": low,
        "ci_high": high,
        "ci_coverage": coverage,
    }
