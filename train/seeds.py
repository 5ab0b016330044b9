"""Statistics over seeds: mean ± standard deviation, and a 95 % confidence interval of a mean (Student t).

Runs that differ only in the recipe share their seed's initialisation and batches, so a gap between two recipes is
measured per seed (a paired difference) and its interval comes from the spread of those differences: tighter than
comparing two independent means when the seed moves both runs the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Spread", "spread", "t_quantile", "paired_gap"]

# two-sided 95 % quantiles of Student's t, t_{0.975, df} for df = 1..30 (standard table values)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """t_{0.975, df}; the normal 1.96 beyond df = 30 (t is within 2 % of it there)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df >= 1), got df={df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n − 1) and the half-width of the 95 % interval of the mean over ``n``
    values; ``std`` and ``ci`` are None for a single value."""

    mean: float
    std: float | None
    ci: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.ci is None else self.mean - self.ci

    @property
    def high(self) -> float | None:
        return None if self.ci is None else self.mean + self.ci


def spread(values: list[float]) -> Spread:
    """:class:`Spread` of ``values`` (at least one)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values: nothing finished for this group")
    mean = sum(values) / n
    if n == 1:
        return Spread(mean, None, None, 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Spread(mean, std, t_quantile(n - 1) * std / math.sqrt(n), n)


def paired_gap(a: dict[int, float], b: dict[int, float], relative: bool = False) -> Spread:
    """``a − b`` per seed present in both (``(a − b) / b`` with ``relative``), summarised by :func:`spread`."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} vs {sorted(b)}")
    return spread([(a[s] - b[s]) / b[s] if relative else a[s] - b[s] for s in seeds])
