"""FP8 quantisation with current (amax) scaling, per tensor or per row: ``q = cast(clamp(x · s)), s = fmax / amax``.

Contract
- Layout: per tensor: any contiguous tensor (flattened); per row: 2-D ``[rows, cols]``, one scale per row.
- Dtypes: x float32/float16/bfloat16; ``q`` float8_e4m3fn (forward: weights, activations; fmax 448) or float8_e5m2
  (backward: gradients; fmax 57344); scales float32 ``[]`` (tensor) or ``[rows, 1]`` (row). Dequantise: ``q / s``.
- Margin 0, no history (the S-STE recipe); ``amax == 0`` gives ``s = 1``. Values are saturated to ±fmax, then rounded
  to nearest-even onto the FP8 grid explicitly in float32 (Triton's interpreter mis-rounds fp8 casts across binades;
  on a GPU the hardware cast then sees an exact value). The scale is computed by the same torch expression as the
  reference, so ``(q, s)`` equal :func:`sparse24.fp8.fp8_quantize` bit for bit on finite input.
- Replaces: ``sparse24.fp8.fp8_quantize(x, dtype, granularity)`` (abs, amax, mul, clamp and cast as separate passes).
- Needs compute capability >= 8.9 on a GPU (Triton's fp8 types).
- Speed: not yet measured on a GPU.
"""

from __future__ import annotations

from typing import Literal

import torch
from sparse24.kernels._utils import cdiv, check_input, is_interpreter, launch_device_ok, tl, triton
from torch import Tensor

from sparse24.fp8 import FP8_MAX, fp8_quantize

__all__ = ["fp8_cast", "fp8_cast_ref", "FP8_FORMAT"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_FORMAT = {torch.float8_e4m3fn: (3, -6), torch.float8_e5m2: (2, -14)}  # (mantissa bits, min normal exponent)


@triton.jit
def _round_fp8(y, MANT: tl.constexpr, EMIN: tl.constexpr):
    """Round float32 ``y`` (already within ±fmax) to the FP8 grid, nearest-even, staying in float32."""
    bits = y.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, EMIN)  # binade (subnormals share the lowest one)
    ulp = ((e - MANT + 127) << 23).to(tl.float32, bitcast=True)
    magic = ulp * 8388608.0  # 2**23 ulps: adding it rounds |y| to a multiple of ulp (IEEE nearest-even)
    r = (tl.abs(y) + magic) - magic
    return tl.where(y < 0, -r, r)


@triton.jit
def _amax_kernel(x_ptr, amax_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """amax_ptr[pid] = max |x| over BLOCK_R rows (rows x C); one row per program gives per-row amax."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        ok = (rows[:, None] < R) & (cols[None, :] < C)
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=ok, other=0.0)
        acc = tl.maximum(acc, tl.max(tl.abs(x.to(tl.float32)), axis=1))
    tl.store(amax_ptr + tl.program_id(0), tl.max(acc, axis=0))


@triton.jit
def _quant_kernel(x_ptr, q_ptr, s_ptr, R, C, FMAX: tl.constexpr, MANT: tl.constexpr, EMIN: tl.constexpr,
                  PER_ROW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rows[:, None] < R) & (cols[None, :] < C)
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    if PER_ROW:
        s = tl.load(s_ptr + rows, mask=rows < R, other=1.0)[:, None]
    else:
        s = tl.load(s_ptr)
    y = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32) * s
    y = tl.minimum(tl.maximum(y, -FMAX), FMAX)
    tl.store(q_ptr + offs, _round_fp8(y, MANT, EMIN).to(q_ptr.dtype.element_ty), mask=ok)


def _scale(amax: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.where(amax > 0, FP8_MAX[dtype] / amax, torch.ones_like(amax))  # same expression as sparse24.fp8


def fp8_cast(
    x: Tensor, dtype: torch.dtype = torch.float8_e4m3fn, granularity: Literal["tensor", "row"] = "tensor"
) -> tuple[Tensor, Tensor]:
    """Return ``(q, scale)``: FP8 ``q`` and float32 ``scale`` (``[]`` per tensor, ``[rows, 1]`` per row)."""
    if dtype not in FP8_FORMAT:
        raise ValueError(f"fp8_cast: dtype must be torch.float8_e4m3fn (forward) or torch.float8_e5m2 (backward), "
                         f"not {dtype}")
    if granularity not in ("tensor", "row"):
        raise ValueError(f"fp8_cast: granularity must be 'tensor' or 'row', not {granularity!r}")
    check_input("fp8_cast", x, "x", DTYPES, ndim=2 if granularity == "row" else None, last_multiple=1)
    launch_device_ok("fp8_cast", _quant_kernel, x)
    if x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) < (8, 9):
        raise RuntimeError("fp8_cast: FP8 needs compute capability >= 8.9 (Ada/Hopper); use fp8_cast_ref")
    x2 = x.contiguous().reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
    R, C = x2.shape
    q = torch.empty(x2.shape, dtype=dtype, device=x.device)
    per_row = granularity == "row"
    BR = 1 if per_row else (64 if is_interpreter() else 16)
    BC = 1024 if is_interpreter() else 256
    amax = torch.zeros(max(cdiv(R, BR), 1), dtype=torch.float32, device=x.device)
    if x2.numel():
        _amax_kernel[(cdiv(R, BR),)](x2, amax, R, C, BLOCK_R=BR, BLOCK_C=BC)
    scale = _scale(amax[:, None] if per_row else amax.amax(), dtype)  # [R, 1] or []
    mant, emin = FP8_FORMAT[dtype]
    if x2.numel():
        QR = 64 if is_interpreter() else 16
        _quant_kernel[(cdiv(R, QR), cdiv(C, BC))](x2, q, scale.contiguous(), R, C, FMAX=FP8_MAX[dtype], MANT=mant,
                                                  EMIN=emin, PER_ROW=per_row, BLOCK_R=QR, BLOCK_C=BC)
    return q.reshape(x.shape), scale


def fp8_cast_ref(
    x: Tensor, dtype: torch.dtype = torch.float8_e4m3fn, granularity: Literal["tensor", "row"] = "tensor"
) -> tuple[Tensor, Tensor]:
    """Pure torch reference: the core :func:`sparse24.fp8.fp8_quantize`."""
    return fp8_quantize(x, dtype, granularity)
