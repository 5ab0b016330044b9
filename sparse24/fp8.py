"""FP8 quantisation reference (pure torch): per-tensor or per-row current scaling, e4m3 forward / e5m2 backward.

``scale = fmax / amax`` (margin 0; fmax 448 for e4m3fn, 57344 for e5m2); ``q = cast(x * scale)``; dequantise with
``q / scale``. On a CPU sparse24 simulates FP8 GEMMs by quantise → dequantise → matmul in the input dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["FP8_MAX", "fp8_quantize", "fp8_dequantize", "fp8_qdq"]

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def fp8_quantize(
    x: Tensor, dtype: torch.dtype = torch.float8_e4m3fn, granularity: Literal["tensor", "row"] = "tensor"
) -> tuple[Tensor, Tensor]:
    """``(q, scale)``: ``q`` in ``dtype``, float32 ``scale`` (``[]`` per tensor, ``[rows, 1]`` per row)."""
    if dtype not in FP8_MAX:
        raise ValueError(f"fp8 dtype must be torch.float8_e4m3fn or torch.float8_e5m2, not {dtype}")
    if not x.is_floating_point():
        raise TypeError(f"fp8_quantize needs a floating tensor, got {x.dtype}")
    xf = x.float()
    if granularity == "tensor":
        amax = xf.abs().amax()
    elif granularity == "row":
        if x.dim() != 2:
            raise ValueError(f"per-row scaling needs a 2-D tensor, got shape {tuple(x.shape)}")
        amax = xf.abs().amax(dim=1, keepdim=True)  # [rows, 1]
    else:
        raise ValueError(f"granularity must be 'tensor' or 'row', not {granularity!r}")
    scale = torch.where(amax > 0, FP8_MAX[dtype] / amax, torch.ones_like(amax))
    q = (xf * scale).clamp(-FP8_MAX[dtype], FP8_MAX[dtype]).to(dtype)
    return q, scale


def fp8_dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return (q.float() / scale).to(dtype)


def fp8_qdq(x: Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> Tensor:
    """Quantise to FP8 with per-tensor scaling and straight back to ``x.dtype`` (the CPU simulation)."""
    q, s = fp8_quantize(x, dtype)
    return fp8_dequantize(q, s, x.dtype)
