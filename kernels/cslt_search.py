"""cuSPARSELt ``alg_id`` search with a correctness guard, cached on disk.

Why: on H100 the default algorithm is often slower than dense (pytorch#153825), and some algorithms return wrong,
non-deterministic results (pytorch#155333; xformers turned tuning off because of it). So every candidate is run
twice and checked against the dense product before its time counts; the fastest one that passes wins, once per
(weight shape, token bucket, dtype, device, library versions). Results live in ``~/.cache/sparse24/cslt_algs.json``
(``SPARSE24_CACHE_DIR`` overrides), written atomically (temp file + ``os.replace``), so concurrent jobs never read a
half-written file; the last writer wins, which is harmless because entries are deterministic choices.

The search/guard logic takes callables (``run(alg_id) -> Tensor``, ``timer(fn) -> seconds``) so it is tested on the
CPU with a fake matmul; :func:`cslt_alg_id` is the CUDA glue.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("sparse24")

__all__ = ["AlgCache", "guard_ok", "search_alg_id", "token_bucket", "cslt_alg_id", "default_cache_path"]


def default_cache_path() -> Path:
    root = os.environ.get("SPARSE24_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sparse24")
    return Path(root) / "cslt_algs.json"


class AlgCache:
    """A JSON dict ``key -> alg_id`` (``-1`` = no algorithm passed the guard: use dense) with atomic writes."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self._data: dict[str, int] | None = None

    def _load(self) -> dict[str, int]:
        if self._data is None:
            try:
                raw = json.loads(self.path.read_text())
                self._data = {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            except FileNotFoundError:
                self._data = {}
            except (ValueError, OSError) as e:  # a corrupt cache is rebuilt, never fatal
                log.warning("sparse24: ignoring unreadable alg cache %s (%s); it will be rewritten", self.path, e)
                self._data = {}
        return self._data

    def get(self, key: str) -> int | None:
        return self._load().get(key)

    def put(self, key: str, alg_id: int) -> None:
        data = self._load()
        data[key] = int(alg_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cslt_algs.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
    run: Callable[[int], Tensor],
    reference: Tensor,
    candidates: Iterable[int],
    timer: Callable[[Callable[[], Tensor]], float],
    max_rel_err: float,
) -> int:
    """Fastest candidate that passes :func:`guard_ok`; ``-1`` when none does. Candidates that raise are skipped."""
    best, best_t = -1, float("inf")
    for alg in candidates:
        try:
            out, again = run(alg), run(alg)
        except RuntimeError as e:  # alg_id beyond what this cuSPARSELt build offers
            log.debug("sparse24: cuSPARSELt alg_id %d unavailable: %s", alg, e)
            continue
        if not guard_ok(out, again, reference, max_rel_err):
            log.warning("sparse24: cuSPARSELt alg_id %d failed the correctness guard (pytorch#155333); skipped", alg)
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


_DEFAULT_CACHE: AlgCache | None = None
_MEMO: dict[tuple, int] = {}


def cslt_alg_id(packed: Tensor, w: Tensor, tokens: int, cache: AlgCache | None = None) -> int:
    """Guarded, cached ``alg_id`` for ``x @ w.T`` with ``x [tokens, in]`` on cuSPARSELt (-1: use dense)."""
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
    max_alg = torch.backends.cusparselt.get_max_alg_id() or 64

    def run(alg: int) -> Tensor:
        return torch._cslt_sparse_mm(packed, x.t(), transpose_result=True, alg_id=alg)

    alg = search_alg_id(run, ref, range(max_alg + 1), _cuda_timer, max_rel_err=2 * dense_err + 1e-6)
    if alg < 0:
        log.warning("sparse24: no cuSPARSELt algorithm passed the guard for %s; this shape runs dense", key)
    cache.put(key, alg)
    _MEMO[memo] = alg
    return alg
