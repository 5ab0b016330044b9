"""Exact least-squares refit on a fixed mask, and the ``sparsegpt-refit`` pruner, against float64 references."""

from __future__ import annotations

import pytest
import torch
from prune_fixtures import correlated_inputs
from sparse24.prune.base import LayerStats, get_pruner
from sparse24.prune.refit import REFIT, layer_error, refit_rows
from sparse24.prune.sparsegpt import sparsegpt_24

from sparse24.masks import magnitude_mask_24


def _stats(x: torch.Tensor, nsamples: int) -> LayerStats:
    return LayerStats(nsamples, x.shape[0], sqnorm=x.square().sum(0) / nsamples, hessian=2 * x.t() @ x / nsamples)


def _lstsq_reference(w: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, damp: float) -> torch.Tensor:
    """Per row: argmin ‖X (w − ŵ)‖² + damp ‖w − ŵ‖² over ŵ on its kept columns (float64 lstsq on [X; √damp I])."""
    xa = torch.cat([x, damp**0.5 * torch.eye(x.shape[1], dtype=torch.float64)])  # [T + in, in]
    out = torch.zeros_like(w)
    for r in range(w.shape[0]):
        s = mask[r].nonzero().squeeze(1)
        out[r, s] = torch.linalg.lstsq(xa[:, s], (xa @ w[r]).unsqueeze(1)).solution.squeeze(1)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_refit_equals_per_row_lstsq(seed):
    g = torch.Generator().manual_seed(seed)
    x = correlated_inputs(300, 48, g)  # [T, in]
    w = torch.randn(12, 48, dtype=torch.float64, generator=g)
    mask = magnitude_mask_24(torch.randn(12, 48, generator=g))
    damp = 0.3
    h = x.t() @ x + damp * torch.eye(48, dtype=torch.float64)
    ref = _lstsq_reference(w, mask, x, damp)
    got = refit_rows(w, mask, h, tol=1e-12, max_iters=1000)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9)
    # the pruners' float32 setting reaches the same objective to 1e-6 relative
    fast = refit_rows(w, mask, h, **REFIT)
    assert ((fast != 0) <= mask).all()
    e_ref, e_fast = float(layer_error(w, ref, h).sum()), float(layer_error(w, fast, h).sum())
    assert e_ref <= e_fast <= e_ref * (1 + 1e-6)


def test_refit_rejects_unequal_rows_and_bad_shapes():
    h = torch.eye(8, dtype=torch.float64)
    mask = torch.ones(2, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="do not match"):
        refit_rows(torch.zeros(2, 8), mask, torch.eye(4))
    assert torch.equal(refit_rows(torch.ones(2, 8), mask, h), torch.ones(2, 8, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparsegpt_refit_never_worse_than_sparsegpt(seed):
    g = torch.Generator().manual_seed(seed)
    x = correlated_inputs(1024, 64, g)
    w = torch.randn(32, 64, dtype=torch.float32, generator=g)
    stats = _stats(x, 8)
    res = get_pruner("sparsegpt-refit").prune(w, stats)
    sg, sg_mask = sparsegpt_24(w, stats.hessian)
    assert res.weight.dtype == w.dtype and torch.equal(res.mask, sg_mask)
    assert (res.mask.reshape(-1, 4).sum(-1) == 2).all() and ((res.weight != 0) <= res.mask).all()
    err = (x @ (w.double() - res.weight.double()).t()).square().sum(0)  # [out] ‖(W − Ŵ) X‖² per row
    err_sg = (x @ (w.double() - sg.double()).t()).square().sum(0)
    assert (err <= err_sg * (1 + 1e-6)).all()
    assert err.sum() < 0.97 * err_sg.sum()  # the refit pays on correlated inputs


def test_refit_pruner_needs_the_hessian():
    with pytest.raises(ValueError, match="sparse24 prune"):
        get_pruner("sparsegpt-refit").prune(torch.randn(4, 8), None)
    with pytest.raises(ValueError, match="multiple of 4"):
        get_pruner("sparsegpt-refit", blocksize=6)
