"""SparseGPT internals: the shared-input factorisation cache and the float32 column loop."""

from __future__ import annotations

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
