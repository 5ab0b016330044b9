"""cuSPARSELt alg_id search: the on-disk cache and the correctness guard, with a fake matmul on the CPU."""

from __future__ import annotations

import json

import torch
from sparse24.kernels.cslt_search import DENSE_FALLBACK, AlgCache, guard_ok, search_alg_id, token_bucket, tune


def test_cache_roundtrip_atomic_and_corrupt_file(tmp_path):
    path = tmp_path / "sub" / "cslt_algs.json"
    cache = AlgCache(path)
    assert cache.get("k") is None
    cache.put("k", 7)
    cache.put("k2", -1)
    cache.put("k3", (4, 2, 1))
    assert json.loads(path.read_text()) == {"k": [7, 1, -1], "k2": [-1, 1, -1], "k3": [4, 2, 1]}
    assert AlgCache(path).get("k") == (7, 1, -1) and AlgCache(path).get("k3") == (4, 2, 1)  # a new process/object
    assert [p.name for p in path.parent.iterdir()] == ["cslt_algs.json"]  # no temp files left behind
    path.write_text("{not json")
    broken = AlgCache(path)
    assert broken.get("k") is None  # a corrupt cache is ignored ...
    broken.put("k", 3)
    assert json.loads(path.read_text()) == {"k": [3, 1, -1]}  # ... and rewritten
    path.write_text(json.dumps({"old": 5}))  # an entry from before split-K
    assert AlgCache(path).get("old") == (5, 1, -1)


def test_default_path_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE24_CACHE", str(tmp_path))
    assert AlgCache().path == tmp_path / "cslt_algs.json"


def _fake_matmul(x: torch.Tensor, w: torch.Tensor):
    """alg 0: correct but slow; 1: correct, fastest; 2: raises; 3: non-deterministic; 4: wrong; 5: correct, slow."""
    ref = x.double() @ w.double().t()
    good = (x.float() @ w.float().t()).double()
    calls = {"n": 0}

    def run(alg: int) -> torch.Tensor:
        calls["n"] += 1
        if alg == 2:
            raise RuntimeError("CUSPARSE_STATUS_INVALID_VALUE")
        if alg == 3:
            return good + calls["n"] * 1e-3
        if alg == 4:
            return good * 1.5
        return good.clone()

    times = {0: 3.0, 1: 1.0, 3: 0.1, 4: 0.1, 5: 2.0}
    return run, ref, times


def test_search_picks_fastest_alg_that_passes_the_guard():
    x, w = torch.randn(16, 32), torch.randn(8, 32)
    run, ref, times = _fake_matmul(x, w)
    timed = []

    def timer(fn):
        fn()
        alg = timed_alg[0]
        timed.append(alg)
        return times[alg]

    timed_alg = [None]

    def run_tracked(alg):
        timed_alg[0] = alg
        return run(alg)

    best = search_alg_id(run_tracked, ref, range(6), timer, max_rel_err=1e-5)
    assert best == 1
    assert sorted(timed) == [0, 1, 5]  # the failing algorithms are never timed


def test_search_returns_minus_one_when_nothing_passes():
    x, w = torch.randn(8, 16), torch.randn(4, 16)
    run, ref, _ = _fake_matmul(x, w)
    assert search_alg_id(run, ref, [2, 3, 4], lambda fn: 1.0, max_rel_err=1e-5) == -1


def test_guard_rules():
    ref = torch.randn(4, 4, dtype=torch.float64)
    out = ref.float().double()
    assert guard_ok(out, out.clone(), ref, 1e-6)
    assert not guard_ok(out, out + 1e-3, ref, 1e-6)  # two runs differ
    assert not guard_ok(out * 2, out * 2, ref, 1e-6)  # wrong
    bad = out.clone()
    bad[0, 0] = float("nan")
    assert not guard_ok(bad, bad.clone(), ref, 1e-6)
    assert not guard_ok(out[:2], out[:2], ref, 1e-6)  # wrong shape


def test_token_bucket():
    assert [token_bucket(t) for t in (1, 8, 9, 100, 4096, 10**6)] == [8, 8, 16, 128, 4096, 16384]


def test_tune_trusts_torch_search_after_one_guard():
    x, w = torch.randn(16, 32), torch.randn(8, 32)
    run, ref, _ = _fake_matmul(x, w)
    runs, timed = [], []

    def run_cfg(cfg):
        runs.append(cfg)
        return run(cfg[0])

    cfg = tune(run_cfg, ref, lambda: (5, 2, 1, 5), lambda fn: timed.append(1) or 1.0, max_rel_err=1e-5)
    assert cfg == (5, 2, 1) and runs == [(5, 2, 1)] * 2 and not timed  # guarded once, no blind sweep


def test_tune_falls_back_to_guarded_sweep_up_to_the_searched_max():
    x, w = torch.randn(16, 32), torch.randn(8, 32)
    run, ref, times = _fake_matmul(x, w)
    last = [None]

    def run_cfg(cfg):
        last[0] = cfg[0]
        return run(cfg[0])

    def timer(fn):
        fn()
        return times[last[0]]

    assert tune(run_cfg, ref, lambda: (4, 1, -1, 5), timer, 1e-5) == (1, 1, -1)  # searched alg 4 is wrong
    assert tune(run_cfg, ref, lambda: 3, timer, 1e-5, default_max_alg=5) == (1, 1, -1)  # old API: an int
    assert tune(run_cfg, ref, None, timer, 1e-5, default_max_alg=0) == (0, 1, -1)
    assert tune(lambda c: run(4), ref, lambda: (1, 1, -1, 2), timer, 1e-5) == DENSE_FALLBACK  # nothing passes

    def broken():
        raise RuntimeError("search unsupported")

    def other_signature():
        raise TypeError("mm_search() takes 3 positional arguments")

    assert tune(run_cfg, ref, broken, timer, 1e-5, default_max_alg=2) == (1, 1, -1)
    assert tune(run_cfg, ref, other_signature, timer, 1e-5, default_max_alg=2) == (1, 1, -1)
