"""soft_threshold_triton (S-STE, β fused) against the core soft threshold: bit-exact in every dtype."""

from __future__ import annotations

import pytest
import torch
from sparse24.kernels.soft_threshold import soft_threshold_ref, soft_threshold_triton
from tolerances import tol

from benchmarks.shapes import pytest_params
from sparse24.masks import sste_scale

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", pytest_params())
def test_matches_reference_bit_exact(shape, dtype, device):
    assert tol("soft_threshold", dtype) == "exact"
    w = (torch.randn(shape.wshape, device=device) * 3).to(dtype)
    beta = sste_scale(w.float())  # the real β of this weight, a float32 0-d tensor
    out = soft_threshold_triton(w, beta)
    assert out.dtype == dtype and torch.equal(out, soft_threshold_ref(w, beta))
    assert bool(((out != 0).reshape(-1, 4).sum(-1) <= 2).all())


def test_beta_none_and_float_and_3d(device):
    w = torch.randn(2, 3, 8, device=device)
    assert torch.equal(soft_threshold_triton(w), soft_threshold_ref(w))
    assert torch.equal(soft_threshold_triton(w, 0.5), soft_threshold_ref(w, 0.5))


def test_rank_tie_zeroes_both(device):
    w = torch.tensor([[3.0, -1.0, 1.0, 0.5]], device=device)  # ranks 2 and 3 tie at |a| = 1 = t
    assert soft_threshold_triton(w).tolist() == [[2.0, 0.0, 0.0, 0.0]]


def test_beta_errors(device):
    w = torch.randn(4, 8, device=device)
    with pytest.raises(ValueError, match="one value"):
        soft_threshold_triton(w, torch.ones(2, device=device))
