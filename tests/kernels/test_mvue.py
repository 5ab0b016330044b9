"""mvue_triton (Philox, seed/offset) vs sparse24.masks.mvue_24: same distribution, checked statistically."""

from __future__ import annotations

import pytest
import torch
from sparse24.kernels.mvue import mvue_ref, mvue_triton
from tolerances import MVUE_SIGMAS, tol

from benchmarks.shapes import pytest_params
from sparse24.masks import mvue_inclusion_probs

N_SAMPLES = 4000  # groups repeated N times in one launch: one interpreter call


def _samples(fn, x: torch.Tensor, n: int) -> torch.Tensor:
    z, _ = fn(x.repeat(n, 1), 1234)
    return z.reshape(n, *x.shape)  # [n, R, C]


@pytest.mark.parametrize("fn", [mvue_triton, mvue_ref], ids=["triton", "reference"])
def test_unbiased_and_keep_frequencies(fn, device):
    x = torch.randn(4, 16, device=device) * torch.tensor([1.0, 1e-3, 10.0, 0.1], device=device)[:, None]
    x[0, :4] = torch.tensor([5.0, 0.0, 0.0, 1e-6])  # a dominant entry and exact zeros
    z = _samples(fn, x, N_SAMPLES).double()
    p = mvue_inclusion_probs(x)  # [R, C] float64
    freq = (z != 0).double().mean(0)
    nz = x != 0
    se_p = (p * (1 - p) / N_SAMPLES).clamp_min(0).sqrt()  # p can round to 1 + 1e-16
    assert bool(((freq - p).abs() <= MVUE_SIGMAS * se_p + 1e-3)[nz].all())
    se_mean = (x.double() ** 2 * (1 / p - 1) / N_SAMPLES).clamp_min(0).sqrt()  # std error of the HT mean
    slack = 1e-6 * x.double().abs() + 1e-9  # float32 rounding of x/p
    assert bool(((z.mean(0) - x.double()).abs() <= MVUE_SIGMAS * se_mean + slack).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", pytest_params())
def test_two_kept_values_are_x_over_p(shape, dtype, device):
    x = torch.randn(shape.wshape, device=device).to(dtype)
    z, nxt = mvue_triton(x, 7, offset=10)
    assert z.dtype == dtype and nxt == 10 + 2 * (x.numel() // 4)
    kept = z != 0
    assert bool((kept.reshape(-1, 4).sum(-1) == 2).all())
    rtol, atol = tol("mvue_kept_values", dtype)
    expect = (x.double() / mvue_inclusion_probs(x)).to(dtype)
    torch.testing.assert_close(z[kept], expect[kept], rtol=rtol, atol=atol)


def test_reproducible_seed_and_offset(device):
    x = torch.randn(16, 32, device=device)
    a, nxt = mvue_triton(x, 99)
    assert torch.equal(a, mvue_triton(x, 99)[0])  # same seed, same offset: same sample
    assert not torch.equal(a, mvue_triton(x, 100)[0])
    assert not torch.equal(a, mvue_triton(x, 99, offset=nxt)[0])


def test_errors(device):
    with pytest.raises(ValueError, match="offset"):
        mvue_triton(torch.randn(4, 8, device=device), 1, offset=-1)
