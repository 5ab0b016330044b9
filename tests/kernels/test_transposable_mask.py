"""transposable_mask (90 patterns, per-tile argmax) against the core exact transposable mask."""

from __future__ import annotations

import pytest
import torch
from sparse24.kernels.transposable_mask import pattern_table, transposable_mask, transposable_mask_ref

from benchmarks.shapes import pytest_params
from sparse24.masks import transposable_patterns

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", pytest_params(min_rows_multiple=4))
def test_matches_reference_bit_exact(shape, dtype, device):
    w = torch.randn(shape.wshape, device=device).to(dtype)
    out, mask = transposable_mask(w)
    ref_out, ref_mask = transposable_mask_ref(w)
    assert torch.equal(mask, ref_mask) and torch.equal(out, ref_out)
    assert bool((mask.reshape(-1, 4).sum(-1) == 2).all())
    assert bool((mask.t().reshape(-1, 4).sum(-1) == 2).all())  # transposable


def test_ties_pick_first_pattern(device):
    # integer weights: every score is an exact sum, so ties are real ties; all-equal tiles tie all 90 patterns
    w = torch.randint(-2, 3, (16, 20), device=device).float()
    w[:4, :4] = 1.0
    _, mask = transposable_mask(w)
    assert torch.equal(mask, transposable_mask_ref(w)[1])
    first = transposable_patterns(device)[:, 0].reshape(4, 4).bool()
    assert torch.equal(mask[:4, :4], first)


def test_signed_scores(device):
    w = torch.randn(8, 12, device=device)
    assert torch.equal(transposable_mask(w, use_abs=False)[1], transposable_mask_ref(w, use_abs=False)[1])


def test_nan_gives_valid_pattern_and_table(device):
    w = torch.randn(8, 8, device=device)
    w[:4, :4] = float("nan")
    _, mask = transposable_mask(w)
    assert bool((mask.reshape(-1, 4).sum(-1) == 2).all()) and bool((mask.t().reshape(-1, 4).sum(-1) == 2).all())
    pats, codes = pattern_table(torch.device(device))
    assert int((pats.sum(0) == 8).sum()) == 90 and len(set(codes[:90].tolist())) == 90


def test_rows_not_multiple_of_4_errors(device):
    with pytest.raises(ValueError, match="multiple of 4"):
        transposable_mask(torch.randn(6, 8, device=device))
