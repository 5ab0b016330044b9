"""SparseLinear and the sparse autograd Functions against nn.Linear, float64 formulas and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse24 import MagnitudeConfig, SparseLinear, SRSTEConfig, SSTEConfig, apply_masked_decay
from sparse24.backends import DenseBackend, select_backend
from sparse24.masks import magnitude_mask_24, mvue_inclusion_probs, soft_threshold_24, sste_scale
from sparse24.ste import MaskSTE, SoftThresholdSTE, SparseMatmul, mvue_token_grad


def test_sparse_matmul_gradcheck_float64():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(6, 8, dtype=torch.float64) * magnitude_mask_24(torch.randn(6, 8))).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    be = DenseBackend()
    fn = lambda x, w, b: SparseMatmul.apply(x, w, b, be, w, None, False, False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("decay", [0.0, 0.3])
def test_mask_ste_backward_is_identity_plus_masked_decay(decay):
    w = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    m = magnitude_mask_24(w.detach())
    g = torch.randn(4, 8, dtype=torch.float64)
    out = MaskSTE.apply(w, m, decay)
    assert torch.equal(out, w.detach() * m)
    out.backward(g)
    torch.testing.assert_close(w.grad, g + decay * (1 - m.double()) * w.detach())


def test_soft_threshold_ste_forward_beta_s_backward_identity():
    w = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    beta = sste_scale(w.detach())
    out = SoftThresholdSTE.apply(w, beta)
    torch.testing.assert_close(out, soft_threshold_24(w.detach()) * beta.double())
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(w.grad, g)


def test_all_ones_mask_equals_nn_linear_exactly():
    lin = nn.Linear(16, 12)
    sl = SparseLinear.from_dense(nn.Linear(16, 12), MagnitudeConfig())
    with torch.no_grad():
        sl.weight.copy_(lin.weight)
        sl.bias.copy_(lin.bias)
    sl.mask.fill_(True)
    x = torch.randn(2, 7, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = sl(x), lin(x2)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(x.grad, x2.grad)
    torch.testing.assert_close(sl.weight.grad, lin.weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sl.bias.grad, lin.bias.grad, rtol=1e-6, atol=1e-6)


def test_forward_equals_masked_linear_and_stays_24():
    lin = nn.Linear(32, 8, bias=False)
    sl = SparseLinear.from_dense(lin, SRSTEConfig(transposable=True))
    x = torch.randn(5, 32)
    torch.testing.assert_close(sl(x), F.linear(x, lin.weight * sl.mask), rtol=0, atol=0)
    assert (sl.sparse_weight().reshape(-1, 4) != 0).sum(-1).max() <= 2
    assert (sl.mask.t().reshape(-1, 4).sum(-1) == 2).all()  # transposable


def test_sste_beta_is_fixed_at_conversion():
    sl = SparseLinear.from_dense(nn.Linear(16, 8), SSTEConfig())
    beta0 = sl.scale.clone()
    assert torch.equal(beta0, sste_scale(sl.weight.detach()))
    with torch.no_grad():
        sl.weight.mul_(3.0)
    sl.refresh_mask()
    assert torch.equal(sl.scale, beta0)
    assert "scale" in sl.state_dict()


def test_dense_finetune_is_exact_nn_linear():
    lin = nn.Linear(16, 8)
    sl = SparseLinear.from_dense(lin, SRSTEConfig())
    ref = nn.Linear(16, 8)
    ref.load_state_dict(lin.state_dict())
    sl.dense_finetune(True)
    x = torch.randn(3, 16)
    assert torch.equal(sl(x), ref(x))
    assert sl.weight is lin.weight  # same Parameter: the optimizer keeps working


def test_decay_placements():
    torch.manual_seed(0)
    lam, lr = 0.1, 0.5
    base = nn.Linear(8, 4)
    for placement in ("autograd", "grad", "weight"):
        lin = nn.Linear(8, 4)
        lin.load_state_dict(base.state_dict())
        sl = SparseLinear.from_dense(lin, SRSTEConfig(decay=lam, decay_placement=placement, transposable=True))
        w0, m = sl.weight.detach().clone(), sl.mask.clone()
        x = torch.randn(6, 8)
        sl(x).sum().backward()
        plain = torch.ones(6, 4).t() @ x  # ∂(sum Y)/∂W̃
        decay = lam * (~m) * w0
        apply_masked_decay(sl)
        expect = plain + decay if placement in ("autograd", "grad") else plain
        torch.testing.assert_close(sl.weight.grad, expect)
        if placement == "weight":
            apply_masked_decay(sl, lr=lr)
            torch.testing.assert_close(sl.weight.detach(), w0 - lr * decay)


def test_mvue_weight_gradient_is_unbiased():
    gy = torch.randn(6, 3, dtype=torch.float64)  # T=6: padded to 8 inside
    gen = torch.Generator().manual_seed(1)
    n = 20000
    draws = torch.stack([mvue_token_grad(gy, gen) for _ in range(n)])  # [n, 3, 6]
    se = draws.std(0) / n**0.5
    assert ((draws.mean(0) - gy.t()).abs() <= 5 * se + 1e-5 * gy.t().abs()).all()  # eps-sized pads: p = 1 - O(eps/|x|)
    p = mvue_inclusion_probs(torch.nn.functional.pad(gy.t(), (0, 2)))[:, :6]
    assert ((draws != 0).double().mean(0) - p).abs().max() < 0.02


def test_sparse_linear_mvue_and_fp8_train_paths_run_and_match_shapes():
    for cfg in (SSTEConfig(mvue=True), SSTEConfig(mvue=True, fp8=True), SRSTEConfig(mvue=True)):
        sl = SparseLinear.from_dense(nn.Linear(16, 8), cfg)
        x = torch.randn(2, 5, 16, requires_grad=True)
        y = sl(x)
        y.square().mean().backward()
        assert y.shape == (2, 5, 8) and sl.weight.grad.shape == (8, 16) and x.grad.shape == x.shape
        assert torch.isfinite(sl.weight.grad).all()


def test_fp8_forward_close_to_exact():
    sl = SparseLinear.from_dense(nn.Linear(64, 32), SSTEConfig(fp8=True))
    x = torch.randn(16, 64)
    y = sl(x)
    ref = F.linear(x, sl.sparse_weight(), sl.bias)
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean())
    assert sqnr > 20  # e4m3 has 3 mantissa bits: ~25-30 dB


def test_constructor_matches_nn_linear_signature_and_errors():
    sl = SparseLinear(16, 8, bias=False, dtype=torch.float64)
    assert sl.weight.dtype == torch.float64 and sl.bias is None
    assert (sl.mask.reshape(-1, 4).sum(-1) == 2).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        SparseLinear(10, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        SparseLinear.from_dense(nn.Linear(6, 4))


def test_backend_selection_and_forced_errors(monkeypatch):
    assert select_backend("auto", (8, 16), torch.float32, "cpu").info.name == "dense"
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend("nope", (8, 16), torch.float32, "cpu")
    monkeypatch.setenv("SPARSE24_BACKEND", "dense")
    assert select_backend("auto", (8, 16), torch.float32, "cpu").info.name == "dense"


def test_torch_compile_traces_sparse_linear():
    sl = SparseLinear.from_dense(nn.Linear(16, 8), MagnitudeConfig())
    x = torch.randn(4, 16)
    compiled = torch.compile(sl, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), sl(x))


def test_native_fp8_backend_is_not_simulated_twice():
    from sparse24.backends import BACKENDS, BackendInfo, register_backend

    class FakeFP8(DenseBackend):
        info = BackendInfo("fake_fp8", ("cpu",), (torch.float32,), priority=10**6)
        native_fp8 = True
        seen: list = []

        def linear(self, x, prepared, bias):
            self.seen.append(x)
            return F.linear(x, prepared, bias)

    fake = register_backend(FakeFP8())
    try:
        sl = SparseLinear.from_dense(nn.Linear(16, 8), SSTEConfig(fp8=True))
        x = torch.randn(4, 16)
        y = sl(x)  # auto: the native FP8 backend wins over simulation where it can run
        assert torch.equal(fake.seen[-1], x)  # got the unquantised input: no double quantisation
        torch.testing.assert_close(y, F.linear(x, sl.sparse_weight(), sl.bias))
        sl.backend = "dense"  # forcing a non-FP8 backend keeps the simulation
        assert not torch.equal(sl(x), y)
    finally:
        del BACKENDS["fake_fp8"]
