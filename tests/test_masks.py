"""Masks against brute force, float64 formulas and statistics, on fresh random inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse24.masks import (
    magnitude_mask_24,
    mvue_24,
    mvue_inclusion_probs,
    retained_fraction,
    soft_threshold_24,
    sste_scale,
    transposable_mask_24,
    transposable_patterns,
)

PAIRS = list(itertools.combinations(range(4), 2))


def brute_magnitude(w: torch.Tensor) -> torch.Tensor:
    """For each group, the one pair (of 6) whose members outrank both others by (|a|, index)."""
    out = torch.zeros(w.numel(), dtype=torch.bool)
    flat = w.reshape(-1, 4).tolist()
    for g, a in enumerate(flat):
        key = [(abs(v), i) for i, v in enumerate(a)]
        winners = [p for p in PAIRS if all(min(key[p[0]], key[p[1]]) > key[k] for k in range(4) if k not in p)]
        assert len(winners) == 1
        for i in winners[0]:
            out[4 * g + i] = True
    return out.reshape(w.shape)


@pytest.mark.parametrize("shape", [(8, 16), (3, 5, 12), (4,), (1, 4)], ids=["2d", "3d", "1d", "one-group"])
def test_magnitude_matches_brute_force(shape):
    w = torch.randn(shape, dtype=torch.float64)
    assert torch.equal(magnitude_mask_24(w), brute_magnitude(w))


def test_magnitude_ties_later_index_wins():
    w = torch.randint(-2, 3, (64, 32)).float()  # many exact ties, zeros included
    m = magnitude_mask_24(w)
    assert torch.equal(m, brute_magnitude(w))
    assert (m.reshape(-1, 4).sum(-1) == 2).all()
    assert magnitude_mask_24(torch.ones(1, 4)).tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_magnitude_low_precision_matches_float64_of_same_values(dtype):
    w = torch.randn(16, 64).to(dtype)
    assert torch.equal(magnitude_mask_24(w), brute_magnitude(w.double()))


def test_patterns_are_all_90_doubly_balanced():
    pats = transposable_patterns().t().reshape(-1, 4, 4)
    assert len(pats) == 90 and len({tuple(p.flatten().tolist()) for p in pats}) == 90
    assert (pats.sum(1) == 2).all() and (pats.sum(2) == 2).all()
    assert pats[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def _all_transposable_tiles():
    """Independent enumeration: all 2^16 binary 4x4 tiles, keep those 2:4 along rows and columns, by descending code."""
    codes = torch.arange(2**16 - 1, -1, -1)
    bits = ((codes.unsqueeze(1) >> torch.arange(15, -1, -1)) & 1).reshape(-1, 4, 4)
    ok = (bits.sum(1) == 2).all(1) & (bits.sum(2) == 2).all(1)
    return bits[ok].double()  # [90, 4, 4]


def test_transposable_is_optimal_vs_brute_force():
    w = torch.randn(8, 12, dtype=torch.float64)
    m = transposable_mask_24(w)
    tiles = _all_transposable_tiles()
    assert len(tiles) == 90
    for r in range(0, 8, 4):
        for c in range(0, 12, 4):
            blk = w[r : r + 4, c : c + 4].abs()
            scores = (tiles * blk).sum((1, 2))
            best = tiles[int(scores.argmax())]  # first max = highest code, the documented tie rule
            assert torch.equal(m[r : r + 4, c : c + 4].double(), best)
    assert (m.reshape(-1, 4).sum(-1) == 2).all() and (m.t().reshape(-1, 4).sum(-1) == 2).all()


def test_transposable_keeps_at_most_magnitude():
    w = torch.randn(64, 64)
    t, mag = transposable_mask_24(w), magnitude_mask_24(w)
    assert retained_fraction(w, t) <= retained_fraction(w, mag) + 1e-12
    assert retained_fraction(w, t) > 0.5


@pytest.mark.parametrize("shape", [(6, 8), (8, 6)], ids=["rows-not-4", "cols-not-4"])
def test_transposable_rejects_unaligned(shape):
    with pytest.raises(ValueError, match="divisible by 4"):
        transposable_mask_24(torch.randn(shape))


def test_transposable_rejects_3d():
    with pytest.raises(ValueError, match="2-D"):
        transposable_mask_24(torch.randn(2, 4, 4))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(4, 6), "divisible by 4"),
        (torch.randint(0, 5, (4, 8)), "floating dtype"),
        (torch.ones(4, 8, dtype=torch.bool), "floating dtype"),
        (torch.tensor([[1.0, float("nan"), 0.0, 2.0]]), "NaN or Inf"),
        (torch.tensor([[1.0, float("inf"), 0.0, 2.0]]), "NaN or Inf"),
    ],
    ids=["dim", "int", "bool", "nan", "inf"],
)
def test_bad_input_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        magnitude_mask_24(bad)


def soft_threshold_ref(w: torch.Tensor) -> torch.Tensor:
    g = w.double().reshape(-1, 4)
    t = g.abs().sort(-1).values[:, 1:2]  # 2nd smallest |a|
    keep = brute_magnitude(w.double()).reshape(-1, 4)
    return (torch.sign(g) * (g.abs() - t) * keep).reshape(w.shape)


def test_soft_threshold_matches_sorted_formula():
    w = torch.randn(16, 32, dtype=torch.float64)
    torch.testing.assert_close(soft_threshold_24(w), soft_threshold_ref(w), rtol=0, atol=1e-15)
    assert ((soft_threshold_24(w).reshape(-1, 4) != 0).sum(-1) <= 2).all()


def test_soft_threshold_is_continuous_at_rank_swap():
    base = torch.randn(32, 4, dtype=torch.float64)
    a = base.abs().sort(-1).values  # a0 <= a1 <= a2 <= a3 per row
    for eps in (1e-3, 1e-6):
        mid = (a[:, 1] + a[:, 2]) / 2
        lo = torch.stack([a[:, 0], mid + eps, mid - eps, a[:, 3]], -1)  # rank 2/3 on one side
        hi = torch.stack([a[:, 0], mid - eps, mid + eps, a[:, 3]], -1)  # and swapped
        assert (soft_threshold_24(lo) - soft_threshold_24(hi)).abs().max() <= 4 * eps
    hard_jump = (magnitude_mask_24(lo) * lo - magnitude_mask_24(hi) * hi).abs().max()
    assert hard_jump > 0.01  # the hard mask jumps by ~|a| at the same swap


def test_sste_scale_is_float64_least_squares():
    w = torch.randn(48, 64)
    s = soft_threshold_24(w).double().reshape(-1, 1)
    beta = torch.linalg.lstsq(s, w.double().reshape(-1, 1)).solution.item()
    assert sste_scale(w).dtype == torch.float32
    assert abs(sste_scale(w).item() - beta) <= 1e-6 * abs(beta)


def test_mvue_is_unbiased_and_keeps_with_the_stated_probabilities():
    x = torch.randn(4, 8, dtype=torch.float64)
    x[0, :4] = torch.tensor([0.0, 0.0, 1e-3, 5.0])  # near-zero entries, a dominant one
    calls, copies = 100, 200  # 20000 draws: copies within a call, and successive calls on one generator
    n = calls * copies
    gen = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    draws = torch.cat([mvue_24(x.expand(copies, *x.shape).contiguous(), gen) for _ in range(calls)])  # [n, 4, 8]
    assert ((draws != 0).reshape(n, -1, 4).sum(-1) <= 2).all()
    # mean within 5 standard errors of x: a draw is x/p with probability p, else 0, so its standard deviation is
    # |x|·sqrt((1-p)/p) (from the stated p, not the sample: an entry kept in every draw has a sample std of 0)
    p = mvue_inclusion_probs(x)
    se = torch.where(p > 0, x.abs() * ((1 - p) / (p.clamp_min(1e-300) * n)).sqrt(), torch.zeros_like(x))
    assert ((draws.mean(0) - x).abs() <= 5 * se + 1e-9 * x.abs()).all()
    # keep frequencies vs inclusion probabilities (binomial 5-sigma band)
    freq = (draws != 0).double().mean(0)
    nz = x != 0
    assert ((freq - p).abs()[nz] <= 5 * (p * (1 - p) / n).sqrt()[nz] + 1e-3).all()
    torch.testing.assert_close(p.reshape(-1, 4).sum(-1), torch.full((8,), 2.0, dtype=torch.float64))


def test_mvue_generator_reproducible():
    x = torch.randn(8, 16)
    a = mvue_24(x, torch.Generator().manual_seed(3))
    b = mvue_24(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 9), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_property_magnitude_exact_two_and_maximal(rows, groups, seed, ties):
    g = torch.Generator().manual_seed(seed)
    shape = (rows, 4 * groups)
    w = torch.randint(-3, 4, shape, generator=g).float() if ties else torch.randn(shape, generator=g)
    m = magnitude_mask_24(w)
    assert (m.reshape(-1, 4).sum(-1) == 2).all()
    kept = (w.abs() * m).reshape(-1, 4).sum(-1)
    top2 = w.abs().reshape(-1, 4).sort(-1).values[:, 2:].sum(-1)
    assert torch.equal(kept, top2)


def test_is_exact_24_against_a_group_by_group_count():
    """``is_exact_24``: the mask keeps exactly 2 of every 4 and the weight has at most 2 non-zeros per 4, counted here
    group by group in plain Python on fresh random patterns."""
    from sparse24.masks import is_exact_24

    g = torch.Generator().manual_seed(7)
    seen = set()
    for _ in range(200):
        mask = torch.rand(3, 8, generator=g).reshape(3, 2, 4).argsort(-1).argsort(-1).lt(2).reshape(3, 8)  # 2:4
        if torch.rand(1, generator=g) < 0.3:  # a group that keeps 1 or 3
            i, j = int(torch.randint(3, (1,), generator=g)), int(torch.randint(8, (1,), generator=g))
            mask[i, j] = ~mask[i, j]
        w = torch.randn(3, 8, generator=g) * mask
        if torch.rand(1, generator=g) < 0.3:  # a weight outside the mask
            w[int(torch.randint(3, (1,), generator=g)), int(torch.randint(8, (1,), generator=g))] = 1.0
        groups = [(mask[r, c : c + 4].tolist(), w[r, c : c + 4].tolist()) for r in range(3) for c in (0, 4)]
        want = all(sum(m) == 2 for m, _ in groups) and all(sum(v != 0 for v in x) <= 2 for _, x in groups)
        assert is_exact_24(w, mask) == want
        seen.add(want)
    assert seen == {True, False}
    keep = torch.tensor([[True, False, True, False]])
    assert is_exact_24(torch.tensor([[1.0, 0.0, 2.0, 0.0]]), keep)
