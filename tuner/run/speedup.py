"""Speed-up estimates with 95% confidence intervals, from repeated measurements.

Throughput is a ratio quantity, so intervals are built on the log scale and
mapped back: a speed-up of 1.10 and a slow-down of 1/1.10 are symmetric.

- :func:`paired_ratio` is for the Check phase, where incumbent and challenger
  are measured interleaved (A B A B ...): each adjacent pair shares the
  machine's state at that moment, so drift cancels and a paired t-interval
  on the per-pair log ratios is the right estimate.
- :func:`unpaired_ratio` compares measurements taken at different times (the
  incumbent now against the incumbent in its last iteration): Welch's
  interval, which does not assume equal spread.

Student's t quantiles come from a table (scipy is not a dependency); for
non-integer Welch degrees of freedom the next lower table entry is used,
which widens the interval slightly and never narrows it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

# Two-sided 95% quantiles of Student's t (0.975), by degrees of freedom.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
    29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}
# Two-sided 99% quantiles (0.995): the stricter bound a check may stop early on, having looked more than once.
_T995 = {
    1: 63.657, 2: 9.925, 3: 5.841, 4: 4.604, 5: 4.032, 6: 3.707, 7: 3.499, 8: 3.355, 9: 3.250, 10: 3.169,
    12: 3.055, 15: 2.947, 20: 2.845, 30: 2.750, 60: 2.660, 120: 2.617,
}
_TABLES = {0.95: (_T975, 1.960), 0.99: (_T995, 2.576)}


def t_quantile(df: float, confidence: float = 0.95) -> float:
    """The two-sided ``confidence`` quantile of Student's t with ``df`` degrees of freedom (0.975 for 95%, 0.995
    for 99%), with ``df`` rounded down to a table entry: conservative."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    table, normal = _TABLES[confidence]
    if df > 120:
        return normal
    return table[max(k for k in table if k <= df)]


@dataclass(frozen=True)
class RatioEstimate:
    """``ratio`` = B/A (above 1: B is faster), with its 95% interval [low, high]."""

    ratio: float
    low: float
    high: float
    n: int

    def exceeds(self, gain: float) -> bool:
        """B is faster than A by more than ``gain`` (0.02 = 2%) with 95% confidence."""
        return self.low > 1.0 + gain

    def falls_below(self, loss: float) -> bool:
        """B is slower than A by more than ``loss`` with 95% confidence."""
        return self.high < 1.0 - loss

    def to_dict(self) -> dict[str, float]:
        return {"ratio": self.ratio, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        return f"{self.ratio:.3f}x [{self.low:.3f}, {self.high:.3f}]"


def _logs(values: Sequence[float], what: str) -> list[float]:
    if any(v <= 0 or not math.isfinite(v) for v in values):
        raise ValueError(f"{what}: throughputs must be positive and finite, got {list(values)}")
    return [math.log(v) for v in values]


def paired_ratio(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> RatioEstimate:
    """Speed-up of B over A from interleaved pairs ``(a[i], b[i])``, with its ``confidence`` interval."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_ratio needs at least 2 pairs of equal length, got {len(a)} and {len(b)}")
    diffs = [lb - la for la, lb in zip(_logs(a, "A"), _logs(b, "B"))]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    half = t_quantile(n - 1, confidence) * statistics.stdev(diffs) / math.sqrt(n)
    return RatioEstimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def unpaired_ratio(before: Sequence[float], after: Sequence[float]) -> RatioEstimate:
    """Ratio after/before from two independent samples (Welch's interval on logs)."""
    if len(before) < 2 or len(after) < 2:
        raise ValueError(f"unpaired_ratio needs at least 2 values on each side, got {len(before)} and {len(after)}")
    lb, la = _logs(before, "before"), _logs(after, "after")
    vb, va = statistics.variance(lb) / len(lb), statistics.variance(la) / len(la)
    mean = statistics.fmean(la) - statistics.fmean(lb)
    se = math.sqrt(vb + va)
    if se == 0.0:
        return RatioEstimate(math.exp(mean), math.exp(mean), math.exp(mean), min(len(lb), len(la)))
    df = (vb + va) ** 2 / (vb ** 2 / (len(lb) - 1) + va ** 2 / (len(la) - 1))
    half = t_quantile(df) * se
    return RatioEstimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), min(len(lb), len(la)))
