"""``--method lowrank`` (2:4 core + a rank-r term): the low-rank step against Eckart-Young in float64, the alternation
against its start and a per-row ``lstsq`` refit, and the CLI end to end (folder, ``sparse24.load``, resume)."""

from __future__ import annotations

import json

import pytest
import torch
from prune_fixtures import correlated_inputs, make_model_dir
from safetensors.torch import load_file
from sparse24.prune import cli as prune_cli
from sparse24.prune.admm import Factorised
from sparse24.prune.base import LayerStats, get_pruner
from sparse24.prune.lowrank import LowRankArgs, best_low_rank, lowrank_layer, whiten
from sparse24.prune.refit import layer_error


def _problem(seed: int, out_f: int = 24, in_f: int = 32, tokens: int = 256):
    g = torch.Generator().manual_seed(seed)
    x = correlated_inputs(tokens, in_f, g)  # [T, in]
    w = torch.randn(out_f, in_f, dtype=torch.float64, generator=g)  # [out, in]
    h = 2 * x.T @ x / tokens  # [in, in]
    return w, h


def test_whiten_and_best_low_rank_match_eckart_young():
    w, h = _problem(1)
    hd = h + 0.01 * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    c, c_inv = whiten(hd)
    torch.testing.assert_close(c @ c.T, hd)
    torch.testing.assert_close(c @ c_inv, torch.eye(h.shape[0], dtype=h.dtype))
    e = torch.randn(w.shape, dtype=torch.float64)
    sv = torch.linalg.svdvals(e @ torch.linalg.cholesky(hd))  # independent: the spectrum of E·C
    for r in (1, 4, 9):
        s, p = best_low_rank(e, c, c_inv, r)
        assert s.shape == (w.shape[0], r) and p.shape == (r, w.shape[1])
        got = float(layer_error(e, s @ p, hd).sum())  # ‖(E − SP) C‖² = tr((E−SP) H (E−SP)ᵀ)
        assert got == pytest.approx(float(sv[r:].square().sum()), rel=1e-9)  # the Eckart-Young minimum
        rand = torch.randn(w.shape[0], r, dtype=torch.float64) @ torch.randn(r, w.shape[1], dtype=torch.float64)
        assert got < float(layer_error(e, 0.01 * rand, hd).sum())


def _fit(seed: int, rank: int, rounds: int):
    """(W, admm's result, admm's factorised Hessian, lowrank's fit from that result) on a fresh problem."""
    w, h = _problem(seed)
    start = get_pruner("admm").prune(w.float(), LayerStats(8, 256, sqnorm=torch.diagonal(h) / 2, hessian=h))
    f = Factorised(h, 0.01)
    return w, start, f, lowrank_layer(w, f.h, f, start.weight, start.mask, LowRankArgs(rank=rank, rounds=rounds), rank)


def test_lowrank_layer_never_worse_than_its_start():
    w, start, f, fit = _fit(2, 4, 3)
    assert all(b <= a for a, b in zip(fit.history, fit.history[1:]))  # every kept round lowers the objective
    assert fit.history[-1] < fit.history[0]
    start_err = float(layer_error(w, start.weight, f.h).sum())
    assert fit.history[0] == pytest.approx(start_err, rel=1e-6)
    assert float(layer_error(w, fit.weight, f.h).sum()) == pytest.approx(fit.history[-1], rel=1e-9)
    assert ((fit.mask.reshape(-1, 4).sum(-1)) == 2).all() and (fit.core[~fit.mask] == 0).all()  # exactly 2:4
    # given the core, the low-rank term is the best rank-4 one (Eckart-Young on the final residual, independently)
    sv = torch.linalg.svdvals((w - fit.core) @ torch.linalg.cholesky(f.h))
    assert fit.history[-1] == pytest.approx(float(sv[4:].square().sum()), rel=1e-9)


def test_lowrank_rounds_zero_is_start_plus_best_rank_r_term():
    w, start, f, fit = _fit(3, 2, 0)
    assert torch.equal(fit.mask, start.mask) and torch.equal(fit.core, start.weight.double())
    sv = torch.linalg.svdvals((w - start.weight.double()) @ torch.linalg.cholesky(f.h))
    assert fit.history[-1] == pytest.approx(float(sv[2:].square().sum()), rel=1e-9)


def test_lowrank_args_and_rank_checks():
    with pytest.raises(ValueError, match="--lowrank-rank"):
        LowRankArgs(rank=0)
    with pytest.raises(ValueError, match="--lowrank-budget"):
        LowRankArgs(budget=-1.0)
    with pytest.raises(ValueError, match="drop --lowrank-rank"):
        LowRankArgs(rank=8, budget=5.0)
    lin = torch.nn.Linear(64, 32)
    with pytest.raises(ValueError, match="exceeds the smaller dim"):
        get_pruner("lowrank", rank=40).prune(lin.weight.detach(), LayerStats(1, 64, hessian=torch.eye(64)))
    # --lowrank-budget: the largest rank with rank*(64+32) <= budget % of the 2,080 parameters (brute force)
    with pytest.raises(ValueError, match="raise --lowrank-budget"):
        get_pruner("lowrank", budget=3.0).setup(torch.nn.Sequential(lin), {"l": lin})  # rank 1 is 4.6 %
    for percent in (5.0, 20.0, 77.0):
        pruner = get_pruner("lowrank", budget=percent)
        pruner.setup(torch.nn.Sequential(lin), {"l": lin})
        assert pruner.rank == max(r for r in range(1, 33) if r * 96 <= percent / 100 * 2080)


def _args(model_dir, out, *extra: str) -> prune_cli.PruneJob:
    return prune_cli.parse_job([
        "--model", str(model_dir), "--method", "lowrank", "--calib", str(model_dir / "calib.txt"), "--nsamples", "4",
        "--seqlen", "32", "--batch-size", "4", "--lowrank-rank", "4", "--lowrank-rounds", "1",
        "--lowrank-admm-iters", "5", "--out", str(out), "--no-progress", *extra])


class Killed(Exception):
    pass


def _kill_after_first(i: int) -> None:
    if i == 0:
        raise Killed


def test_lowrank_cli_folder_load_and_resume(tmp_path):
    from sparse24.prune.slorb import SLoRBLinear

    from sparse24.loaders import load

    model_dir = make_model_dir(tmp_path / "m", layers=2)
    full = _args(model_dir, tmp_path / "full").prune()
    out = tmp_path / "full"
    record = json.loads((out / "sparse24_config.json").read_text())
    assert record["loader"] == "slorb" and record["method"] == "lowrank" and record["extra"]["check_24"] == "14/14"
    params = record["extra"]["lowrank"]["params"]
    mem = full.model
    lins = [m for m in mem.modules() if isinstance(m, SLoRBLinear)]
    assert params["rank"] == 4 and params["extra_params"] == sum(4 * (m.in_features + m.out_features) for m in lins)
    rows = {r["name"]: r for r in record["extra"]["report"]}
    assert all(r["lowrank_err"] < r["lowrank_err_init"] for r in rows.values())  # every layer gained
    # the saved 2:4 part is exactly 2:4; core + S·P is what the in-memory model (and the next layer) computed
    dense2 = load_file(str(out / "model.safetensors"))
    extra = load_file(str(out / "slorb.safetensors"))
    for fqn in rows:
        core = dense2[f"{fqn}.weight"].double()
        assert ((core.reshape(-1, 4) != 0).sum(-1) <= 2).all(), fqn
        s, p = extra[f"{fqn}.S"].double(), extra[f"{fqn}.P"].double()
        assert s.shape == (core.shape[0], 4) and p.shape == (4, core.shape[1])
        torch.testing.assert_close(mem.get_submodule(fqn).merged_weight().double(), core + s @ p)
    loaded, _, _ = load(str(out))
    assert sum(isinstance(m, SLoRBLinear) for m in loaded.modules()) == 14
    ids = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, mem(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    # a run killed after layer 0 resumes to the same files, bit for bit
    with pytest.raises(Killed):
        _args(model_dir, tmp_path / "cut").prune(on_layer_done=_kill_after_first)
    _args(model_dir, tmp_path / "cut").prune()
    for name in ("model.safetensors", "slorb.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(tmp_path / "cut" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
