"""mask24 (Triton, interpreter on CPU) against the core magnitude mask: bit-exact, plus invariants."""

from __future__ import annotations

import pytest
import torch
from sparse24.kernels.mask24 import mask24, mask24_ref
from tolerances import tol

from benchmarks.shapes import pytest_params

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", pytest_params())
def test_matches_reference_bit_exact(shape, dtype, device):
    assert tol("mask24", dtype) == "exact"
    w = torch.randn(shape.wshape, device=device).to(dtype)
    out, mask = mask24(w)
    ref_out, ref_mask = mask24_ref(w)
    assert mask.dtype == torch.bool and torch.equal(mask, ref_mask)
    assert torch.equal(out, ref_out)
    assert bool((mask.reshape(-1, 4).sum(-1) == 2).all())


def test_ties_later_index_wins_and_nd_input(device):
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, -2.0, 2.0, 0.0, 0.0]], device=device)
    _, mask = mask24(w)
    assert mask.tolist() == [[False, False, True, True, True, True, False, False]]
    x = torch.randint(-2, 3, (3, 5, 12), device=device).float()  # many exact ties, 3-D
    assert torch.equal(mask24(x)[1], mask24_ref(x)[1])


def test_nan_and_inf_still_keep_exactly_two(device):
    w = torch.randn(8, 16, device=device)
    w[0, 1], w[3, 6], w[5, 8:12] = float("nan"), float("inf"), float("nan")
    out, mask = mask24(w)
    assert bool((mask.reshape(-1, 4).sum(-1) == 2).all())
    assert bool(mask[0, 1]) and bool(mask[3, 6])  # non-finite values are kept (stay visible)


def test_non_contiguous_input(device):
    w = torch.randn(16, 24, device=device).t()  # [24, 16] view, not contiguous
    assert torch.equal(mask24(w)[1], mask24_ref(w)[1])


def test_bad_input_errors(device):
    with pytest.raises(ValueError, match="multiple of 4"):
        mask24(torch.randn(4, 6, device=device))
    with pytest.raises(TypeError, match="dtype"):
        mask24(torch.ones(4, 8, dtype=torch.int32, device=device))
