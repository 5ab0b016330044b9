"""Statistics over seeds (train/seeds.py) against float64 formulas and a coverage simulation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sparse24.train.seeds import paired_gap, spread, t_quantile


def test_spread_matches_numpy_float64():
    vals = [random.gauss(3.0, 0.5) for _ in range(random.randint(2, 9))]
    s = spread(vals)
    a = np.asarray(vals, dtype=np.float64)
    assert s.mean == pytest.approx(a.mean(), rel=1e-12)
    assert s.std == pytest.approx(a.std(ddof=1), rel=1e-12)
    assert s.ci == pytest.approx(t_quantile(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)), rel=1e-12)
    assert s.low < s.mean < s.high
    one = spread([1.5])
    assert (one.std, one.ci, one.low) == (None, None, None)
    with pytest.raises(ValueError, match="no values"):
        spread([])


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    # 3 seeds (df = 2) as in the benchmark: coverage of the t interval, not of the normal one (which is ~0.80 here)
    rng = np.random.default_rng(random.randrange(2**31))
    trials, mu = 4000, rng.normal()
    hits = sum(s.low <= mu <= s.high for s in (spread(list(rng.normal(mu, 2.0, 3))) for _ in range(trials)))
    # binomial(4000, 0.95): sd 0.0034, so ±0.015 is > 4 sd
    assert abs(hits / trials - 0.95) < 0.015


def test_t_quantile_table_against_the_t_cdf():
    # P(|T| <= q) = 0.95 for Student t with df degrees of freedom, by numerical integration of its density in float64
    for df in (1, 2, 3, 5, 10, 30):
        q = t_quantile(df)
        x = np.linspace(0.0, q, 200_001)
        dens = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + x**2 / df) ** (
            -(df + 1) / 2)
        assert 2 * np.trapezoid(dens, x) == pytest.approx(0.95, abs=2e-4)
    assert t_quantile(100) == 1.96
    with pytest.raises(ValueError, match="at least 2"):
        t_quantile(0)


def test_paired_gap_uses_common_seeds_only():
    a = {s: random.random() + 1 for s in range(5)}
    b = {s: random.random() + 1 for s in range(2, 7)}
    g = paired_gap(a, b)
    diffs = [a[s] - b[s] for s in (2, 3, 4)]
    assert g.n == 3 and g.mean == pytest.approx(sum(diffs) / 3, rel=1e-12)
    r = paired_gap(a, b, relative=True)
    assert r.mean == pytest.approx(sum((a[s] - b[s]) / b[s] for s in (2, 3, 4)) / 3, rel=1e-12)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_gap({0: 1.0}, {1: 1.0})
