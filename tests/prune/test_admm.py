"""The ``admm`` pruner (ADMM 2:4 mask search + exact refit) against brute force and SparseGPT on the same data."""

from __future__ import annotations

import itertools

import pytest
import torch
from prune_fixtures import correlated_inputs
from sparse24.prune.admm import project_24
from sparse24.prune.base import LayerStats, get_pruner
from sparse24.prune.driver import DriverArgs, prune_layers
from sparse24.prune.resume import WorkState
from sparse24.prune.sparsegpt import sparsegpt_24


def _stats(x: torch.Tensor, nsamples: int) -> LayerStats:
    return LayerStats(nsamples, x.shape[0], sqnorm=x.square().sum(0) / nsamples, hessian=2 * x.t() @ x / nsamples)


def test_project_24_keeps_the_best_pair_of_every_group():
    v = torch.randn(6, 16)
    keep = project_24(v)
    for r, g0 in itertools.product(range(6), range(0, 16, 4)):
        grp = v[r, g0 : g0 + 4].abs()
        best = max(itertools.combinations(range(4), 2), key=lambda p: float(grp[p[0]] + grp[p[1]]))
        assert keep[r, g0 : g0 + 4].nonzero().squeeze(1).tolist() == sorted(best)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_admm_error_never_above_sparsegpt_and_exactly_24(seed):
    g = torch.Generator().manual_seed(seed)
    x = correlated_inputs(2048, 96, g)  # [T, in]
    w = torch.randn(48, 96, dtype=torch.float32, generator=g)
    stats = _stats(x, 8)
    res = get_pruner("admm").prune(w, stats)
    sg, _ = sparsegpt_24(w, stats.hessian)
    assert res.weight.dtype == w.dtype and res.mask.dtype == torch.bool
    assert (res.mask.reshape(-1, 4).sum(-1) == 2).all() and ((res.weight != 0) <= res.mask).all()
    err = (x @ (w.double() - res.weight.double()).t()).square().sum(0)  # [out] ‖(W − Ŵ) X‖² per row
    err_sg = (x @ (w.double() - sg.double()).t()).square().sum(0)
    assert (err <= err_sg * (1 + 1e-6)).all()
    assert err.sum() < 0.9 * err_sg.sum()  # and clearly lower in total on correlated inputs


def test_shared_input_reuses_the_factorisation_correctly():
    g = torch.Generator().manual_seed(3)
    x1, x2 = correlated_inputs(512, 32, g), correlated_inputs(512, 32, g)
    w = torch.randn(8, 32, generator=g)
    s1, s2 = _stats(x1, 2), _stats(x2, 2)
    shared = get_pruner("admm", iters=10)
    a, b, c = shared.prune(w, s1), shared.prune(w, s2), shared.prune(w, s1)  # s2 must not reuse s1's cache
    for res, s in ((a, s1), (b, s2), (c, s1)):
        fresh = get_pruner("admm", iters=10).prune(w, s)
        assert torch.equal(res.weight, fresh.weight) and torch.equal(res.mask, fresh.mask)
    assert not torch.equal(a.weight, b.weight)


def test_admm_through_the_driver_is_24(tiny_model_dir, tmp_path):
    calib = torch.randint(0, 300, (4, 16))
    opts = DriverArgs(targets=["*.0.mlp.*", "*.0.self_attn.*"], progress=False)
    out = prune_layers(tiny_model_dir, get_pruner("admm", iters=8), calib, opts, WorkState(tmp_path / "w", {}))
    assert len(out.weights) == 7
    for n, w in out.weights.items():
        assert ((w != 0).reshape(-1, 4).sum(-1) <= 2).all() and (out.masks[n].reshape(-1, 4).sum(-1) == 2).all()
    assert all(r["is_24"] for r in out.report)


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError, match="rho_start"):
        get_pruner("admm", rho_start=5.0, rho_end=1.0)
    with pytest.raises(ValueError, match="iters"):
        get_pruner("admm", iters=0)
    with pytest.raises(ValueError, match="sparse24 prune"):
        get_pruner("admm").prune(torch.randn(4, 8), None)
