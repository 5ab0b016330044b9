"""Matmul backends behind one registry.

A backend prepares a 2:4 weight once (compress/pack, or nothing) and runs ``linear(x, prepared, bias)`` and the
input-gradient product. ``dense`` (``F.linear`` on the masked weight) is the reference and runs everywhere; the GPU
backends (cuSPARSELt, CUTLASS, Triton) register themselves from :mod:`sparse24.kernels`.

Choice: an explicit ``backend=`` wins, then the ``SPARSE24_BACKEND`` environment variable, then ``"auto"``, which takes
the first backend (by priority) that supports the shape, dtype and device. A forced backend that cannot run raises
with the limit that failed; it never falls back silently.
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

__all__ = ["BackendInfo", "Backend", "DenseBackend", "register_backend", "get_backend", "select_backend", "BACKENDS"]


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
    """Interface: subclasses set ``info`` and override ``prepare``/``linear``/``grad_input`` as needed."""

    info: BackendInfo

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

    def prepare(self, w: Tensor, key: Any = None) -> Any:
        """Turn the masked dense weight ``[out, in]`` into what ``linear`` consumes. A backend that packs may reuse
        its result while ``key`` (layer identity + weight/mask versions) stays the same: once per optimizer step."""
        return w

    def linear(self, x: Tensor, prepared: Any, bias: Tensor | None) -> Tensor:
        """``[T, in] -> [T, out]``."""
        raise NotImplementedError

    def grad_input(self, gy: Tensor, prepared: Any) -> Tensor:
        """``∇X = ∇Y · W̃``: ``[T, out] -> [T, in]``."""
        raise NotImplementedError


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


def register_backend(backend: Backend) -> Backend:
    """Add a backend to the registry under ``backend.info.name``."""
    BACKENDS[backend.info.name] = backend
    return backend


register_backend(DenseBackend())
_LOGGED: set[tuple] = set()


def _load_plugins() -> None:
    try:  # the kernels package registers cusparselt / cutlass / triton when importable
        import sparse24.kernels.backends  # noqa: F401
    except ImportError as e:  # pragma: no cover - only without the kernels package or triton
        log.debug("sparse24.kernels backends not loaded: %s", e)


def get_backend(name: str) -> Backend:
    if len(BACKENDS) == 1:
        _load_plugins()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *sorted(BACKENDS)]}")
    return BACKENDS[name]


def select_backend(
    name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str, tokens: int | None = None
) -> Backend:
    """Resolve ``name`` (or ``SPARSE24_BACKEND``, or ``"auto"``) to a backend that can run this weight."""
    device = torch.device(device)
    if name == "auto":
        name = os.environ.get("SPARSE24_BACKEND", "auto") or "auto"
    if name != "auto":
        backend = get_backend(name)
        why = backend.check(tuple(shape), dtype, device)
        if why:
            raise RuntimeError(f"backend {name!r} cannot run this layer: {why}")
        return backend
    get_backend("dense")  # loads plugins
    for backend in sorted(BACKENDS.values(), key=lambda b: b.info.priority):
        if backend.check(tuple(shape), dtype, device) is None and _worth_it(backend, shape, tokens):
            key = (backend.info.name, tuple(shape), dtype, device.type)
            if key not in _LOGGED:
                _LOGGED.add(key)
                log.info("sparse24: backend %s for weight %s %s on %s", backend.info.name, tuple(shape), dtype, device)
            return backend
    raise RuntimeError(f"no backend can run weight {tuple(shape)} {dtype} on {device}")  # dense covers all else


def _worth_it(backend: Backend, shape: tuple[int, int], tokens: int | None) -> bool:
    hook = getattr(backend, "worth_it", None)
    return True if hook is None else bool(hook(shape, tokens))
