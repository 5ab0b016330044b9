"""SR-STE masked decay, fused and in place: ``g += λ · (1 − M) ⊙ W``.

Contract
- Layout: ``g`` and ``w`` contiguous with the same shape and dtype; ``mask`` bool (or uint8/int8 0/1) of that shape.
  The last dim needs no multiple of 4 (the op is elementwise). Offsets are int64.
- Dtypes: float32, float16, bfloat16. The sum ``g + λ·w`` is formed in float32 and rounded once to the dtype.
- In place: ``g`` is updated and returned; its ``_version`` is bumped like ``Tensor.add_`` would.
- Matches :func:`masked_decay_ref_` (``g.add_(w * ~mask, alpha=λ)``) to within one rounding of the dtype (a GPU may
  contract ``g + λ·w`` into one FMA).
- Called on CUDA through the op :func:`masked_decay_` by :func:`sparse24.apply_masked_decay`
  (``decay_placement="grad"``) and by ``SparseMatmul``'s backward (``"autograd"``); replaces two full-size
  temporaries per layer per step.
- Speed: not yet measured on a GPU.
"""

from __future__ import annotations

import torch
from sparse24.kernels._utils import (
    HAS_TRITON,
    cdiv,
    check_input,
    is_interpreter,
    launch_device_ok,
    round_to,
    tl,
    triton,
)
from torch import Tensor

__all__ = ["masked_decay_", "masked_decay_triton_", "masked_decay_ref_"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _masked_decay_kernel(g_ptr, w_ptr, m_ptr, lam, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    g = tl.load(g_ptr + offs, mask=ok, other=0.0)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    keep = tl.load(m_ptr + offs, mask=ok, other=1) != 0
    upd = g.to(tl.float32) + lam * tl.where(keep, 0.0, w)
    tl.store(g_ptr + offs, round_to(upd, g.dtype), mask=ok)


def _check(g: Tensor, w: Tensor, mask: Tensor, dtypes: tuple[torch.dtype, ...] = DTYPES) -> None:
    check_input("masked_decay_", g, "g", dtypes, last_multiple=1)
    if not isinstance(w, Tensor) or w.shape != g.shape or w.dtype != g.dtype:
        raise ValueError(f"masked_decay_: w must match g in shape and dtype ({tuple(g.shape)}, {g.dtype}), "
                         f"got {tuple(getattr(w, 'shape', ()))}, {getattr(w, 'dtype', type(w).__name__)}")
    if not isinstance(mask, Tensor) or mask.shape != g.shape:
        raise ValueError(f"masked_decay_: mask must have g's shape {tuple(g.shape)}, "
                         f"got {tuple(getattr(mask, 'shape', ()))}")
    if mask.dtype not in (torch.bool, torch.uint8, torch.int8):
        raise TypeError(f"masked_decay_: mask dtype {mask.dtype} must be bool (or uint8/int8 0/1)")
    if g.device != w.device or g.device != mask.device:
        raise ValueError(f"masked_decay_: g, w, mask must share a device, got {g.device}, {w.device}, {mask.device}")


def masked_decay_triton_(g: Tensor, w: Tensor, mask: Tensor, lam: float) -> Tensor:
    """Triton launcher: ``g += lam · (1 − mask) ⊙ w`` in place; returns ``g``."""
    _check(g, w, mask)
    launch_device_ok("masked_decay_", _masked_decay_kernel, g)
    if not g.is_contiguous():
        raise ValueError("masked_decay_: g must be contiguous (it is updated in place); pass g.contiguous() "
                         "and copy back, or use masked_decay_ref_")
    n = g.numel()
    if n and lam:
        m = mask.contiguous().view(torch.uint8) if mask.dtype == torch.bool else mask.contiguous()
        BLOCK = 8192 if is_interpreter() else 1024
        _masked_decay_kernel[(cdiv(n, BLOCK),)](g, w.contiguous(), m, float(lam), n, BLOCK=BLOCK)
        torch.autograd.graph.increment_version(g)  # a raw-pointer write: tell autograd (and caches keyed on it)
    return g


def masked_decay_ref_(g: Tensor, w: Tensor, mask: Tensor, lam: float) -> Tensor:
    """Pure torch reference, in place (any floating dtype, float64 included)."""
    _check(g, w, mask, (*DTYPES, torch.float64))
    return g.add_(w * ~mask.bool(), alpha=lam)


def masked_decay_(g: Tensor, w: Tensor, mask: Tensor, lam: float) -> Tensor:
    """The op (SR-STE's decay in :func:`sparse24.apply_masked_decay` and in ``SparseMatmul``'s backward): the fused
    kernel on CUDA for a contiguous ``g``, the reference elsewhere."""
    if g.is_cuda and HAS_TRITON and g.is_contiguous():
        return masked_decay_triton_(g, w, mask, lam)
    return masked_decay_ref_(g, w, mask, lam)
