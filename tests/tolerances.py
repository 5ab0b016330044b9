"""Test tolerances, one table keyed by (op, dtype). Kinds:

- "exact": masks, metadata, packing and the fused soft threshold must equal the reference bit for bit.
- (rtol, atol): elementwise ops that round once more or less than torch (masked decay may become one FMA on a GPU).
- SQNR floors in dB for FP8 (quantise -> dequantise vs the input): e4m3 keeps 3 mantissa bits (~30 dB on Gaussian
  data), e5m2 keeps 2 (~24 dB); the floors leave a few dB of margin.
- Matmuls: error vs an fp64 product must stay within MATMUL_ERR_FACTOR x the error of torch's own dense masked matmul
  in the same dtype (Liger/quack rule), plus a tiny absolute slack for exact-zero cases.
"""

from __future__ import annotations

import torch

EXACT = "exact"

TOL: dict[tuple[str, torch.dtype], object] = {
    **{(op, dt): EXACT for op in ("mask24", "transposable_mask", "soft_threshold", "pack_cutlass")
       for dt in (torch.float32, torch.float16, torch.bfloat16, torch.int8)},
    ("masked_decay", torch.float32): (1e-6, 1e-6),
    ("masked_decay", torch.float16): (1e-3, 2e-3),
    ("masked_decay", torch.bfloat16): (8e-3, 1.6e-2),
    ("mvue_kept_values", torch.float32): (1e-5, 1e-6),  # x/p with p in float32 vs the float64 reference p
    ("mvue_kept_values", torch.float16): (2e-3, 1e-4),
    ("mvue_kept_values", torch.bfloat16): (1.6e-2, 1e-3),
}

SQNR_DB: dict[tuple[str, torch.dtype], float] = {
    ("fp8_cast", torch.float8_e4m3fn): 27.0,
    ("fp8_cast", torch.float8_e5m2): 21.0,
}

MVUE_SIGMAS = 5.0  # statistical checks: |empirical - expected| <= 5 standard errors (false alarm ~1e-6 per entry)
MATMUL_ERR_FACTOR = 2.0


def tol(op: str, dtype: torch.dtype):
    try:
        return TOL[(op, dtype)]
    except KeyError:
        raise KeyError(f"no tolerance for op {op!r} and dtype {dtype}; add it to tests/tolerances.py") from None


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio of ``y`` as an estimate of ``x``, in dB."""
    x, y = x.double(), y.double()
    noise = (x - y).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(x.pow(2).sum() / noise))
