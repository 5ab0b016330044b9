"""masked_decay_ (in place g += λ(1−M)⊙W) against sparse24.api.apply_masked_decay's expression."""

from __future__ import annotations

import pytest
import torch
from sparse24.kernels.masked_decay import masked_decay_ref_, masked_decay_triton_
from tolerances import tol

from benchmarks.shapes import pytest_params
from sparse24.masks import magnitude_mask_24

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", pytest_params())
def test_matches_reference(shape, dtype, device):
    w = torch.randn(shape.wshape, device=device).to(dtype)
    g = torch.randn(shape.wshape, device=device).to(dtype)
    mask = magnitude_mask_24(w)
    lam = 2e-2
    got = g.clone()
    ptr, version = got.data_ptr(), got._version
    out = masked_decay_triton_(got, w, mask, lam)
    assert out is got and got.data_ptr() == ptr and got._version > version  # in place
    ref = masked_decay_ref_(g.clone(), w, mask, lam)
    rtol, atol = tol("masked_decay", dtype)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    assert torch.equal(got[mask], g[mask])  # kept weights get no decay, bit for bit


def test_uint8_mask_and_zero_lambda(device):
    w, g = torch.randn(4, 7, device=device), torch.randn(4, 7, device=device)
    m = torch.rand(4, 7, device=device) > 0.5
    a = masked_decay_triton_(g.clone(), w, m.to(torch.uint8), 0.1)
    torch.testing.assert_close(a, g + 0.1 * w * ~m)
    assert torch.equal(masked_decay_triton_(g.clone(), w, m, 0.0), g)


def test_shape_mismatch_errors(device):
    with pytest.raises(ValueError, match="match g"):
        masked_decay_triton_(torch.zeros(4, 8, device=device), torch.zeros(4, 4, device=device),
                      torch.zeros(4, 8, dtype=torch.bool, device=device), 0.1)
