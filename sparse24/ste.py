"""Sparse autograd: small ``torch.autograd.Function``s.

Weight transforms (dense ``W`` → 2:4 ``W̃``, straight-through backward):
- :class:`MaskSTE`: ``W̃ = W⊙M``, ``∂L/∂W = ∂L/∂W̃`` (plain STE; with ``decay > 0`` adds ``λ(1−M)⊙W``: SR-STE in autograd).
- :class:`SoftThresholdSTE`: ``W̃ = β·S(W)``, ``∂L/∂W = ∂L/∂W̃`` (S-STE: identity, no β, no mask).

The product (``Y = X W̃ᵀ + b``) runs on a backend, optionally with an MVUE-sampled weight gradient and simulated FP8:
- :class:`SparseMatmul`: ``∇X = ∇Y W̃``, ``∇W̃ = MVUE₂:₄(∇Yᵀ) X`` (or ``∇Yᵀ X``), ``∇b = Σ ∇Y``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse24.backends import Backend
from sparse24.fp8 import fp8_qdq
from sparse24.masks import mvue_24, soft_threshold_24

__all__ = ["MaskSTE", "SoftThresholdSTE", "SparseMatmul", "mvue_token_grad"]

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


class MaskSTE(torch.autograd.Function):
    """``W⊙M`` forward; identity backward plus optional SR-STE decay ``λ(1−M)⊙W``."""

    @staticmethod
    def forward(ctx, w: Tensor, mask: Tensor, decay: float = 0.0) -> Tensor:
        ctx.decay = decay
        if decay:
            ctx.save_for_backward(w, mask)
        return w * mask

    @staticmethod
    def backward(ctx, g: Tensor):
        if ctx.decay:
            w, mask = ctx.saved_tensors
            g = g + ctx.decay * (w * ~mask)
        return g, None, None


class SoftThresholdSTE(torch.autograd.Function):
    """``β·S(W)`` forward (S-STE soft threshold); identity backward."""

    @staticmethod
    def forward(ctx, w: Tensor, beta: Tensor) -> Tensor:
        return soft_threshold_24(w) * beta.to(w.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None


def mvue_token_grad(gy: Tensor, generator: torch.Generator | None) -> Tensor:
    """MVUE-sample ``∇Yᵀ`` ``[out, T]`` 2:4 along the token axis, zero-padding T to a multiple of 4 (exact)."""
    gyt = gy.t()  # [out, T]
    pad = (-gyt.shape[1]) % 4
    if pad:
        gyt = F.pad(gyt, (0, pad))
    return mvue_24(gyt.contiguous(), generator)[:, : gy.shape[0]]


class SparseMatmul(torch.autograd.Function):
    """``Y = X W̃ᵀ + b`` through a backend, with MVUE-sampled ``∇W`` and simulated FP8 as options."""

    @staticmethod
    def forward(ctx, x, w, bias, backend: Backend, prepared, generator, mvue: bool = False, fp8: bool = False):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # [T, in]
        if fp8:
            y = F.linear(fp8_qdq(x2, E4M3), fp8_qdq(w, E4M3)) + (0 if bias is None else bias)
        else:
            y = backend.linear(x2, prepared, bias)
        ctx.save_for_backward(x2, w)
        ctx.backend, ctx.prepared, ctx.generator = backend, prepared, generator
        ctx.mvue, ctx.fp8, ctx.has_bias, ctx.xshape = mvue, fp8, bias is not None, shape
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy: Tensor):
        x2, w = ctx.saved_tensors
        gy2 = gy.reshape(-1, gy.shape[-1])  # [T, out]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            if ctx.fp8:
                gx = fp8_qdq(gy2, E5M2) @ fp8_qdq(w, E5M2)
            else:
                gx = ctx.backend.grad_input(gy2, ctx.prepared)  # [T, in]
            gx = gx.reshape(ctx.xshape)
        if ctx.needs_input_grad[1]:
            gyt = mvue_token_grad(gy2, ctx.generator) if ctx.mvue else gy2.t()  # [out, T]
            if ctx.fp8:
                gw = fp8_qdq(gyt, E5M2) @ fp8_qdq(x2, E5M2)
            else:
                gw = gyt @ x2  # [out, in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy2.sum(0)
        return gx, gw, gb, None, None, None, None, None
