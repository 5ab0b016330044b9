"""S-STE soft threshold with the β scale, fused: ``β · S(w)``, ``S(a)_i = sign(a_i)·max(|a_i| − t, 0)``.

Contract
- Layout: any contiguous ``[..., C]``; groups of 4 along the last dim, ``C % 4 == 0``.
- Dtypes: float32, float16, bfloat16; ``beta`` is a 0-d (or 1-element) tensor on the
  same device (read by the kernel, so no host sync), or None for β = 1.
- Math: ``t`` = 2nd-smallest ``|a|`` of the group by the branch-free form
  ``min(max(min(a0,a1), min(a2,a3)), min(max(a0,a1), max(a2,a3)))``. Two roundings, exactly as the reference: the
  shrunk magnitude ``|a| − t`` is rounded to the input dtype, then multiplied by ``β`` cast to the input dtype.
  The result equals the reference bit for bit (``-0.0`` and ``0.0`` compare equal).
- Tie rule: none needed (continuous map); when ranks 2 and 3 tie, both entries become 0, so a group can keep < 2.
- Replaces: ``sparse24.masks.soft_threshold_24(w) * beta.to(w.dtype)`` when ``SparseLinear`` packs an S-STE weight
  (through the op :func:`soft_threshold`, on CUDA).
- Speed: not yet measured on a GPU.
- Block sizes: memory bound; fixed 16 rows x 64 groups per program (no autotune).
"""

from __future__ import annotations

import torch
from sparse24.kernels._utils import HAS_TRITON, cdiv, check_input, launch_device_ok, round_to, rows_view, tl, triton
from torch import Tensor

from sparse24.masks import soft_threshold_24

__all__ = ["soft_threshold", "soft_threshold_triton", "soft_threshold_ref"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _shrink(x, t, beta):
    """sign(x)·round(round(|x| − t)·β) in x's dtype; all arithmetic in float32 (bf16 math is not exact here)."""
    xf = x.to(tl.float32)
    d = round_to(tl.maximum(tl.abs(xf) - t, 0.0), x.dtype).to(tl.float32)
    m = d * beta
    return round_to(tl.where(xf < 0, -m, m), x.dtype)


@triton.jit
def _soft_threshold_kernel(w_ptr, out_ptr, beta_ptr, R, G, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    grps = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = (rows[:, None] < R) & (grps[None, :] < G)
    base = rows[:, None].to(tl.int64) * (4 * G) + 4 * grps[None, :]  # [BR, BG]
    x0 = tl.load(w_ptr + base + 0, mask=ok, other=0.0)
    x1 = tl.load(w_ptr + base + 1, mask=ok, other=0.0)
    x2 = tl.load(w_ptr + base + 2, mask=ok, other=0.0)
    x3 = tl.load(w_ptr + base + 3, mask=ok, other=0.0)
    beta = round_to(tl.load(beta_ptr), x0.dtype).to(tl.float32)  # β rounded to the weight dtype, as the reference
    a0, a1 = tl.abs(x0.to(tl.float32)), tl.abs(x1.to(tl.float32))
    a2, a3 = tl.abs(x2.to(tl.float32)), tl.abs(x3.to(tl.float32))
    t = tl.minimum(tl.maximum(tl.minimum(a0, a1), tl.minimum(a2, a3)),
                   tl.minimum(tl.maximum(a0, a1), tl.maximum(a2, a3)))  # [BR, BG] 2nd-smallest |a|
    tl.store(out_ptr + base + 0, _shrink(x0, t, beta), mask=ok)
    tl.store(out_ptr + base + 1, _shrink(x1, t, beta), mask=ok)
    tl.store(out_ptr + base + 2, _shrink(x2, t, beta), mask=ok)
    tl.store(out_ptr + base + 3, _shrink(x3, t, beta), mask=ok)


def _beta_tensor(beta: Tensor | float | None, device: torch.device) -> Tensor:
    if beta is None:
        return torch.ones(1, dtype=torch.float32, device=device)
    if not isinstance(beta, Tensor):
        return torch.tensor([float(beta)], dtype=torch.float32, device=device)
    if beta.numel() != 1:
        raise ValueError(f"soft_threshold: beta must hold one value (per-tensor β), got shape {tuple(beta.shape)}")
    if beta.device != device:
        raise ValueError(f"soft_threshold: beta is on {beta.device} but w is on {device}; move beta with .to()")
    return beta.reshape(1).float()


def soft_threshold_triton(w: Tensor, beta: Tensor | float | None = None) -> Tensor:
    """Triton launcher: ``β · S(w)``: S-STE's continuous 2:4 projection, scaled by the fixed per-tensor ``β``."""
    check_input("soft_threshold", w, "w", DTYPES)
    launch_device_ok("soft_threshold", _soft_threshold_kernel, w)
    b = _beta_tensor(beta, w.device)
    w2 = rows_view(w)
    out = torch.empty_like(w2)
    R, G = w2.shape[0], w2.shape[1] // 4
    if w2.numel():
        BLOCK_R, BLOCK_G = 16, 64
        _soft_threshold_kernel[(cdiv(R, BLOCK_R), cdiv(G, BLOCK_G))](w2, out, b, R, G, BLOCK_R=BLOCK_R,
                                                                     BLOCK_G=BLOCK_G)
    return out.reshape(w.shape)


def soft_threshold_ref(w: Tensor, beta: Tensor | float | None = None) -> Tensor:
    """Pure torch reference: the core :func:`sparse24.masks.soft_threshold_24` times ``β`` in the weight dtype."""
    b = _beta_tensor(beta, w.device)
    return soft_threshold_24(w) * b.reshape(()).to(w.dtype)


def soft_threshold(w: Tensor, beta: Tensor | float | None = None) -> Tensor:
    """The op (what ``SparseLinear`` calls for S-STE): the fused kernel on CUDA, the reference elsewhere."""
    if w.is_cuda and HAS_TRITON:
        return soft_threshold_triton(w, beta)
    return soft_threshold_ref(w, beta)
