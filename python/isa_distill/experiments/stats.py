"""Summary statistics for paired comparisons across seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (the evaluation protocol's convention)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std())


def paired_difference(
    values: Sequence[float], reference: Sequence[float], *, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of d_s = values_s - reference_s and its two-sided Student-t confidence interval.

    With n pairs, the half-width is t_{(1 + confidence) / 2, n - 1} * sd(d) / sqrt(n) (sample
    sd). One pair gives NaN bounds: no interval can be estimated from a single seed.
    """
    if len(values) != len(reference) or not values:
        raise ValueError(
            f"paired_difference needs two equally long non-empty sequences, got {len(values)} "
            f"and {len(reference)}"
        )
    diff = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(diff) - 1) * diff.std(ddof=1)
                 / math.sqrt(len(diff)))
    return mean, mean - half, mean + half
