"""The GPU backends' calling code on a CPU, through ContractOps (the exact argument contracts of torch's sparse and
FP8 kernels, products by the dense reference): layouts, dtypes, padding, bias, alpha, autocast, MVUE ∇W, FP8."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sparse24.kernels.contract import ContractError, ContractOps
from tolerances import MATMUL_ERR_FACTOR

from sparse24.config import MagnitudeConfig, SRSTEConfig, SSTEConfig
from sparse24.fp8 import fp8_quantize
from sparse24.linear import SparseLinear
from sparse24.masks import transposable_mask_24

BF16 = torch.bfloat16


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.detach()
    return float((a.detach().double() - ref).norm() / ref.norm())


def _layer(name: str, cfg, out=64, inp=64, dtype=BF16, bias=True) -> SparseLinear:
    lin = torch.nn.Linear(inp, out, bias=bias, dtype=dtype)
    return SparseLinear.from_dense(lin, cfg, backend=f"{name}_contract")


def _fresh_ops(layer: SparseLinear) -> ContractOps:
    be = layer.plan(BF16).backend
    be.ops = ContractOps()  # a clean call log
    return be.ops


# ---- the contract itself ------------------------------------------------------------------------------------------
def test_contract_refuses_what_cusparselt_would_misread():
    ops = ContractOps()
    w = torch.randn(32, 64, dtype=BF16)
    w = w * transposable_mask_24(w.float())
    p = ops.cslt_compress(w)
    x = torch.randn(16, 64, dtype=BF16)  # [T, in]
    ref = ops.cslt_sparse_mm(p, x.t())  # the column-major B (a transposed contiguous matrix) is fine
    torch.testing.assert_close(ref, (w.double() @ x.double().t()).to(BF16))
    h = torch.randn(16, 5, 64, dtype=BF16)
    bad = {
        "sliced rows (stride 320)": h[:, -1, :].t(),
        "stride-0 expand": torch.ones((), dtype=BF16).expand(16, 64).t(),
        "fp32 activations": x.float().t(),
        "T not a multiple of 8": x[:12].t(),
    }
    for why, b in bad.items():
        with pytest.raises(ContractError):
            ops.cslt_sparse_mm(p, b)
            pytest.fail(why)
    with pytest.raises(ContractError, match="bias"):
        ops.cslt_sparse_mm(p, x.t(), torch.zeros(32))  # fp32 bias read as bf16
    with pytest.raises(ContractError, match="out_dtype"):
        ops.cslt_sparse_mm(p, x.t(), out_dtype=torch.float32)
    with pytest.raises(ContractError, match="not 2:4"):
        ops.cslt_compress(torch.randn(32, 64, dtype=BF16))
    with pytest.raises(ContractError, match="aligned"):
        ops.cslt_sparse_mm(p, torch.randn(16 * 64 + 1, dtype=BF16)[1:].view(16, 64).t())
    with pytest.raises(ContractError, match="column-major"):
        ops.scaled_mm(torch.zeros(16, 32, dtype=torch.float8_e4m3fn), torch.zeros(32, 16, dtype=torch.float8_e4m3fn),
                      torch.ones(()), torch.ones(()))


# ---- SparseLinear on the real backends' code ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cusparselt", "cutlass"])
def test_sparse_backend_matches_dense_on_awkward_inputs(name):
    cfg = SRSTEConfig(transposable=True)
    a = _layer(name, cfg)
    b = SparseLinear.from_dense(torch.nn.Linear(64, 64, dtype=BF16), cfg, backend="dense")
    b.load_state_dict(a.state_dict())
    ops = _fresh_ops(a)
    h = torch.randn(3, 5, 64, dtype=BF16)
    for x in (h[:, -1, :], h, h[:, :, :].transpose(0, 1), torch.randn(13, 64, dtype=BF16)):  # sliced, 3-D, ragged T
        xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
        ya, yb = a(xa), b(xb)
        ref = xb.detach().double() @ b.sparse_weight().double().t() + b.bias.double()
        assert _rel(ya, ref) <= MATMUL_ERR_FACTOR * _rel(yb, ref) + 1e-6
        ya.sum().backward()  # a stride-0 ∇Y: materialised before the kernel
        yb.sum().backward()
        gref = torch.ones(yb.shape, dtype=torch.float64) @ b.sparse_weight().double()
        assert _rel(xa.grad, gref) <= MATMUL_ERR_FACTOR * _rel(xb.grad, gref) + 1e-6
    torch.testing.assert_close(a.weight.grad.float(), b.weight.grad.float(), rtol=2e-2, atol=2e-2)
    mm = "cslt_sparse_mm" if name == "cusparselt" else "semi_structured_mm"
    assert ops.calls.count(mm) == 8  # forward and a sparse ∇X (transposable mask) for each of the 4 inputs


def test_pack_once_per_step_and_sparse_dx_only_for_transposable():
    a = _layer("cusparselt", SRSTEConfig(transposable=True))
    ops = _fresh_ops(a)
    for _ in range(3):
        a(torch.randn(8, 64, dtype=BF16)).sum().backward()
    assert ops.calls.count("cslt_compress") == 2  # W̃ and W̃ᵀ once, reused by 3 micro-batches
    with torch.no_grad():
        a.weight.add_(1e-3)  # what an optimizer step does
    a(torch.randn(8, 64, dtype=BF16))
    assert ops.calls.count("cslt_compress") == 4
    m = _layer("cusparselt", MagnitudeConfig())  # row-wise 2:4 only: ∇X runs dense
    ops = _fresh_ops(m)
    m(torch.randn(8, 64, dtype=BF16)).sum().backward()
    assert ops.calls == ["cslt_compress", "cslt_sparse_mm"]


def test_mvue_weight_gradient_runs_sparse_and_equals_the_dense_product_of_the_same_sample():
    cfg = SSTEConfig(mvue=True)
    a = _layer("cusparselt", cfg)
    b = SparseLinear.from_dense(torch.nn.Linear(64, 64, dtype=BF16), cfg, backend="dense")
    b.load_state_dict(a.state_dict())
    ops = _fresh_ops(a)
    x, g = torch.randn(2, 10, 64, dtype=BF16), torch.randn(2, 10, 64, dtype=BF16)
    a(x).backward(g)
    b(x).backward(g)  # same seed and offset: the same MVUE sample of ∇Yᵀ
    assert ops.calls.count("cslt_compress") == 2  # W̃ (S-STE is not transposable) and MVUE(∇Yᵀ)
    assert ops.calls.count("cslt_sparse_mm") == 2  # forward and ∇W
    assert _rel(a.weight.grad, b.weight.grad.double()) < 2e-2


def test_inputs_refused_or_made_valid_at_the_boundary():
    a = _layer("cusparselt", SRSTEConfig())
    with pytest.raises(TypeError, match=r"x\.to\(torch\.bfloat16\)"):
        a(torch.randn(8, 64))  # fp32 activations into a bf16 layer: refused, as nn.Linear does
    with pytest.raises(ValueError, match="in_features"):
        a(torch.randn(8, 32, dtype=BF16))
    a.bias.data = a.bias.data.float()  # a bias in another dtype is cast once, never read as bf16
    y = a(torch.randn(8, 64, dtype=BF16))
    assert y.dtype == BF16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_master_weights_under_autocast_run_the_16bit_sparse_kernel(dtype):
    a = SparseLinear.from_dense(torch.nn.Linear(64, 64), SRSTEConfig(), backend="cusparselt_contract")
    with pytest.raises(RuntimeError, match="cannot run this layer"):
        a(torch.randn(8, 64))  # no fp32 sparse kernel: refused, never silently dense
    ops = _fresh_ops(a) if dtype == BF16 else a.plan(dtype).backend.ops
    ops.calls.clear()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x = torch.randn(4, 8, 64)
    with torch.autocast("cpu", dtype=dtype):
        y = a(x)
        loss = y.float().square().mean()
    scaler.scale(loss).backward()
    assert y.dtype == dtype and "cslt_sparse_mm" in ops.calls
    assert a.weight.grad.dtype == torch.float32
    w = a.sparse_weight().double()
    yd = x.double() @ w.t() + a.bias.double()
    gref = (2 * yd / yd.numel()).reshape(-1, 64).t() @ x.double().reshape(-1, 64) * 2.0**8
    assert _rel(a.weight.grad, gref) < 3e-2


def test_autocast_on_the_dense_backend_trains_mvue_and_decay():  # the review's crash at ste.py:90/97
    a = SparseLinear.from_dense(torch.nn.Linear(32, 16), SRSTEConfig(mvue=True, decay_placement="autograd"))
    x = torch.randn(6, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=BF16):
        y = a(x)
    y.float().sum().backward()
    assert y.dtype == BF16 and a.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


# ---- FP8 ------------------------------------------------------------------------------------------------------------
def test_fp8_alpha_convention_matches_scaled_mm_dense_fp8():
    a = _layer("cusparselt_fp8", SSTEConfig(fp8=True), bias=False)
    assert a.plan(BF16).backend.native_fp8 and not a.plan(BF16).fp8_simulated
    x = torch.randn(20, 64, dtype=BF16)
    y = a(x)
    qw, sw = fp8_quantize(a.sparse_weight().to(BF16), torch.float8_e4m3fn)  # q = w · s
    qx, sx = fp8_quantize(F.pad(x, (0, 0, 0, 12)), torch.float8_e4m3fn)
    ref = ContractOps().scaled_mm(qx, qw.t(), (1 / sx).float(), (1 / sw).float(), out_dtype=BF16)[:20]
    torch.testing.assert_close(y, ref, rtol=1.6e-2, atol=1e-3)  # same FP8 operands, dequantised the same way
    exact = x.double() @ a.sparse_weight().double().t()
    assert 10 * torch.log10(exact.pow(2).mean() / (y.double() - exact).pow(2).mean()) > 20  # e4m3: ~25-30 dB
