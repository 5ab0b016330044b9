"""Shared helpers for the Triton kernels: a guarded Triton import, interpreter detection and input checks.

The package imports without Triton: ``triton``/``tl`` are then stand-ins whose ``jit`` returns a function that raises
a clear error when called, so every ``*_ref`` still works and the error names the fix. Kernels run on CUDA tensors,
or on CPU tensors when ``TRITON_INTERPRET=1`` was set *before* the kernel module was imported (Triton reads it when
``@triton.jit`` runs).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "HAS_TRITON", "triton", "tl", "is_interpreter", "require_triton", "check_input", "launch_device_ok", "cdiv",
    "rows_view", "round_to",
]

try:  # pragma: no branch - the installed env has triton; the fallback is exercised by a test that hides it
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

    class _MissingTriton:
        """Stands in for ``triton``/``triton.language`` so that kernel modules import; calling a kernel raises."""

        constexpr = Any

        @staticmethod
        def jit(fn=None, **_kw):
            def wrap(f):
                def missing(*_a, **_k):
                    raise RuntimeError(
                        f"Triton kernel {f.__name__} needs triton: pip install 'triton>=3.0' "
                        "(or call the pure-torch *_ref function of the same module)"
                    )

                return _Launchable(missing)

            return wrap(fn) if fn is not None else wrap

        def __getattr__(self, name: str) -> Any:
            return None

    class _Launchable:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, _grid):
            return self.fn

        def __call__(self, *a, **k):
            return self.fn(*a, **k)

    triton = tl = _MissingTriton()  # type: ignore[assignment]


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """float32 ``x`` -> ``DTYPE`` with round-to-nearest-even (Triton's interpreter truncates to bfloat16)."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)
    else:
        return x.to(DTYPE)


def is_interpreter() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def require_triton(op: str) -> None:
    """Raise a clear error when Triton is missing."""
    if not HAS_TRITON:
        raise RuntimeError(
            f"{op}: triton is not installed: pip install 'triton>=3.0', or use {op}_ref (pure torch, any device)"
        )


def launch_device_ok(op: str, kernel: Any, t: Tensor) -> None:
    """Raise unless ``kernel`` can run on ``t.device`` (CUDA, or CPU under the interpreter)."""
    require_triton(op)
    if t.device.type == "cuda":
        return
    interpreted = type(kernel).__name__ == "InterpretedFunction"
    if t.device.type == "cpu" and interpreted:
        return
    if t.device.type == "cpu":
        raise RuntimeError(
            f"{op}: got a CPU tensor, but the Triton kernel was compiled for a GPU. Set TRITON_INTERPRET=1 before "
            f"importing sparse24.kernels to run it in Triton's interpreter, or call {op}_ref (pure torch)"
        )
    raise RuntimeError(f"{op}: device {t.device.type!r} is not supported; move the tensor to CUDA or use {op}_ref")


def check_input(
    op: str,
    t: Tensor,
    name: str,
    dtypes: tuple[torch.dtype, ...],
    ndim: int | None = None,
    last_multiple: int = 4,
) -> None:
    """Type, dtype, rank and last-dimension checks with messages that name the fix."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: {[str(d) for d in dtypes]} (cast it first)")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dim() < 1:
        raise ValueError(f"{op}: {name} is 0-D; it needs a last dimension to group by 4")
    if last_multiple > 1 and t.shape[-1] % last_multiple:
        raise ValueError(
            f"{op}: last dimension of {name} {tuple(t.shape)} is not a multiple of {last_multiple}; "
            f"pad it to {cdiv(t.shape[-1], last_multiple) * last_multiple}"
        )


def rows_view(t: Tensor) -> Tensor:
    """``[..., C] -> [rows, C]`` contiguous (a copy only when ``t`` is not contiguous)."""
    return t.contiguous().reshape(-1, t.shape[-1]) if t.dim() else t
