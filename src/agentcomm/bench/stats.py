"""The arithmetic of the reports: percentiles, rates and ratios. Pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) of ascending values, by the nearest-rank method.

    Nearest rank never reports a value that was not measured: p99 of 100 samples is the 99th
    smallest, p99.9 of 100 samples is the largest. NaN for no samples.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within 0..1, got {fraction}.")
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latencies of one measurement, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float


def summarize(latencies_s: Sequence[float]) -> LatencySummary:
    """Percentiles of latencies given in seconds, reported in milliseconds."""
    values = sorted(latencies_s)
    if not values:
        nan = math.nan
        return LatencySummary(0, nan, nan, nan, nan, nan, nan)
    return LatencySummary(
        count=len(values),
        p50_ms=percentile(values, 0.50) * 1000,
        p90_ms=percentile(values, 0.90) * 1000,
        p99_ms=percentile(values, 0.99) * 1000,
        p999_ms=percentile(values, 0.999) * 1000,
        max_ms=values[-1] * 1000,
        mean_ms=sum(values) / len(values) * 1000,
    )


def rate(count: int, seconds: float) -> float:
    """Events per second; 0 for an empty or zero-length window."""
    if seconds <= 0 or count <= 0:
        return 0.0
    return count / seconds


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is missing or the baseline is not positive."""
    if value is None or baseline is None or not math.isfinite(baseline) or baseline <= 0:
        return None
    if not math.isfinite(value):
        return None
    return value / baseline


def rounded(value: float | None, digits: int = 3) -> float | None:
    """For JSON: finite floats rounded, NaN and infinity as None (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)
