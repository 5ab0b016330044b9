"""SparseGPT internals: the shared-input factorisation cache and the float32 column loop."""

from __future__ import annotations

import pytest
import torch
from prune_fixtures import correlated_inputs
from sparse24.prune.base import LayerStats, get_pruner
from sparse24.prune.sparsegpt import sparsegpt_24


def _stats(x: torch.Tensor, nsamples: int) -> LayerStats:
    return LayerStats(nsamples, x.shape[0], sqnorm=x.square().sum(0) / nsamples, hessian=2 * x.t() @ x / nsamples)


def test_cached_factorisation_equals_a_fresh_pruner():
    g = torch.Generator().manual_seed(0)
    s1, s2 = _stats(correlated_inputs(512, 32, g), 2), _stats(correlated_inputs(512, 32, g), 2)
    w1, w2 = torch.randn(8, 32, generator=g), torch.randn(16, 32, generator=g)
    shared = get_pruner("sparsegpt", blocksize=8)
    for w, s in ((w1, s1), (w2, s1), (w1, s2), (w2, s1)):  # q, k (same input), then another input, then back
        got, ref = shared.prune(w, s), get_pruner("sparsegpt", blocksize=8).prune(w, s)
        assert torch.equal(got.weight, ref.weight) and torch.equal(got.mask, ref.mask)


def test_float32_column_loop_keeps_the_result():
    g = torch.Generator().manual_seed(1)
    x = correlated_inputs(4096, 256, g)
    w = torch.randn(128, 256, generator=g)
    h = 2 * x.t() @ x / 8
    a, ma = sparsegpt_24(w, h)
    b, mb = sparsegpt_24(w, h, dtype=torch.float32)
    assert (ma == mb).float().mean() > 0.999
    err = [float((x @ (w.double() - r.double()).t()).square().sum()) for r in (a, b)]
    assert abs(err[1] - err[0]) <= 1e-3 * err[0]


@pytest.mark.parametrize("method", ["sparsegpt", "admm", "sparsegpt-refit"])
def test_stacked_group_equals_one_linear_at_a_time(method):
    """q/k/v pruned as one [Σ out, in] problem give each linear its own result (rows are independent given H): the
    same masks, SparseGPT's weights to float32 rounding, the refit methods' to their CG tolerance (their stopping
    test is over all rows, so a stacked solve may iterate a converged row a little longer)."""
    from sparse24.prune.refit import layer_error

    g = torch.Generator().manual_seed(2)
    st = _stats(correlated_inputs(1024, 64, g), 4)
    ws = {"q": torch.randn(16, 64, generator=g), "k": torch.randn(8, 64, generator=g),
          "v": torch.randn(8, 64, generator=g)}
    assert get_pruner(method).rows_independent
    got = get_pruner(method).prune_group(ws, st)
    assert list(got) == ["q", "k", "v"]
    for name, w in ws.items():
        ref = get_pruner(method).prune(w, st)
        assert torch.equal(got[name].mask, ref.mask)
        if method == "sparsegpt":
            torch.testing.assert_close(got[name].weight, ref.weight, rtol=1e-5, atol=1e-6)
        else:
            e_got, e_ref = layer_error(w, got[name].weight, st.hessian), layer_error(w, ref.weight, st.hessian)
            torch.testing.assert_close(e_got, e_ref, rtol=1e-3, atol=0)


def test_group_step_is_the_column_recurrence():
    """The closed-form group step equals OBS applied one column at a time on random groups (float64)."""
    from sparse24.prune.sparsegpt import _group_obs

    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, dtype=torch.float64, generator=g)
    u = torch.linalg.cholesky(a @ a.t() + 4 * torch.eye(4, dtype=torch.float64), upper=True)  # [4, 4] upper
    w = torch.randn(64, 4, dtype=torch.float64, generator=g)
    w[:8] = torch.randint(-1, 2, (8, 4), generator=g).double()  # ties
    gone, e = _group_obs(w, u, torch.diagonal(u))
    ref_w, ref_e = w.clone(), torch.zeros_like(w)
    score = w.square() / torch.diagonal(u).square()
    for r in range(w.shape[0]):  # brute force: rank by (score, later index wins ties), prune the 2 lowest
        order = sorted(range(4), key=lambda j: (float(score[r, j]), j))
        assert set(torch.nonzero(gone[r]).flatten().tolist()) == set(order[:2])
        for j in range(4):
            if gone[r, j]:
                ref_e[r, j] = ref_w[r, j] / u[j, j]
                ref_w[r, j:] -= ref_e[r, j] * u[j, j:]
    torch.testing.assert_close(e, ref_e)


def test_inverse_cholesky_is_the_upper_factor_of_the_damped_inverse():
    """U is upper with a positive diagonal and UᵀU = (H + λI)⁻¹ (float64 inverse), λ = percdamp·mean diag H; an
    indefinite H raises λ tenfold until the factorisation succeeds."""
    from sparse24.prune.sparsegpt import inverse_cholesky

    g = torch.Generator().manual_seed(4)
    x = correlated_inputs(400, 40, g).double()
    h = 2 * x.t() @ x / 100
    u, lam = inverse_cholesky(h, 0.01)
    assert lam == pytest.approx(0.01 * float(h.diagonal().mean()))
    assert torch.equal(u, u.triu()) and (u.diagonal() > 0).all()
    ref = torch.linalg.inv(h + lam * torch.eye(40, dtype=torch.float64))
    torch.testing.assert_close(u.t() @ u, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    evals, evecs = torch.linalg.eigh(h)
    bad = h - (evals[0] + 0.05 * float(h.diagonal().mean())) * evecs[:, :1] @ evecs[:, :1].t()  # min eig -5 % mean
    u2, lam2 = inverse_cholesky(bad, 0.01)
    assert lam2 == pytest.approx(0.1 * float(bad.diagonal().mean()))
    torch.testing.assert_close(u2.t() @ u2, torch.linalg.inv(bad + lam2 * torch.eye(40, dtype=torch.float64)),
                               rtol=1e-7, atol=1e-7)
