"""Magnitude 2:4 mask + apply, fused: ``(w ⊙ M, M)`` with ``M = magnitude_mask_24(w)``.

Contract
- Layout: any contiguous ``[..., C]`` tensor (a weight is ``[out, in]`` row-major); groups of 4 consecutive elements
  along the last dim, ``C % 4 == 0``. Rows are flattened; offsets are int64 (no 2**31 element limit).
- Dtypes: float32, float16, bfloat16 (float64 under the interpreter). The comparison runs in the input dtype, so the
  mask is bit-identical to :func:`sparse24.masks.magnitude_mask_24`.
- Tie rule: larger ``|a|`` wins; on equal ``|a|`` the later index wins (``[1, 1, 1, 1]`` keeps positions 2 and 3).
  Exactly 2 kept per group, always. NaN counts as +inf (kept, so it stays visible); the reference refuses NaN/Inf.
- Replaces: ``m = sparse24.masks.magnitude_mask_24(w); w * m`` (two passes and a [G, 4, 4] temporary).
- Speed: not yet measured on a GPU.
- Block sizes: one program covers BLOCK_R rows x BLOCK_G groups (4*BLOCK_G columns); the kernel is memory bound, so
  a fixed 16 x 64 tile is enough (no autotune); the interpreter runs it as a handful of programs.
"""

from __future__ import annotations

import torch
from sparse24.kernels._utils import cdiv, check_input, launch_device_ok, rows_view, tl, triton
from torch import Tensor

from sparse24.masks import magnitude_mask_24

__all__ = ["mask24", "mask24_ref"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@triton.jit
def _mask24_kernel(w_ptr, out_ptr, mask_ptr, R, G, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
    grps = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)  # [BG]
    ok = (rows[:, None] < R) & (grps[None, :] < G)
    base = rows[:, None].to(tl.int64) * (4 * G) + 4 * grps[None, :]  # [BR, BG] offset of each group
    x0 = tl.load(w_ptr + base + 0, mask=ok, other=0.0)
    x1 = tl.load(w_ptr + base + 1, mask=ok, other=0.0)
    x2 = tl.load(w_ptr + base + 2, mask=ok, other=0.0)
    x3 = tl.load(w_ptr + base + 3, mask=ok, other=0.0)
    a0, a1, a2, a3 = tl.abs(x0), tl.abs(x1), tl.abs(x2), tl.abs(x3)
    a0 = tl.where(a0 != a0, float("inf"), a0)  # NaN ranks as +inf: kept, never breaks "exactly 2"
    a1 = tl.where(a1 != a1, float("inf"), a1)
    a2 = tl.where(a2 != a2, float("inf"), a2)
    a3 = tl.where(a3 != a3, float("inf"), a3)
    # n_i = how many entries outrank entry i (larger |a|, or equal |a| at a later index); keep iff n_i < 2
    n0 = (a1 >= a0).to(tl.int32) + (a2 >= a0).to(tl.int32) + (a3 >= a0).to(tl.int32)
    n1 = (a0 > a1).to(tl.int32) + (a2 >= a1).to(tl.int32) + (a3 >= a1).to(tl.int32)
    n2 = (a0 > a2).to(tl.int32) + (a1 > a2).to(tl.int32) + (a3 >= a2).to(tl.int32)
    n3 = (a0 > a3).to(tl.int32) + (a1 > a3).to(tl.int32) + (a2 > a3).to(tl.int32)
    k0, k1, k2, k3 = n0 < 2, n1 < 2, n2 < 2, n3 < 2
    tl.store(mask_ptr + base + 0, k0.to(tl.int8), mask=ok)
    tl.store(mask_ptr + base + 1, k1.to(tl.int8), mask=ok)
    tl.store(mask_ptr + base + 2, k2.to(tl.int8), mask=ok)
    tl.store(mask_ptr + base + 3, k3.to(tl.int8), mask=ok)
    tl.store(out_ptr + base + 0, tl.where(k0, x0, 0.0).to(x0.dtype), mask=ok)
    tl.store(out_ptr + base + 1, tl.where(k1, x1, 0.0).to(x1.dtype), mask=ok)
    tl.store(out_ptr + base + 2, tl.where(k2, x2, 0.0).to(x2.dtype), mask=ok)
    tl.store(out_ptr + base + 3, tl.where(k3, x3, 0.0).to(x3.dtype), mask=ok)


def mask24(w: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(w ⊙ M, M)``: the 2:4-pruned tensor and its bool mask (2 largest |w| per group of 4 kept)."""
    check_input("mask24", w, "w", DTYPES)
    launch_device_ok("mask24", _mask24_kernel, w)
    w2 = rows_view(w)  # [R, C]
    out = torch.empty_like(w2)
    mask = torch.empty(w2.shape, dtype=torch.int8, device=w.device)
    R, G = w2.shape[0], w2.shape[1] // 4
    if w2.numel():
        BLOCK_R, BLOCK_G = 16, 64
        _mask24_kernel[(cdiv(R, BLOCK_R), cdiv(G, BLOCK_G))](w2, out, mask, R, G, BLOCK_R=BLOCK_R, BLOCK_G=BLOCK_G)
    return out.reshape(w.shape), mask.view(torch.bool).reshape(w.shape)


def mask24_ref(w: Tensor) -> tuple[Tensor, Tensor]:
    """Pure torch reference (any device): the core :func:`sparse24.masks.magnitude_mask_24` plus ``w * M``."""
    m = magnitude_mask_24(w)
    return w * m, m
