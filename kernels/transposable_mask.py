"""Exact transposable 2:4 mask: per aligned 4x4 tile, the best of the 90 patterns whose rows and columns keep 2.

Contract
- Layout: 2-D ``[out, in]`` contiguous, ``out % 4 == 0`` and ``in % 4 == 0`` (no 32x64 block alignment: the tail
  program masks its loads). Both ``M`` and ``M.T`` are 2:4, so ``W̃`` and ``W̃ᵀ`` can both be compressed.
- Dtypes: float32, float16, bfloat16. Scores accumulate in float32 in a fixed order
  (tile element 0..15), with ``|w|`` (``use_abs=True``) or the signed value.
- Tie rule: the first pattern in :func:`sparse24.masks.transposable_patterns` order wins (``tl.argmax`` breaks ties
  to the left). The mask equals :func:`sparse24.masks.transposable_mask_24` bit for bit whenever the two best
  scores of a tile differ by more than float32 summation rounding (always, when the sums are exact, e.g.
  small-integer or low-precision inputs with moderate range). NaN counts as +inf.
- Replaces: ``sparse24.masks.transposable_mask_24(w)`` (a ``[tiles, 16] x [16, 90]`` matmul + argmax + gather) and the
  reference Triton kernel's rows % 32 / cols % 64 restriction.
- Speed: not yet measured on a GPU.
- Block size: BLOCK_T = 32 tiles per program keeps the [32, 128] score accumulator in registers on a GPU; the pattern
  dimension is padded from 90 to 128 with -inf scores.
"""

from __future__ import annotations

import torch
from sparse24.kernels._utils import cdiv, check_input, launch_device_ok, tl, triton
from torch import Tensor

from sparse24.masks import transposable_mask_24, transposable_patterns

__all__ = ["transposable_mask", "transposable_mask_ref", "pattern_table"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
N_PATTERNS, P_PAD = 90, 128
_TABLES: dict[torch.device, tuple[Tensor, Tensor]] = {}


def pattern_table(device: torch.device) -> tuple[Tensor, Tensor]:
    """``(pats [16, 128] float32 0/1, codes [128] int32)``: bit k of ``codes[p]`` is element k of pattern p."""
    if device not in _TABLES:
        p = transposable_patterns(device, torch.float32)  # [16, 90]
        pats = torch.zeros(16, P_PAD, device=device)
        pats[:, :N_PATTERNS] = p
        weights = (2 ** torch.arange(16, device=device, dtype=torch.int64))[:, None]  # [16, 1]
        codes = (pats.to(torch.int64) * weights).sum(0).to(torch.int32)  # [128]
        _TABLES[device] = (pats.contiguous(), codes.contiguous())
    return _TABLES[device]


@triton.jit
def _transposable_kernel(
    w_ptr, out_ptr, mask_ptr, pats_ptr, codes_ptr, C, TC, NT,
    USE_ABS: tl.constexpr, BLOCK_T: tl.constexpr, P_PAD: tl.constexpr, N_PAT: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT] tile ids
    ok = t < NT
    tr = (t // TC).to(tl.int64)
    tc = (t % TC).to(tl.int64)
    base = 4 * tr * C + 4 * tc  # [BT] offset of each tile's top-left element
    p = tl.arange(0, P_PAD)  # [P]
    acc = tl.zeros((BLOCK_T, P_PAD), dtype=tl.float32)
    for k in tl.static_range(16):
        x = tl.load(w_ptr + base + (k // 4) * C + (k % 4), mask=ok, other=0.0).to(tl.float32)  # [BT]
        if USE_ABS:
            x = tl.abs(x)
        x = tl.where(x != x, float("inf"), x)
        on = tl.load(pats_ptr + k * P_PAD + p)  # [P] 0/1
        acc += tl.where(on[None, :] != 0, x[:, None], 0.0)  # exact: adds x or 0, never inf*0
    acc = tl.where(p[None, :] < N_PAT, acc, float("-inf"))
    best = tl.argmax(acc, axis=1, tie_break_left=True)  # [BT]
    best = tl.minimum(best, N_PAT - 1)  # all-NaN rows cannot pick a padding pattern
    code = tl.load(codes_ptr + best, mask=ok, other=0)  # [BT]
    for k in tl.static_range(16):
        off = base + (k // 4) * C + (k % 4)
        keep = ((code >> k) & 1) != 0
        x = tl.load(w_ptr + off, mask=ok, other=0.0)
        tl.store(mask_ptr + off, keep.to(tl.int8), mask=ok)
        tl.store(out_ptr + off, tl.where(keep, x, 0.0).to(x.dtype), mask=ok)


def transposable_mask(w: Tensor, use_abs: bool = True) -> tuple[Tensor, Tensor]:
    """Return ``(w ⊙ M, M)`` with ``M`` the exact transposable 2:4 mask of the 2-D weight ``w``."""
    check_input("transposable_mask", w, "w", DTYPES, ndim=2)
    if w.shape[0] % 4:
        raise ValueError(
            f"transposable_mask: rows {w.shape[0]} of w {tuple(w.shape)} are not a multiple of 4, so W.T cannot be "
            "2:4; pad the rows or use mask24 (row-wise 2:4 only)"
        )
    launch_device_ok("transposable_mask", _transposable_kernel, w)
    w = w.contiguous()
    R, C = w.shape
    out = torch.empty_like(w)
    mask = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    nt = (R // 4) * (C // 4)
    if nt:
        pats, codes = pattern_table(w.device)
        BLOCK_T = 32
        _transposable_kernel[(cdiv(nt, BLOCK_T),)](
            w, out, mask, pats, codes, C, C // 4, nt,
            USE_ABS=use_abs, BLOCK_T=BLOCK_T, P_PAD=P_PAD, N_PAT=N_PATTERNS,
        )
    return out, mask.view(torch.bool)


def transposable_mask_ref(w: Tensor, use_abs: bool = True) -> tuple[Tensor, Tensor]:
    """Pure torch reference: the core :func:`sparse24.masks.transposable_mask_24` plus ``w * M``."""
    m = transposable_mask_24(w, use_abs=use_abs)
    return w * m, m
