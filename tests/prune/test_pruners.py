"""Single-layer pruners against independent float64 references."""

from __future__ import annotations

import itertools

import pytest
import torch
from prune_fixtures import correlated_inputs
from sparse24.prune.base import LayerStats, get_pruner
from sparse24.prune.stats import StatsCollector
from torch import nn


def _top2_keep(score: torch.Tensor) -> torch.Tensor:
    """Brute force: per group of 4, keep the 2 largest scores; on ties the later index ranks higher."""
    keep = torch.zeros_like(score, dtype=torch.bool)
    rows, cols = score.shape
    for r, g in itertools.product(range(rows), range(0, cols, 4)):
        order = sorted(range(4), key=lambda j: (float(score[r, g + j]), j), reverse=True)
        keep[r, g + order[0]] = keep[r, g + order[1]] = True
    return keep


def _stats_from(x: torch.Tensor, nsamples: int) -> LayerStats:
    x = x.double()
    return LayerStats(nsamples, x.shape[0], sqnorm=x.square().sum(0) / nsamples, hessian=2 * x.t() @ x / nsamples)


def test_collector_matches_float64_sums():
    lin = nn.Linear(32, 8)
    x = torch.randn(5, 16, 32)  # 5 samples of 16 tokens
    col = StatsCollector({"a": lin}, "hessian")
    for b in range(0, 5, 2):
        col.begin_batch(x[b : b + 2].shape[0])
        lin(x[b : b + 2])
    col.remove()
    s = col.stats()["a"]
    ref = _stats_from(x.reshape(-1, 32), 5)
    assert s.nsamples == 5 and s.tokens == 80
    torch.testing.assert_close(s.hessian, ref.hessian, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.sqnorm, ref.sqnorm, rtol=1e-5, atol=1e-5)


def test_shared_input_shares_one_accumulator():
    q, k = nn.Linear(16, 8), nn.Linear(16, 4)
    col = StatsCollector({"q": q, "k": k}, "sqnorm")
    col.begin_batch(1)
    x = torch.randn(1, 10, 16)
    q(x), k(x), k(torch.randn(1, 10, 16) * 0 + x)  # third call: equal values but a different tensor
    col.remove()
    assert col.owner == {"q": "q", "k": "k"} and set(col.acc) == {"q", "k"}
    col2 = StatsCollector({"q": q, "k": k}, "sqnorm")
    col2.begin_batch(1)
    q(x), k(x)
    assert col2.owner["k"] == "q" and set(col2.acc) == {"q"}


def test_wanda_scores_and_mask_vs_float64_formula():
    w = torch.randn(24, 64)
    x = torch.randn(300, 64) * torch.rand(64) * 3
    stats = _stats_from(x, nsamples=3)
    res = get_pruner("wanda").prune(w, stats)
    score = w.double().abs() * (x.double().square().sum(0) / 3).sqrt()  # |W_ij| * ||X_j||_2 (per-sample mean)
    keep = _top2_keep(score)
    assert torch.equal(res.mask, keep)
    assert torch.equal(res.weight, w * keep)


def test_magnitude_tie_rule_later_index_wins():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0, -2.0, 2.0, 0.5]])
    res = get_pruner("magnitude").prune(w, None)
    assert res.mask.tolist() == [[False, False, True, True, True, False, True, False]]
    w = torch.randint(-3, 4, (16, 32)).float()  # many ties
    assert torch.equal(get_pruner("magnitude").prune(w, None).mask, _top2_keep(w.abs()))


def _obs_reference(w: torch.Tensor, h: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward float64 OBS: for every column, invert the Hessian of the remaining columns explicitly."""
    w, h = w.double().clone(), h.double().clone()
    n = h.shape[0]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.diagonal(h).mean() * torch.eye(n, dtype=torch.float64)
    keep = torch.ones_like(w, dtype=torch.bool)
    for i in range(n):
        finv = torch.linalg.inv(h[i:, i:])  # inverse Hessian of the columns not yet fixed
        if i % 4 == 0:
            diag = torch.tensor([torch.linalg.inv(h[j:, j:])[0, 0] for j in range(i, i + 4)], dtype=torch.float64)
            score = w[:, i : i + 4] ** 2 / diag  # w^2 / [H_F^-1]_jj  (= w^2 / U_jj^2)
            keep[:, i : i + 4] = _top2_keep(score)
        q = torch.where(keep[:, i], w[:, i], torch.zeros_like(w[:, i]))
        err = (w[:, i] - q) / finv[0, 0]
        w[:, i:] -= err[:, None] * finv[0][None, :]
        w[:, i] = q
    return w, keep


@pytest.mark.parametrize("blocksize", [8, 128])
def test_sparsegpt_matches_float64_obs(blocksize):
    x = correlated_inputs(512, 48)
    x[:, 5] = 0  # a dead input column
    w = torch.randn(16, 48, dtype=torch.float64)
    stats = _stats_from(x, 4)
    res = get_pruner("sparsegpt", blocksize=blocksize).prune(w, stats)
    ref_w, ref_keep = _obs_reference(w, stats.hessian)
    assert torch.equal(res.mask, ref_keep)
    torch.testing.assert_close(res.weight, ref_w * ref_keep, rtol=1e-8, atol=1e-9)
    assert (res.weight[:, 5] == 0).all()


def test_reconstruction_error_ordering_on_correlated_inputs():
    x = correlated_inputs(4096, 128)
    w = torch.randn(64, 128, dtype=torch.float64)
    stats = _stats_from(x, 8)
    errs = {}
    for m in ("magnitude", "wanda", "sparsegpt"):
        new = get_pruner(m).prune(w, stats).weight
        errs[m] = float((x @ (w - new).t()).square().sum() / (x @ w.t()).square().sum())
    assert errs["sparsegpt"] <= errs["wanda"] <= errs["magnitude"], errs


def test_every_pruner_output_is_exactly_24():
    x = correlated_inputs(256, 32)
    w = torch.randn(8, 32)
    for m in ("magnitude", "wanda", "sparsegpt"):
        res = get_pruner(m).prune(w, _stats_from(x, 2))
        assert res.weight.dtype == w.dtype
        assert (res.mask.reshape(-1, 4).sum(-1) == 2).all()
        assert ((res.weight != 0) <= res.mask).all()


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="--method list"):
        get_pruner("nope")
    with pytest.raises(ValueError, match="calibration"):
        get_pruner("wanda").prune(torch.randn(4, 8), None)
    with pytest.raises(ValueError, match="multiple of 4"):
        get_pruner("sparsegpt", blocksize=6)


def test_statistics_stay_float32_inside_a_bf16_autocast_forward():
    """The driver runs calibration forwards under bf16 autocast (--forward-dtype); the hooks' x xᵀ must not be
    computed in bf16 (that made H indefinite by ~1 % and broke ADMM's eigendecomposition)."""
    lin = nn.Linear(48, 8)
    x = torch.randn(4, 96, 48)
    col = StatsCollector({"a": lin}, "hessian")
    col.begin_batch(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lin(x)
    col.remove()
    ref = 2 * x.reshape(-1, 48).double().t() @ x.reshape(-1, 48).double() / 4
    torch.testing.assert_close(col.stats()["a"].hessian, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("features", [64, 576, 1100])
def test_gram_equals_the_float64_product(features):
    """The blocked upper-triangle xᵀx equals the float64 product (to float32 rounding) and is exactly symmetric."""
    from sparse24.prune.stats import gram

    x = torch.randn(300, features)
    h = gram(x)
    ref = x.double().t() @ x.double()
    torch.testing.assert_close(h.double(), ref, rtol=1e-5, atol=1e-3)
    assert torch.equal(h, h.t())


@pytest.mark.parametrize("features", [64, 576, 1100])
def test_gram_of_bf16_values_equals_the_float64_product(features):
    """A linear input produced under bf16 autocast holds bf16 numbers: its xᵀx may take oneDNN's bf16 path (exact
    conversions, float32 sums) and still equals the float64 product to float32 rounding; the flag is restored."""
    from sparse24.prune.stats import gram

    before = torch.backends.mkldnn.matmul.fp32_precision
    x = (torch.randn(300, features) * torch.rand(features) * 4).bfloat16().float()  # [tokens, in] bf16 values
    h = gram(x, bf16_values=True)
    ref = x.double().t() @ x.double()
    torch.testing.assert_close(h.double(), ref, rtol=1e-5, atol=1e-3)
    assert torch.equal(h, h.t())
    assert torch.backends.mkldnn.matmul.fp32_precision == before


def test_hessian_of_a_bf16_input_is_its_float64_product():
    """The hooks see a bf16 tensor (an o_proj/down_proj input under autocast): H is the float64 product of those
    bf16 numbers, exactly symmetric and positive semi-definite."""
    lin = nn.Linear(96, 8)
    x = torch.randn(4, 128, 96).bfloat16()
    col = StatsCollector({"a": lin}, "hessian")
    col.begin_batch(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lin(x)
    col.remove()
    x64 = x.reshape(-1, 96).double()
    h = col.stats()["a"].hessian
    torch.testing.assert_close(h, 2 * x64.t() @ x64 / 4, rtol=1e-5, atol=1e-4)
    assert torch.equal(h, h.t()) and float(torch.linalg.eigvalsh(h).min()) > -1e-6 * float(h.diagonal().max())
