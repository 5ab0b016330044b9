"""ARMOR from a one-shot start: gradients and the exact group update vs dense/brute-force references, the start equals
the one-shot layer, monotone acceptance, never worse than the one-shot layer, budgets, inference module, driver."""

from __future__ import annotations

import itertools

import pytest
import torch
from prune_fixtures import correlated_inputs
from sparse24.prune.armor import (
    ArmorArgs,
    ArmorState,
    armor_layer,
    block_product,
    block_size_for_budget,
    cg_b,
    cg_x,
    grads,
    normalize_weight,
    objective,
    resolve_block_size,
    solve_a,
    sparse_round,
    start_state,
    update_groups,
)
from sparse24.prune.armor_linear import ArmorLinear, armor_parameter_overhead, load_armor
from sparse24.prune.base import LayerStats, get_pruner

F64 = torch.float64


def dense_blockdiag(blocks: torch.Tensor) -> torch.Tensor:
    return torch.block_diag(*blocks)


def ref_loss(a, z, b, s: ArmorState) -> torch.Tensor:
    """``tr(E H Eᵀ)/tr(W H Wᵀ)`` from dense block-diagonal matrices and the Cholesky factor of H (independent of the
    blocked kernels and of the E·H form)."""
    what = s.d_r[:, None] * (dense_blockdiag(a) @ z @ dense_blockdiag(b)) * s.d_c
    c = torch.linalg.cholesky(s.h)  # H = C Cᵀ
    return ((what - s.w) @ c).square().sum() / (s.w @ c).square().sum()


def random_mask24(out_f: int, in_f: int) -> torch.Tensor:
    keep = torch.rand(out_f, in_f // 4, 4).argsort(-1)[..., :2]
    return torch.zeros(out_f, in_f // 4, 4, dtype=torch.bool).scatter_(-1, keep, True).reshape(out_f, in_f)


def random_hessian(in_f: int, tokens: int = 512, dtype=F64) -> torch.Tensor:
    x = correlated_inputs(tokens, in_f)  # [T, in]
    return (2 * x.t() @ x / 8).to(dtype)


def random_state(out_f: int, in_f: int, bs: int, noise: float = 0.3, dtype=F64) -> ArmorState:
    w = torch.randn(out_f, in_f, dtype=dtype)
    mask = random_mask24(out_f, in_f)
    s = start_state(w, random_hessian(in_f, dtype=dtype), w * mask, mask, bs)
    s.a += noise * torch.randn_like(s.a)
    s.b += noise * torch.randn_like(s.b)
    s.x += 0.1 * torch.randn_like(s.x)
    return s


def clone(s: ArmorState) -> ArmorState:
    return ArmorState(*(t.clone() for t in (s.a, s.b, s.x, s.mask, s.w, s.d_r, s.d_c, s.h, s.denom)))


def _stats(x: torch.Tensor, nsamples: int = 8) -> LayerStats:
    return LayerStats(nsamples, x.shape[0], sqnorm=x.square().sum(0) / nsamples, hessian=2 * x.t() @ x / nsamples)


def brute_force_group(s: ArmorState, row: int, col: int) -> tuple[list[int], torch.Tensor, float]:
    """Best (support, values) for the group at (row, col..col+3): every 2-of-4 support, least squares on the loss."""
    best = None
    base_z = s.core().clone()
    base_z[row, col : col + 4] = 0
    ad, bd = dense_blockdiag(s.a), dense_blockdiag(s.b)
    c = torch.linalg.cholesky(s.h)
    r0 = ((s.d_r[:, None] * (ad @ base_z @ bd) * s.d_c - s.w) @ c).reshape(-1)  # residual with the group zeroed
    for sup in itertools.combinations(range(4), 2):
        cols = []
        for k in sup:  # the loss is quadratic in the 2 values: residual = r0 + J v
            e = torch.zeros_like(base_z)
            e[row, col + k] = 1
            cols.append(((s.d_r[:, None] * (ad @ e @ bd) * s.d_c) @ c).reshape(-1))
        jac = torch.stack(cols, 1)  # [out*in, 2]
        v = torch.linalg.lstsq(jac, -r0[:, None]).solution[:, 0]
        z = base_z.clone()
        z[row, col + torch.tensor(sup)] = v
        loss = float(ref_loss(s.a, z, s.b, s))
        if best is None or loss < best[2]:
            best = (list(sup), v, loss)
    return best


def test_objective_and_grads_match_dense_autograd():
    s = random_state(24, 36, 12)
    loss, eh = objective(s)
    a, b, x = (t.clone().requires_grad_() for t in (s.a, s.b, s.x))
    ref = ref_loss(a, x * s.mask, b, s)
    ref.backward()
    assert torch.allclose(loss, ref.detach(), rtol=1e-10)
    assert torch.allclose(eh, (s.weight() - s.w) @ s.h, rtol=1e-12, atol=1e-12)
    ga, gb, gx, gz = grads(s, eh)
    for mine, theirs in ((ga, a.grad), (gb, b.grad), (gx, x.grad)):
        assert torch.allclose(mine, theirs, rtol=1e-8, atol=1e-12)
    zz = s.core().requires_grad_()  # the unmasked ∂L/∂Z used to pick groups
    ref_loss(s.a, zz, s.b, s).backward()
    assert torch.allclose(gz, zz.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("shape,bs", [((16, 16), 8), ((8, 16), 4), ((24, 16), 8), ((16, 32), 16)])
def test_group_update_equals_brute_force_and_tracks_eh_and_grad(shape, bs):
    s = random_state(*shape, bs)
    nj = shape[0] // bs
    rows = torch.randint(0, bs, (nj,))
    cols = torch.randint(0, shape[1] // 4, (nj,)) * 4  # any input block: one group per output block
    expected = [(j * bs + int(rows[j]), int(cols[j]), *brute_force_group(s, j * bs + int(rows[j]), int(cols[j])))
                for j in range(nj)]  # output blocks never interact: each group solved alone on the start point
    after = clone(s)
    _, eh = objective(after)
    gz = grads(after, eh)[3]
    update_groups(after, eh, rows, cols, gz)
    z_ref = s.core().clone()
    for row, col, sup, v, _ in expected:
        assert sorted(after.mask[row, col : col + 4].nonzero().flatten().tolist()) == sup
        z_ref[row, col : col + 4] = 0
        z_ref[row, col + torch.tensor(sup)] = v
    # the closed form adds a 1e-9 relative ridge to each 2x2 system (for singular groups): values move by about
    # 1e-9 x cond(G_S) (seen up to 5e-7 relative over 600 random groups), the loss only to second order
    assert torch.allclose(after.core(), z_ref, rtol=1e-5, atol=1e-9)
    assert torch.equal(after.mask.reshape(-1, 4).sum(-1), torch.full((shape[0] * shape[1] // 4,), 2))
    fresh, eh_fresh = objective(after)
    assert float(fresh) == pytest.approx(float(ref_loss(s.a, z_ref, s.b, s)), rel=1e-9)
    assert torch.allclose(eh, eh_fresh, rtol=1e-9, atol=1e-10)  # the rank-1 tracking equals a fresh E·H
    assert torch.allclose(gz, grads(after, eh_fresh)[3], rtol=1e-8, atol=1e-10)


def test_identity_factors_and_diagonal_hessian_land_on_wanda():
    """With A = B = I and a diagonal H, the exact group update from any support keeps the 2 largest h_j·w_j² (Wanda's
    |w|·√h) with the dense values: sweep every group from a random start and compare with the wanda pruner."""
    out_f, in_f, bs = 16, 32, 8
    w, h = torch.randn(out_f, in_f, dtype=F64), torch.rand(in_f, dtype=F64) + 0.1
    mask0 = random_mask24(out_f, in_f)
    s = start_state(w, torch.diag(h), torch.randn_like(w) * mask0, mask0, bs)
    _, eh = objective(s)
    for r, g in itertools.product(range(bs), range(in_f // 4)):
        update_groups(s, eh, torch.full((out_f // bs,), r), torch.full((out_f // bs,), 4 * g))
    ref = get_pruner("wanda").prune(w, LayerStats(1, 1, sqnorm=h))
    assert torch.equal(s.mask, ref.mask)
    assert torch.allclose(s.weight(), ref.weight, atol=1e-12)


@pytest.mark.parametrize("select", ["gradient_random", "gradient_greedy", "random"])
def test_objective_never_increases_across_sparse_rounds(select):
    s = random_state(32, 48, 16, noise=0.5)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    prev, eh = objective(s)
    gz = grads(s, eh)[3] if select != "random" else None
    for _ in range(30):
        sparse_round(s, eh, gz, select, gen)
        now, eh_fresh = objective(s)  # recomputed from scratch
        assert torch.allclose(eh, eh_fresh, rtol=1e-8, atol=1e-10)
        assert float(now) <= float(prev) * (1 + 1e-12), (float(now), float(prev))
        prev = now
    assert torch.equal(s.mask.reshape(-1, 4).sum(-1), torch.full((32 * 48 // 4,), 2))


def _lstsq_rows(jac: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(jac, target[:, None]).solution[:, 0]


def test_solve_a_is_the_exact_minimiser():
    """Every row of A against a float64 lstsq on ``d_o (P_J C)ᵀ a = (W_o C)ᵀ`` (H = C Cᵀ), i.e. without normal
    equations; the objective does not go up."""
    s = random_state(16, 24, 8, noise=0.4)
    before = float(objective(s)[0])
    ref = s.a.clone()
    c = torch.linalg.cholesky(s.h)
    p = (s.core() @ dense_blockdiag(s.b)) * s.d_c  # [out, in]
    for o in range(16):
        j = o // 8
        ref[j, o % 8] = _lstsq_rows(s.d_r[o] * (p[j * 8 : j * 8 + 8] @ c).t(), s.w[o] @ c)
    solve_a(s)
    assert torch.allclose(s.a, ref, rtol=1e-6, atol=1e-6)  # the 1e-9 ridge: ~1e-9 x cond(P H Pᵀ) ~ 1e-7
    assert float(objective(s)[0]) <= before


@pytest.mark.parametrize("which", ["b", "x"])
def test_cg_steps_lower_the_objective_and_reach_the_block_minimiser(which):
    """A few CG steps never raise the objective; as many steps as unknowns reach the float64 lstsq minimiser over
    the block-diagonal B (or the kept core values), built column by column from the dense formula."""
    s = random_state(24, 16, 8, noise=0.4)  # out >= in: Z -> A Z B and B -> Q B are injective, one minimiser
    c = torch.linalg.cholesky(s.h)
    ad = dense_blockdiag(s.a)
    if which == "b":  # unknowns: every entry of every diagonal block of B
        units = [(k, i, j) for k in range(2) for i in range(8) for j in range(8)]
        q = s.d_r[:, None] * (ad @ s.core())

        def column(u):
            e = torch.zeros(16, 16, dtype=F64)
            e[u[0] * 8 + u[1], u[0] * 8 + u[2]] = 1
            return ((q @ e) * s.d_c @ c).reshape(-1)  # [24*16]
    else:  # unknowns: the kept core entries
        units = s.mask.nonzero().tolist()
        bd = dense_blockdiag(s.b)

        def column(u):
            e = torch.zeros(24, 16, dtype=F64)
            e[u[0], u[1]] = 1
            return ((s.d_r[:, None] * (ad @ e @ bd) * s.d_c) @ c).reshape(-1)
    jac = torch.stack([column(u) for u in units], 1)  # [out*in, n]
    best = _lstsq_rows(jac, (s.w @ c).reshape(-1))
    step, prev = (cg_b, cg_x)[which == "x"], float(objective(s)[0])
    for _ in range(3):
        step(s, 2)
        now = float(objective(s)[0])
        assert now <= prev * (1 + 1e-12)
        prev = now
    step(s, 4 * len(units))
    got = torch.stack([s.b[k, i, j] for k, i, j in units]) if which == "b" else s.x[s.mask]
    assert torch.allclose(got, best, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("update", ["als", "adam"])
def test_armor_layer_accepts_only_improvements(update):
    """The recorded objective is non-increasing at every iteration, also when a far too large Adam step forces
    rejections, and the returned factors score exactly the last recorded value (recomputed independently on the
    damped Hessian that is ARMOR's objective)."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = correlated_inputs(1024, 64, g)
    w = torch.randn(32, 64, dtype=F64, generator=g)
    h = 2 * x.t() @ x / 8
    start = get_pruner("sparsegpt").prune(w, _stats(x))
    for lr, must_reject in ((1e-3, False), (3.0, update == "adam")):
        res = armor_layer(w, h, start.weight, start.mask, ArmorArgs(block_size=16, iters=25, lr=lr, update=update))
        hist = res.history
        assert len(hist) == res.iters + 1 and all(b <= a for a, b in zip(hist, hist[1:]))
        assert res.loss < res.loss_init  # it did improve
        if must_reject:
            assert res.accepted < res.iters  # the monotone guard was exercised
        hd = h + 0.01 * torch.diagonal(h).mean() * torch.eye(64, dtype=F64)  # the objective's --armor-percdamp 0.01
        s = start_state(w, hd, start.weight, start.mask, 16)
        c = torch.linalg.cholesky(hd)
        ref = ((res.weight() - w) @ c).square().sum() / (w @ c).square().sum()
        assert float(ref) == pytest.approx(res.loss, rel=1e-9)
        assert float(objective(s)[0]) == pytest.approx(res.loss_init, rel=1e-12)
        assert torch.equal(res.mask.reshape(-1, 4).sum(-1), torch.full((32 * 16,), 2))
        assert not (res.x[~res.mask] != 0).any()


@pytest.mark.parametrize("init", ["admm", "sparsegpt", "wanda", "magnitude"])
def test_zero_iterations_is_the_oneshot_layer(init):
    """0 iterations: the weight is bit-identical to the one-shot pruner's, the factors are exactly A' = B' = I with the
    one-shot weights as core, and the ArmorLinear's output equals nn.Linear(one-shot weight) on the calibration
    inputs. Only the summation order of the core GEMM may differ (a [T, in] vs a batched call), so the tolerance is
    a few float32 ulps of Σ|w||x|."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = correlated_inputs(1024, 96, g)  # [T, in] calibration inputs
    w = torch.randn(48, 96, generator=g)
    stats = _stats(x)
    one = get_pruner(init).prune(w, stats)
    res = get_pruner("armor", init=init, block_size=24, iters=0).prune(w, stats)
    assert torch.equal(res.weight, one.weight) and torch.equal(res.mask, one.mask)
    assert torch.equal(res.extra["core"], one.weight)
    eye = torch.eye(24)
    assert torch.equal(res.extra["a_blocks"], eye.repeat(2, 1, 1)) and torch.equal(res.extra["b_blocks"],
                                                                                  eye.repeat(4, 1, 1))
    assert res.info["armor_err"] == res.info["armor_err_init"]
    mod = ArmorLinear(96, 48, 24, bias=False, backend="dense")
    with torch.no_grad():
        for k, t in res.extra.items():
            getattr(mod, k).copy_(t)
        xf = x.float()
        got, want = mod(xf), torch.nn.functional.linear(xf, one.weight)
    bound = 8 * torch.finfo(torch.float32).eps * (xf.abs() @ one.weight.abs().t())  # [T, out]
    assert ((got - want).abs() <= bound).all()


@pytest.mark.parametrize("bs", [4, 8, 16, 32])
def test_final_layer_error_never_above_the_oneshot_layer(bs):
    """Fresh random weights and correlated inputs: ARMOR's float64 layer error is never above its start's (admm, and
    sparsegpt for a second start) and, with 6 iterations, strictly below it."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = correlated_inputs(1024, 64, g)
    w = torch.randn(32, 64, generator=g)
    stats = _stats(x)
    for init in ("admm", "sparsegpt"):
        one = get_pruner(init).prune(w, stats)
        res = get_pruner("armor", init=init, block_size=bs, iters=6).prune(w, stats)
        err = lambda v: float((x @ (w.double() - v.double()).t()).square().sum())  # noqa: E731  ‖(W − Ŵ) X‖²
        assert err(res.weight) <= err(one.weight)
        assert err(res.weight) < 0.999 * err(one.weight), (init, bs)
        assert res.info["armor_err"] < res.info["armor_err_init"]
        assert torch.equal(res.extra["core"].reshape(-1, 4).ne(0).sum(-1) <= 2, torch.ones(32 * 16, dtype=torch.bool))


def test_a_useless_descent_returns_the_start_exactly():
    """Adam with lr 0 and no discrete rounds cannot improve anything: the result is the one-shot layer, bit for bit."""
    x = correlated_inputs(512, 32)
    w = torch.randn(16, 32)
    one = get_pruner("admm").prune(w, _stats(x))
    res = get_pruner("armor", block_size=8, iters=5, update="adam", lr=0.0, sparse_steps=0).prune(w, _stats(x))
    assert torch.equal(res.weight, one.weight) and torch.equal(res.extra["core"], one.weight)


def test_init_must_be_a_plain_oneshot_method():
    with pytest.raises(ValueError, match="unknown pruning method"):
        get_pruner("armor", init="nope")
    with pytest.raises(ValueError, match="--armor-init armor"):
        get_pruner("armor", init="armor")
    assert get_pruner("armor", init="magnitude").sequential and get_pruner("armor").settings()["init"] == "admm"
    with pytest.raises(ValueError, match="drop --block-size"):
        ArmorArgs(block_size=8, budget=5)
    with pytest.raises(ValueError, match="positive percentage"):
        ArmorArgs(budget=0)


def _brute_budget(model: torch.nn.Module, linears: dict, percent: float) -> int | None:
    """Largest block size whose ArmorLinear modules (built for real) add at most ``percent`` % of the parameters."""
    total = sum(p.numel() for p in model.parameters())
    best = None
    for bs in range(1, 1 + min(min(m.in_features, m.out_features) for m in linears.values())):
        try:
            extra = sum(ArmorLinear(m.in_features, m.out_features, bs, bias=False).overhead_params()
                        for m in linears.values())
        except ValueError:  # bs does not fit some linear
            continue
        if extra <= percent / 100 * total:
            best = bs
    return best


@pytest.mark.parametrize("hidden,inter", [(64, 168), (96, 256), (48, 192)])
def test_budget_picks_the_largest_block_that_fits(hidden, inter):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=200, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    for percent in (1, 2, 5, 10, 20, 40, 80):
        want = _brute_budget(model, linears, percent)
        pruner = get_pruner("armor", budget=percent)
        if want is None:
            with pytest.raises(ValueError, match="raise --armor-budget"):
                pruner.setup(model, linears)
            continue
        pruner.setup(model, linears)
        assert pruner.block_size == want, (hidden, inter, percent)


def test_budget_help_matches_smollm2_dims():
    """The --armor-budget help text's SmolLM2-135M mapping, from its config (meta device, no weights)."""
    from sparse24.prune.armor import SMOLLM2_NOTE
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    shapes = [(m.out_features, m.in_features) for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and ".layers." in n]
    total = sum(p.numel() for p in model.parameters())
    for percent, bs in ((2, 8), (5, 16), (10, 32)):
        assert block_size_for_budget(total, shapes, percent) == bs
        share = 100 * bs * sum(o + i for o, i in shapes) / total
        assert f"{percent} -> block {bs} (+{share:.1f} %%)" in SMOLLM2_NOTE


def test_block_size_auto_and_bad_sizes():
    assert resolve_block_size("auto", 576, 192) == 96  # SmolLM2: 576/192/1536
    assert resolve_block_size("auto", 1536, 576) == 96
    for _ in range(20):
        out_f, in_f = (int(v) * 4 for v in torch.randint(1, 400, (2,)))
        ok = [bs for bs in range(4, 129, 4) if out_f % bs == 0 and in_f % bs == 0]
        assert resolve_block_size("auto", out_f, in_f) == max(ok)  # 4 always divides both
    with pytest.raises(ValueError, match=r"block-size 128 .*\[576, 192\].*96"):
        resolve_block_size(128, 576, 192)
    with pytest.raises(ValueError, match="multiple of 4"):
        resolve_block_size(6, 12, 12)
    with pytest.raises(ValueError, match="block-size"):
        ArmorArgs(block_size="big")
    w = torch.randn(576, 192)
    with pytest.raises(ValueError, match="block-size"):
        armor_layer(w, torch.eye(192), w, torch.ones_like(w, dtype=torch.bool), ArmorArgs(block_size=128, iters=0))


def test_armor_linear_equals_dense_reconstruction():
    x = correlated_inputs(512, 96)
    w, bias = torch.randn(48, 96, dtype=F64), torch.randn(48, dtype=F64)
    start = get_pruner("sparsegpt").prune(w, _stats(x))
    res = armor_layer(w, 2 * x.t() @ x / 8, start.weight, start.mask, ArmorArgs(block_size=24, iters=5))
    mod = ArmorLinear.from_result(res, bias, backend="dense")
    core = res.x * res.mask
    w_eff = torch.diag(res.d_r) @ dense_blockdiag(res.a) @ core @ dense_blockdiag(res.b) @ torch.diag(res.d_c)
    xs = torch.randn(3, 5, 96, dtype=F64)
    assert torch.allclose(mod(xs), xs @ w_eff.T + bias, rtol=1e-10, atol=1e-10)
    assert torch.allclose(mod.dense_weight(), w_eff, atol=1e-12)
    assert torch.allclose(block_product(res.a, core, res.b) * res.d_r[:, None] * res.d_c, w_eff, atol=1e-12)
    assert torch.equal(mod.core.reshape(-1, 4).ne(0).sum(-1) <= 2, torch.ones(48 * 24, dtype=torch.bool))
    assert mod.overhead_params() == 2 * 24 * 24 + 4 * 24 * 24
    lin = mod.to_dense()  # the way out: a plain nn.Linear holding W_eff and the bias
    assert type(lin) is torch.nn.Linear and torch.allclose(lin(xs), xs @ w_eff.T + bias, rtol=1e-10, atol=1e-10)


def test_driver_zero_iterations_reproduce_the_admm_model(tmp_path):
    """Through the shared driver, ARMOR with 0 iterations feeds the next layer like its init and so returns the admm
    model's weights bit for bit, layer after layer."""
    from prune_fixtures import make_model_dir
    from sparse24.prune.driver import DriverArgs, prune_layers
    from sparse24.prune.resume import WorkState

    model_dir = make_model_dir(tmp_path / "m", layers=2, hidden=32)
    ids = torch.randint(0, 300, (2, 16))
    opts = DriverArgs(batch_size=2, progress=False)
    outs = {}
    for name, pruner in (("admm", get_pruner("admm")), ("armor", get_pruner("armor", iters=0))):
        outs[name] = prune_layers(model_dir, pruner, ids, opts, WorkState(tmp_path / name,
                                                                          {"settings": pruner.settings()}))
    assert sorted(outs["admm"].weights) == sorted(outs["armor"].weights) and len(outs["admm"].weights) == 14
    for n, t in outs["admm"].weights.items():
        assert torch.equal(outs["armor"].weights[n], t), n
        assert torch.equal(outs["armor"].extras[n]["core"], t), n


def test_driver_armor_save_load_roundtrip(tmp_path):
    """ARMOR through the shared layer driver (no second driver): every layer error at most its start's, the assembled
    model equals the saved-and-loaded one, a finished work folder resumes without redoing a layer, and other
    settings are refused; --armor-budget's block size is the brute-force one."""
    from prune_fixtures import make_model_dir
    from sparse24.prune.driver import DriverArgs, prune_layers, skeleton
    from sparse24.prune.resume import WorkState
    from transformers import AutoModelForCausalLM

    tiny_model_dir = make_model_dir(tmp_path / "m", layers=1)
    ids = torch.randint(0, 300, (2, 16))
    pruner = get_pruner("armor", budget=20, iters=2)
    opts = DriverArgs(batch_size=2, progress=False)
    fingerprint = {"settings": pruner.settings()}
    out = prune_layers(tiny_model_dir, pruner, ids, opts, WorkState(tmp_path / "w", fingerprint))
    assert len(out.report) == 7 and all(r["armor_err"] <= r["armor_err_init"] for r in out.report)
    skel = skeleton(tiny_model_dir)
    want = _brute_budget(skel, {n: m for n, m in skel.named_modules() if isinstance(m, torch.nn.Linear)
                                and ".layers." in n}, 20)
    assert {r["block_size"] for r in out.report} == {want}
    assert sorted(out.extras) == sorted(r["name"] for r in out.report)
    model = pruner.assemble(tiny_model_dir, out)
    assert pruner.check_24(model) == (7, 7)
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logits = model(ids).logits
        assert not torch.allclose(logits, dense(ids).logits)
    info = armor_parameter_overhead(model)
    assert info["layers"] == 7 and 0 < info["armor_params"] <= 0.20 * info["dense_params"]
    lines = pruner.save(model, tmp_path / "ckpt", record={}, compressed=False, overwrite=False)
    assert "A/B parameters over 7 linears" in lines[0]
    again = load_armor(tmp_path / "ckpt", backend="dense")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()  # the dense equivalent W_eff
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, logits, atol=1e-5)
        assert torch.allclose(plain(ids).logits, logits, atol=1e-4)
    # resume: every layer is on disk, a second run redoes nothing and returns the same factors
    redone: list[int] = []
    out2 = prune_layers(tiny_model_dir, pruner, ids, opts, WorkState(tmp_path / "w", fingerprint), redone.append)
    assert redone == [] and all(torch.equal(out2.extras[n]["core"], t["core"]) for n, t in out.extras.items())
    with pytest.raises(ValueError, match="different arguments"):
        WorkState(tmp_path / "w", {"settings": get_pruner("armor", budget=20, iters=3).settings()})


def test_registry_pruner_returns_dense_equivalent_and_factors():
    from sparse24.prune.armor_pruner import ArmorPruner

    x = correlated_inputs(512, 64)
    w = torch.randn(32, 64)
    pruner = get_pruner("armor", block_size=16, iters=5, lr=1e-3)
    assert isinstance(pruner, ArmorPruner) and pruner.settings()["block_size"] == 16
    res = pruner.prune(w, _stats(x))
    mod = ArmorLinear(64, 32, 16, bias=False, backend="dense")
    with torch.no_grad():
        for k, t in res.extra.items():
            getattr(mod, k).copy_(t)
    assert torch.allclose(res.weight, mod.dense_weight(), atol=1e-6)
    assert torch.equal(res.extra["core"] != 0, (res.extra["core"] != 0) & res.mask)
    assert torch.equal(res.mask.reshape(-1, 4).sum(-1), torch.full((32 * 16,), 2))
    with pytest.raises(ValueError, match="needs the input Hessian"):
        pruner.prune(w, LayerStats(4, 64, sqnorm=torch.rand(64, dtype=F64)))
    with pytest.raises(ValueError, match="--armor-budget needs the whole model"):
        get_pruner("armor", budget=5).prune(w, _stats(x))


def test_normalize_weight_roundtrip():
    w = torch.randn(12, 20, dtype=F64)
    wbar, d_r, d_c = normalize_weight(w)
    assert torch.allclose(d_r[:, None] * wbar * d_c, w, atol=1e-12)
    assert torch.allclose(wbar.norm(dim=1), torch.ones(12, dtype=F64))
