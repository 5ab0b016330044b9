"""cuSPARSELt tuning (``alg_id``, split-K) through torch's own search, with a correctness guard, cached on disk.

Why: on H100 the default algorithm is often slower than dense (pytorch#153825), and some algorithms return wrong,
non-deterministic results (pytorch#155333; xformers turned tuning off because of it). So every candidate is run
twice and checked against the dense product before it is used. torch's search (``torch._C._cusparselt.mm_search``:
alg id, split-K and its mode, and the real maximum alg id of this library and layout) proposes one configuration,
which is guarded; only if it fails is every alg id guarded and timed. Once per (weight shape, token bucket, dtype,
device, library versions). Results live in ``~/.cache/sparse24/cslt_algs.json``
(``SPARSE24_CACHE`` moves it), written atomically (temp file + rename), so concurrent jobs never read a
half-written file; the last writer wins, which is harmless because entries are deterministic choices.

The search/guard logic takes callables (``run(alg_id) -> Tensor``, ``timer(fn) -> seconds``) so it is tested on the
CPU with a fake matmul; :func:`cslt_alg_id` is the CUDA glue.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("sparse24")

__all__ = ["AlgCache", "guard_ok", "search_alg_id", "tune", "torch_search", "token_bucket", "cslt_config",
           "cslt_alg_id",
           "default_cache_path", "DENSE_FALLBACK"]


def default_cache_path() -> Path:
    from sparse24.assets import cache_dir

    return cache_dir() / "cslt_algs.json"


class AlgCache:
    """A JSON dict ``key -> [alg_id, split_k, split_k_mode]`` (``alg_id -1``: nothing passed the guard, use dense) with
    atomic writes. Entries written as a bare ``alg_id`` by older versions read as ``[alg_id, 1, -1]``."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self._data: dict[str, tuple[int, int, int]] | None = None

    def _load(self) -> dict[str, tuple[int, int, int]]:
        if self._data is None:
            try:
                raw = json.loads(self.path.read_text())
                self._data = {str(k): _entry(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            except FileNotFoundError:
                self._data = {}
            except (ValueError, TypeError, OSError) as e:  # a corrupt cache is rebuilt, never fatal
                log.warning("sparse24: ignoring unreadable alg cache %s (%s); it will be rewritten", self.path, e)
                self._data = {}
        return self._data

    def get(self, key: str) -> tuple[int, int, int] | None:
        return self._load().get(key)

    def put(self, key: str, config: int | tuple[int, int, int]) -> None:
        data = self._load()
        data[key] = _entry(config)
        from sparse24.fileio import atomic_write_text

        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))


def _entry(v) -> tuple[int, int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 3:
            raise ValueError(f"alg cache entry {v!r} is not [alg_id, split_k, split_k_mode]")
        return (int(v[0]), int(v[1]), int(v[2]))
    return (int(v), 1, -1)


def token_bucket(tokens: int) -> int:
    """Next power of two >= tokens (at least 8, at most 16384): algorithms are searched per bucket."""
    return int(min(max(8, 2 ** math.ceil(math.log2(max(tokens, 1)))), 16384))


def guard_ok(out: Tensor, again: Tensor, reference: Tensor, max_rel_err: float) -> bool:
    """Deterministic (two runs identical) and within ``max_rel_err`` (relative Frobenius) of the dense reference."""
    if out.shape != reference.shape or not torch.equal(out, again):
        return False
    if not bool(torch.isfinite(out).all()):
        return False
    ref = reference.double()
    err = (out.double() - ref).norm() / ref.norm().clamp_min(1e-30)
    return bool(err <= max_rel_err)


def search_alg_id(
    run: Callable[[Any], Tensor],
    reference: Tensor,
    candidates: Iterable[Any],
    timer: Callable[[Callable[[], Tensor]], float],
    max_rel_err: float,
) -> Any:
    """Fastest candidate that passes :func:`guard_ok`; ``-1`` when none does. Candidates that raise are skipped."""
    best, best_t = -1, float("inf")
    for alg in candidates:
        try:
            out, again = run(alg), run(alg)
        except RuntimeError as e:  # alg_id beyond what this cuSPARSELt build offers
            log.debug("sparse24: cuSPARSELt config %s unavailable: %s", alg, e)
            continue
        if not guard_ok(out, again, reference, max_rel_err):
            log.warning("sparse24: cuSPARSELt config %s failed the correctness guard (pytorch#155333); skipped", alg)
            continue
        t = timer(lambda a=alg: run(a))
        if t < best_t:
            best, best_t = alg, t
    return best


def _cuda_timer(fn: Callable[[], Tensor], reps: int = 10) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


Config = tuple[int, int, int]  # (alg_id, split_k, split_k_mode); alg_id -1: no algorithm passed, run dense
DENSE_FALLBACK: Config = (-1, 1, -1)


def torch_search(search: Callable[[], object]) -> tuple[Config, int | None]:
    """Normalise torch's own search result to ``((alg_id, split_k, split_k_mode), max_alg_id or None)``.

    ``torch._C._cusparselt.mm_search`` returns ``(alg_id, split_k, split_k_mode, max_alg_id)`` in current torch;
    older builds (``torch._cslt_sparse_mm_search``) return only the alg id.
    """
    r = search()
    if isinstance(r, (tuple, list)):
        vals = [int(v) for v in r] + [1, -1, -1][len(r) - 1:]
        return (vals[0], vals[1], vals[2]), (vals[3] if len(vals) > 3 and vals[3] >= 0 else None)
    return (int(r), 1, -1), None


def tune(
    run: Callable[[Config], Tensor],
    reference: Tensor,
    search: Callable[[], object] | None,
    timer: Callable[[Callable[[], Tensor]], float],
    max_rel_err: float,
    default_max_alg: int = 64,
) -> Config:
    """The configuration to use for one (shape, token bucket, dtype, device, library) entry.

    torch's search picks ``(alg_id, split_k, split_k_mode)``; that one candidate is guarded once (two runs equal,
    close to the fp64 reference). If it fails or there is no search, every ``alg_id`` up to the search's
    ``max_alg_id`` (else ``default_max_alg``) is guarded and timed with split-K off; nothing passing gives
    :data:`DENSE_FALLBACK`.
    """
    max_alg = None
    if search is not None:
        try:
            cfg, max_alg = torch_search(search)
            out, again = run(cfg), run(cfg)
            if guard_ok(out, again, reference, max_rel_err):
                return cfg
            log.warning("sparse24: cuSPARSELt's searched config %s failed the correctness guard; trying all", cfg)
        except (RuntimeError, TypeError, AttributeError) as e:  # no search in this build, or another signature
            log.warning("sparse24: cuSPARSELt search failed (%s); trying every alg_id", e)
    candidates = [(a, 1, -1) for a in range((max_alg if max_alg is not None else default_max_alg) + 1)]
    best = search_alg_id(run, reference, candidates, timer, max_rel_err)
    return best if best != -1 else DENSE_FALLBACK


_DEFAULT_CACHE: AlgCache | None = None
_MEMO: dict[tuple, Config] = {}


def _torch_searcher(packed: Tensor, b: Tensor) -> Callable[[], object] | None:
    mod = getattr(torch._C, "_cusparselt", None)
    if mod is not None and hasattr(mod, "mm_search"):
        return lambda: mod.mm_search(packed, b, None, None, None, True)
    if hasattr(torch, "_cslt_sparse_mm_search"):
        return lambda: torch._cslt_sparse_mm_search(packed, b, transpose_result=True)
    return None


def cslt_config(packed: Tensor, w: Tensor, tokens: int, cache: AlgCache | None = None) -> Config:
    """Guarded, cached ``(alg_id, split_k, split_k_mode)`` for ``x @ w.T`` with ``x [tokens, in]`` on cuSPARSELt."""
    global _DEFAULT_CACHE
    bucket = token_bucket(tokens)
    memo = (tuple(w.shape), bucket, w.dtype, w.device, id(cache))
    if memo in _MEMO:  # the per-call fast path: no string building, no file access
        return _MEMO[memo]
    if cache is None:
        cache = _DEFAULT_CACHE = _DEFAULT_CACHE or AlgCache()
    dev = torch.cuda.get_device_properties(w.device)
    cc = torch.cuda.get_device_capability(w.device)
    key = (f"{w.shape[0]}x{w.shape[1]}|T{bucket}|{str(w.dtype).removeprefix('torch.')}|{dev.name}|sm{cc[0]}{cc[1]}"
           f"|cslt{torch.backends.cusparselt.version()}|torch{torch.__version__}")
    hit = cache.get(key)
    if hit is not None:
        _MEMO[memo] = hit
        return hit
    x = torch.randn(bucket, w.shape[1], device=w.device, dtype=w.dtype)
    ref = x.double() @ w.double().t()  # [T, out]
    dense_err = float((x @ w.t()).double().sub(ref).norm() / ref.norm().clamp_min(1e-30))

    def run(cfg: Config) -> Tensor:
        kw = {"split_k": cfg[1], "split_k_mode": cfg[2]} if cfg[1] != 1 else {}  # older torch: no split-K
        return torch._cslt_sparse_mm(packed, x.t(), transpose_result=True, alg_id=cfg[0], **kw)

    cfg = tune(run, ref, _torch_searcher(packed, x.t()), _cuda_timer, max_rel_err=2 * dense_err + 1e-6,
               default_max_alg=torch.backends.cusparselt.get_max_alg_id() or 64)
    if cfg[0] < 0:
        log.warning("sparse24: no cuSPARSELt algorithm passed the guard for %s; this shape runs dense", key)
    cache.put(key, cfg)
    _MEMO[memo] = cfg
    return cfg


def cslt_alg_id(packed: Tensor, w: Tensor, tokens: int, cache: AlgCache | None = None) -> int:
    """The ``alg_id`` part of :func:`cslt_config` (-1: use dense)."""
    return cslt_config(packed, w, tokens, cache)[0]
