"""SparseLinear and SparseMatmul against nn.Linear, float64 formulas and gradcheck; state, resolution, boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse24 import MagnitudeConfig, SparseLinear, SRSTEConfig, SSTEConfig, apply_masked_decay
from sparse24.backends import DENSE, select_backend
from sparse24.masks import magnitude_mask_24, mvue_inclusion_probs, soft_threshold_24, sste_scale
from sparse24.ste import SparseMatmul, mvue_token_grad


def test_sparse_matmul_gradcheck_float64():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(6, 8, dtype=torch.float64) * magnitude_mask_24(torch.randn(6, 8))).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: SparseMatmul.apply(x, w, b, DENSE, w, None, False, 0.0, None)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("decay", [0.0, 0.3])
def test_weight_grad_is_straight_through_plus_autograd_decay(decay):
    lin = nn.Linear(8, 4, dtype=torch.float64)
    sl = SparseLinear.from_dense(lin, SRSTEConfig(decay=decay, decay_placement="autograd"))
    x, g = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    w0, m = sl.weight.detach().clone(), sl.mask.clone()
    sl(x).backward(g)
    torch.testing.assert_close(sl.weight.grad, g.t() @ x + decay * w0 * ~m, rtol=1e-12, atol=1e-12)


def test_sste_forward_beta_s_backward_identity():
    sl = SparseLinear.from_dense(nn.Linear(16, 8, bias=False, dtype=torch.float64), SSTEConfig())
    x, g = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    w = sl.weight.detach()
    y = sl(x)
    torch.testing.assert_close(y, x @ (soft_threshold_24(w) * sste_scale(w).double()).t())
    y.backward(g)
    torch.testing.assert_close(sl.weight.grad, g.t() @ x)  # no β, no mask


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
    beta0 = sl.beta.clone()
    assert torch.equal(beta0, sste_scale(sl.weight.detach()))
    with torch.no_grad():
        sl.weight.mul_(3.0)
    sl.refresh_mask()
    assert torch.equal(sl.beta, beta0)
    assert "beta" in sl.state_dict() and "scale" not in sl.state_dict()


def test_python_state_round_trips_and_old_checkpoints_load():
    sl = SparseLinear.from_dense(nn.Linear(16, 8), SSTEConfig())
    sl.dense_finetune(True)
    sl.step, sl.seed, sl.mvue_offset = 7, 3, 40
    sd = sl.state_dict()
    assert not {"dense_mode", "step", "scale"} & set(sd)
    fresh = SparseLinear.from_dense(nn.Linear(16, 8), SSTEConfig())
    fresh.load_state_dict(sd)
    assert (fresh.dense_mode, fresh.step, fresh.seed, fresh.mvue_offset) == (True, 7, 3, 40)
    assert torch.equal(fresh.beta, sl.beta)
    old = {k: v for k, v in sd.items() if k not in ("_extra_state", "beta")}  # a checkpoint from before the rename
    old.update(scale=sl.beta * 2, dense_mode=torch.tensor(True), step=torch.tensor(5))
    legacy = SparseLinear.from_dense(nn.Linear(16, 8), SSTEConfig())
    legacy.load_state_dict(old)  # strict
    assert torch.equal(legacy.beta, sl.beta * 2) and legacy.dense_mode and legacy.step == 5


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
    n, T, out = 20000, 6, 3
    gy = torch.randn(T, out, dtype=torch.float64)  # T=6: padded to 8 inside
    draws = mvue_token_grad(gy.repeat(1, n), seed=1).reshape(n, out, 8)  # n independent samples in one call
    assert torch.equal(draws[..., 6:], torch.zeros_like(draws[..., 6:]))  # padded tokens stay zero
    draws = draws[..., :6]
    p = mvue_inclusion_probs(F.pad(gy.t(), (0, 2)))[:, :6]
    se = draws.std(0) / n**0.5
    # an entry kept with p = 1 - O(eps/|x|) is never dropped in n draws, so its mean is x/p: allow exactly that bias
    unseen = gy.t().abs() * (1 / p - 1) + 1e-12
    assert ((draws.mean(0) - gy.t()).abs() <= 5 * se + unseen).all()
    assert ((draws != 0).double().mean(0) - p).abs().max() < 0.02


def test_mvue_stream_advances_and_is_reproducible():
    sl = SparseLinear.from_dense(nn.Linear(16, 8), SSTEConfig(mvue=True))
    x = torch.randn(12, 16)
    grads = []
    for _ in range(2):
        sl.weight.grad = None
        sl(x).sum().backward()
        grads.append(sl.weight.grad.clone())
    assert not torch.equal(grads[0], grads[1])  # a fresh sample per step
    sl.mvue_offset = 0
    sl.weight.grad = None
    sl(x).sum().backward()
    assert torch.equal(sl.weight.grad, grads[0])  # (seed, offset) fixes the sample
    sl.mvue_offset, sl._rank = 0, 1  # another data-parallel rank: its own sample at the same offset
    sl.weight.grad = None
    sl(x).sum().backward()
    assert not torch.equal(sl.weight.grad, grads[0])


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
    with pytest.raises(RuntimeError, match="cannot run this layer"):
        SparseLinear(16, 8, backend="cusparselt")  # CPU, fp32: refused at build, not at the first forward
    monkeypatch.setenv("SPARSE24_BACKEND", "dense")
    assert select_backend("auto", (8, 16), torch.float32, "cpu").info.name == "dense"


def test_native_fp8_backend_is_not_simulated_twice():
    from sparse24.backends import BACKENDS, BackendInfo, DenseBackend, register_backend

    class FakeFP8(DenseBackend):
        info = BackendInfo("fake_fp8", ("cpu",), (torch.float32,), priority=10**6)
        native_fp8 = True
        auto = False
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
        assert SparseLinear.from_dense(nn.Linear(16, 8), SSTEConfig()).plan().backend.info.name == "dense"
    finally:
        del BACKENDS["fake_fp8"]


# ---- packed weight on the module, resolution once, compile ---------------------------------------------------------
@pytest.fixture
def counting_backend():
    """A packing CPU backend that counts ``prepare`` calls (the compression a GPU backend would run)."""
    from sparse24.backends import BACKENDS, BackendInfo, DenseBackend, register_backend

    class Counting(DenseBackend):
        info = BackendInfo("counting", ("cpu",), (torch.float32,), priority=10**6)
        packs, auto = True, False

        def __init__(self):
            self.packs_made = 0

        def prepare(self, w):
            self.packs_made += 1
            return w.clone()

    be = register_backend(Counting())
    yield be
    del BACKENDS["counting"]


def test_one_pack_per_layer_per_optimizer_step(counting_backend):
    layers, micro = 280, 4  # Llama-2-13B has 280 linears; 4 micro-batches per step
    model = nn.Sequential(*[SparseLinear(8, 8, bias=False, config=MagnitudeConfig(), backend="counting")
                            for _ in range(layers)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for step in range(2):
        for _ in range(micro):
            model(torch.randn(2, 8)).square().mean().backward()
        assert counting_backend.packs_made == layers * (step + 1)  # not layers * micro
        opt.step()
        opt.zero_grad()
    m = model[0]
    m.refresh_mask()  # a new mask invalidates the packed weight too
    m(torch.randn(2, 8))
    assert counting_backend.packs_made == 2 * layers + 1


def test_packed_weight_dies_with_the_model(counting_backend):
    import gc
    import weakref

    model = nn.Sequential(SparseLinear(8, 8, backend="counting"), SparseLinear(8, 8, backend="counting"))
    model(torch.randn(3, 8))
    refs = [weakref.ref(m._packed[1]) for m in model] + [weakref.ref(model[0])]
    del model
    gc.collect()
    assert all(r() is None for r in refs)  # no global cache keeps a packed weight (or the module) alive


def test_backend_resolved_at_build_move_and_change_not_per_call(monkeypatch):
    import sparse24.backends as sb
    import sparse24.linear as sl_mod

    calls = []
    real = sb.resolve
    monkeypatch.setattr(sl_mod, "resolve", lambda *a, **k: calls.append(a) or real(*a, **k))
    sl = SparseLinear(16, 8)
    built = len(calls)
    assert built == 3  # fp32 plus the two autocast dtypes
    for _ in range(5):
        sl(torch.randn(4, 16))
    assert len(calls) == built  # no resolution per forward
    monkeypatch.setenv("SPARSE24_BACKEND", "no-such-backend")  # read at resolution only
    sl(torch.randn(4, 16))
    monkeypatch.delenv("SPARSE24_BACKEND")
    sl.to(torch.float64)
    assert len(calls) == built + 1 and sl.plan().backend.info.name == "dense"
    sl.backend = "dense"
    assert len(calls) == built + 2


@pytest.mark.parametrize("cfg", [SRSTEConfig(decay=0.5, decay_placement="autograd"), SSTEConfig()], ids=str)
def test_compile_fullgraph_sparse_linear_matches_eager_and_formula(cfg):
    torch._dynamo.reset()
    sl = SparseLinear.from_dense(nn.Linear(32, 16), cfg)
    x = torch.randn(4, 8, 32)
    y = torch.compile(sl, fullgraph=True, backend="aot_eager")(x)  # AOTAutograd traces forward and backward
    y.sum().backward()
    w = sl.weight.detach()
    torch.testing.assert_close(y, F.linear(x, sl.sparse_weight(), sl.bias))
    decay = cfg.decay * w * ~sl.mask if isinstance(cfg, SRSTEConfig) else 0
    torch.testing.assert_close(sl.weight.grad, torch.ones(32, 16).t() @ x.reshape(-1, 32) + decay)


@pytest.mark.slow
def test_compile_fullgraph_sparse_llama_forward_backward(tiny_llama):
    from sparse24 import sparsify

    torch._dynamo.reset()
    model = tiny_llama(layers=1, hidden=32, vocab=64)
    sparsify(model, SRSTEConfig(decay_placement="autograd", backend="dense"))
    ids = torch.randint(0, 64, (2, 8))
    eager = model(ids).logits
    eager.square().mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)  # inductor (about 40 s on 2 cores: marked slow)
    out = compiled(ids).logits
    out.square().mean().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_load_sparse_generate_matches_the_masked_dense_model(tmp_path, tiny_llama):
    from sparse24 import load_sparse, save_sparse, sparsify, unsparsify

    model = sparsify(tiny_llama(layers=1, hidden=32, vocab=64), MagnitudeConfig())
    save_sparse(model, tmp_path / "ckpt", compressed=True)
    loaded = load_sparse(tmp_path / "ckpt", device="cpu", dtype=torch.bfloat16)
    sparse = [m for m in loaded.modules() if isinstance(m, SparseLinear)]
    assert sparse and all(m.weight.dtype == torch.bfloat16 and m.plan().min_tokens == 0 for m in sparse)  # CPU: dense
    dense = unsparsify(sparsify(tiny_llama(layers=1, hidden=32, vocab=64), MagnitudeConfig())).to(torch.bfloat16)
    dense.load_state_dict(loaded.state_dict(), strict=False)  # same 2:4 weights in plain nn.Linear
    ids = torch.randint(0, 64, (1, 6))
    kw = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(loaded.generate(ids, **kw), dense.generate(ids, **kw))


def test_small_m_runs_dense_on_the_cached_weight(counting_backend):
    from sparse24.kernels.backends import Prepared

    from sparse24.backends import DENSE, Plan

    class PackingCounting(type(counting_backend)):
        def prepare(self, w):
            self.packs_made += 1
            return Prepared(w=w.clone())

        def linear(self, x, p, bias):
            return F.linear(x, p.w, bias)

    be = PackingCounting()
    sl = SparseLinear(16, 8, config=SRSTEConfig())
    sl._plans[torch.float32] = Plan(be, DENSE, min_tokens=8)  # what auto resolves on a GPU, with a crossover of 8
    calls = []
    real = sl._effective_weight
    sl._effective_weight = lambda dt: calls.append(dt) or real(dt)
    with torch.no_grad():
        for t in (1, 1, 2, 16, 1):  # decode steps and one prefill
            x = torch.randn(t, 16)
            torch.testing.assert_close(sl(x), F.linear(x, sl.sparse_weight(), sl.bias))
    assert len(calls) == 1 and be.packs_made == 1  # W̃ built once, shared by the dense decode path


def test_meta_built_layer_resolves_after_assign_load():
    src = SparseLinear.from_dense(nn.Linear(16, 8), SRSTEConfig())
    with torch.device("meta"):
        sl = SparseLinear(16, 8, config=SRSTEConfig())
    sl.load_state_dict(src.state_dict(), assign=True)  # gpt-fast style loading: no _apply
    x = torch.randn(3, 16)
    torch.testing.assert_close(sl(x), src(x))
    assert sl.plan().backend.info.name == "dense" and sl._plan_key == (torch.device("cpu"), torch.float32)
    bf = SparseLinear.from_dense(nn.Linear(16, 8, dtype=torch.bfloat16), SRSTEConfig())
    with torch.autocast("cpu", dtype=torch.float16):  # a 16-bit layer under the other 16-bit autocast dtype
        assert bf(torch.randn(3, 16)).dtype == torch.float16
