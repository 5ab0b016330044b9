"""Matmul backends behind one registry: the single place where a backend is chosen.

A backend turns a 2:4 weight into what its kernels consume (``prepare``: compress/pack, or nothing) and runs the
three training products: ``linear`` (``Y = X W̃ᵀ + b``), ``grad_input`` (``∇X = ∇Y W̃``) and ``grad_weight``
(``∇W = G X`` for ``G = ∇Yᵀ``, sparse when ``G`` is 2:4 along tokens, i.e. MVUE-sampled). ``dense`` (``F.linear``
on the masked weight) is the reference and runs everywhere; the GPU implementations (cuSPARSELt, CUTLASS, Triton)
live in :mod:`sparse24.kernels.backends` and register here when that module is imported.

Choice happens once per (weight shape, compute dtype, device), in :func:`resolve`, never per call: an explicit
``backend=`` wins, then ``SPARSE24_BACKEND``, then ``"auto"``, which takes the first backend (by priority) that
supports the shape, dtype and device. Environment variables are read then, not per forward. A forced backend that
cannot run raises with the limit that failed; it never falls back silently. The result is a :class:`Plan`, which
also carries the measured crossover (``SPARSE24_MIN_TOKENS``) below which ``auto`` runs the dense product so that
decode is never slower than dense.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger("sparse24")

__all__ = ["BackendInfo", "Backend", "DenseBackend", "Plan", "register_backend", "get_backend", "resolve",
           "select_backend", "min_tokens", "BACKENDS"]

DEFAULT_MIN_TOKENS = 64  # not yet measured on a GPU; benchmarks/run_gpu.sh measures the crossover


@dataclass(frozen=True)
class BackendInfo:
    """What a backend can run. ``min_shape``/``multiple`` are (rows, cols) of the sparse weight ``[out, in]``."""

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    min_shape: tuple[int, int] = (1, 4)
    multiple: tuple[int, int] = (1, 4)
    min_capability: tuple[int, int] | None = None
    priority: int = 100  # auto tries lower numbers first

    def __post_init__(self) -> None:
        if not self.devices or not self.dtypes:
            raise ValueError(f"backend {self.name!r} must declare at least one device and one dtype")


class Backend:
    """Interface: subclasses set ``info`` and override ``prepare``/``linear``/``grad_input``/``grad_weight``.

    ``packs``: ``prepare`` is expensive (compression); :class:`~sparse24.linear.SparseLinear` then keeps its result
    on the module and re-prepares only when the weight, mask or β version changes (once per optimizer step).
    ``auto``: whether ``"auto"`` may pick this backend (False for numerics-changing or no-gain backends).
    ``native_fp8``: the backend quantises to FP8 itself (no simulation on top).
    ``emulated``: a CPU contract twin of a GPU backend (tests, smoke runs); never chosen by ``auto``.
    """

    info: BackendInfo
    packs: bool = False
    auto: bool = True
    native_fp8: bool = False
    emulated: bool = False

    def __deepcopy__(self, memo: dict) -> Backend:
        return self  # registry singletons: a copied model shares them (and their caches)

    def available(self) -> str | None:
        """Why this backend cannot run in this process at all (missing library), or None."""
        return None

    def check(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> str | None:
        """Why this backend cannot run a weight of ``shape``/``dtype`` on ``device``, or None if it can."""
        info = self.info
        why = self.available()
        if why:
            return why
        if device.type not in info.devices:
            return f"device {device.type!r} not supported (needs one of {list(info.devices)})"
        if dtype not in info.dtypes:
            return f"dtype {dtype} not supported (needs one of {[str(d) for d in info.dtypes]})"
        rows, cols = shape
        (rmin, cmin), (rmul, cmul) = info.min_shape, info.multiple
        if rows < rmin or cols < cmin or rows % rmul or cols % cmul:
            return (
                f"weight shape {tuple(shape)} not supported: needs rows >= {rmin} and a multiple of {rmul}, "
                f"cols >= {cmin} and a multiple of {cmul}; pad the layer or pick another backend"
            )
        if info.min_capability and device.type == "cuda":
            cc = torch.cuda.get_device_capability(device)
            if cc < info.min_capability:
                return f"GPU compute capability {cc} is below the required {info.min_capability}"
        return None

    def prepare(self, w: Tensor) -> Any:
        """Turn the masked dense weight ``[out, in]`` (compute dtype) into what ``linear`` consumes."""
        return w

    def linear(self, x: Tensor, prepared: Any, bias: Tensor | None) -> Tensor:
        """``[T, in] -> [T, out]``; ``x`` is contiguous and in the weight's dtype (SparseMatmul guarantees it)."""
        raise NotImplementedError

    def grad_input(self, gy: Tensor, prepared: Any) -> Tensor:
        """``∇X = ∇Y · W̃``: ``[T, out] -> [T, in]``; ``gy`` contiguous (stride-0 gradients are materialised)."""
        raise NotImplementedError

    def grad_weight(self, gyt: Tensor, x: Tensor, sparse: bool) -> Tensor:
        """``∇W = G · X``, ``G = ∇Yᵀ`` ``[out, T]`` contiguous, ``x`` ``[T, in]``. ``sparse``: ``G`` is 2:4 along T
        (MVUE-sampled), so a sparse backend may compress it and use the sparse kernel."""
        return gyt @ x  # [out, T] @ [T, in]


class DenseBackend(Backend):
    """Pure torch: ``F.linear`` on the dense weight with zeros. The reference; runs on any device."""

    info = BackendInfo(
        name="dense",
        devices=("cpu", "cuda", "mps", "xpu", "meta"),
        dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16),
        priority=1000,
    )

    def linear(self, x: Tensor, prepared: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, prepared, bias)

    def grad_input(self, gy: Tensor, prepared: Tensor) -> Tensor:
        return gy @ prepared  # [T, out] @ [out, in]


BACKENDS: dict[str, Backend] = {}
DENSE = DenseBackend()


def register_backend(backend: Backend) -> Backend:
    """Add a backend to the registry under ``backend.info.name``."""
    BACKENDS[backend.info.name] = backend
    return backend


register_backend(DENSE)
_LOGGED: set[tuple] = set()


def _load_plugins() -> None:
    try:  # the kernels package registers cusparselt / cutlass / cusparselt_fp8 / triton when importable
        import sparse24.kernels.backends  # noqa: F401
    except ImportError as e:  # pragma: no cover - only without the kernels package
        log.debug("sparse24.kernels backends not loaded: %s", e)


def get_backend(name: str) -> Backend:
    _load_plugins()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *sorted(BACKENDS)]}")
    return BACKENDS[name]


def min_tokens() -> int:
    """``SPARSE24_MIN_TOKENS`` (default 64): below this many tokens ``auto`` runs the dense product."""
    raw = os.environ.get("SPARSE24_MIN_TOKENS", str(DEFAULT_MIN_TOKENS))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"SPARSE24_MIN_TOKENS={raw!r} is not an integer; unset it or give a token count") from None


@dataclass(frozen=True)
class Plan:
    """What a layer runs for one (shape, compute dtype, device), fixed at resolution time.

    ``backend`` runs every product when ``tokens >= min_tokens``; below it ``small`` (dense) does. ``fp8_simulated``:
    FP8 was asked for and no native FP8 backend runs here, so the GEMMs quantise/dequantise (CPU simulation).
    """

    backend: Backend
    small: Backend = DENSE
    min_tokens: int = 0
    fp8_simulated: bool = False

    def pick(self, tokens: int) -> Backend:
        return self.backend if tokens >= self.min_tokens else self.small


def resolve(
    name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str, fp8: bool = False
) -> Plan:
    """Resolve ``name`` (or ``SPARSE24_BACKEND``, or ``"auto"``) for a weight once; reads the environment now."""
    device, shape = torch.device(device), (int(shape[0]), int(shape[1]))
    _load_plugins()
    if name == "auto":
        name = os.environ.get("SPARSE24_BACKEND", "auto") or "auto"
    if name != "auto":
        backend = get_backend(name)
        why = backend.check(shape, dtype, device)
        if why:
            raise RuntimeError(f"backend {name!r} cannot run this layer: {why}")
        return Plan(backend, backend, 0, fp8 and not backend.native_fp8)
    ranked = sorted(BACKENDS.values(), key=lambda b: b.info.priority)
    if fp8:
        for b in ranked:
            if b.native_fp8 and not b.emulated and b.check(shape, dtype, device) is None:
                return Plan(b, b, 0, False)  # FP8 was asked for: every M runs it (same numerics at any M)
    for b in ranked:
        if b.auto and not b.emulated and b.check(shape, dtype, device) is None:
            key = (b.info.name, shape, dtype, device.type)
            if key not in _LOGGED:
                _LOGGED.add(key)
                log.info("sparse24: backend %s for weight %s %s on %s", b.info.name, shape, dtype, device)
            return Plan(b, DENSE, 0 if b is DENSE else min_tokens(), fp8)
    raise RuntimeError(f"no backend can run weight {shape} {dtype} on {device}")  # dense covers all else


def select_backend(
    name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str, tokens: int | None = None
) -> Backend:
    """The backend :func:`resolve` gives for ``tokens`` (None: the large-M choice). For one-off callers; layers keep
    the :class:`Plan` instead of calling this per forward."""
    plan = resolve(name, shape, dtype, device)
    return plan.backend if tokens is None else plan.pick(tokens)
