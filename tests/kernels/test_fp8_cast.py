"""fp8_cast (per-tensor / per-row amax scaling) against sparse24.fp8.fp8_quantize: scales exact, SQNR floors."""

from __future__ import annotations

import pytest
import torch
from sparse24.kernels.fp8_cast import fp8_cast, fp8_cast_ref
from tolerances import SQNR_DB, sqnr_db

from benchmarks.shapes import pytest_params
from sparse24.fp8 import fp8_dequantize

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("fp8", FP8)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", pytest_params())
def test_matches_reference(shape, dtype, fp8, granularity, device):
    rows = shape.out_features
    spread = torch.logspace(-3, 3, rows, device=device)[:, None]  # rows of very different magnitude
    x = (torch.randn(shape.wshape, device=device) * spread).to(dtype)
    q, s = fp8_cast(x, fp8, granularity)
    rq, rs = fp8_cast_ref(x, fp8, granularity)
    assert q.dtype == fp8 and s.dtype == torch.float32 and s.shape == rs.shape
    assert torch.equal(s, rs)
    assert sqnr_db(rq.float(), q.float()) == float("inf")  # same codes (identical RNE rounding)
    assert sqnr_db(x.float(), fp8_dequantize(q, s)) >= SQNR_DB[("fp8_cast", fp8)]


@pytest.mark.parametrize("fp8", FP8)
def test_sqnr_floor_gaussian(fp8, device):
    x = torch.randn(64, 256, device=device)
    q, s = fp8_cast(x, fp8)
    assert sqnr_db(x, fp8_dequantize(q, s)) >= SQNR_DB[("fp8_cast", fp8)]


def test_rounding_across_binades_and_zeros(device):
    # values that round up into the next binade (where Triton's interpreter cast goes wrong), plus an all-zero row
    x = torch.tensor([[126.9, -125.7, 31.8, 0.0, 1e-9, 447.0, -448.0, 3.0], [0.0] * 8], device=device)
    for fp8 in FP8:
        q, s = fp8_cast(x, fp8, "row")
        rq, rs = fp8_cast_ref(x, fp8, "row")
        assert torch.equal(q.float(), rq.float()) and torch.equal(s, rs) and float(s[1]) == 1.0


def test_errors(device):
    with pytest.raises(ValueError, match="float8"):
        fp8_cast(torch.randn(4, 4, device=device), torch.float16)
    with pytest.raises(ValueError, match="2-D"):
        fp8_cast(torch.randn(2, 4, 4, device=device), granularity="row")
