"""The sparse product with its straight-through backward, as one ``torch.autograd.Function``.

``SparseMatmul`` computes ``Y = X W̃ᵀ + b`` on a backend from the prepared (packed) ``W̃`` and returns gradients for the
dense ``W`` directly (straight-through: ``∂L/∂W = ∂L/∂W̃``, no β and no mask, as SR-STE and S-STE both do), so
nothing recomputes ``W̃`` in autograd on every micro-batch:

- ``∇X = ∇Y W̃`` (sparse on the backend when the mask is transposable),
- ``∇W = G X`` with ``G = MVUE₂:₄(∇Yᵀ)`` (sparse on the backend: G is 2:4 along tokens) or ``G = ∇Yᵀ``,
  plus SR-STE's ``λ(1−M)⊙W`` when the decay is placed in autograd,
- ``∇b = Σ ∇Y``.

Inputs arrive checked (``SparseLinear`` casts to the compute dtype); here ``X`` is flattened to a contiguous
``[T, in]`` and ``∇Y`` to a contiguous ``[T, out]`` (one copy only for a sliced input or an expanded gradient such as
``y.sum()``'s stride-0 one), because the sparse kernels infer the layout from ``is_contiguous()`` alone.
Gradients come back in each input's own dtype (fp32 master weights get fp32 ``∇W`` from a bf16 product).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse24.backends import Backend
from sparse24.fp8 import fp8_qdq

__all__ = ["SparseMatmul", "mvue_token_grad"]

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def mvue_token_grad(gy: Tensor, seed: int, offset: int = 0) -> Tensor:
    """MVUE-sample ``∇Yᵀ``: ``[T, out] -> [out, T4]``, 2:4 along tokens, T zero-padded to a multiple of 4 (exact:
    the padded columns stay zero). Contiguous, ready for compression."""
    from sparse24.kernels.mvue import mvue

    gyt = gy.t()  # [out, T]
    pad = (-gyt.shape[1]) % 4
    gyt = F.pad(gyt, (0, pad)) if pad else gyt.contiguous()  # [out, T4]
    return mvue(gyt, seed, offset)[0]


def _dense_weight(backend: Backend, prepared) -> Tensor:
    return getattr(prepared, "w", prepared)  # a packing backend keeps the dense W̃ next to its packed operands


class SparseMatmul(torch.autograd.Function):
    """``Y = X W̃ᵀ + b`` through ``backend``; see the module docstring for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, backend: Backend, prepared, mvue: tuple | None,
                fp8_simulated: bool, decay: float, mask: Tensor | None) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()  # [T, in]; a copy only for a sliced/strided input
        with torch.autocast(x.device.type, enabled=False):  # inputs are already in the compute dtype
            if fp8_simulated:
                w = _dense_weight(backend, prepared)
                y = F.linear(fp8_qdq(x2, E4M3), fp8_qdq(w, E4M3), bias)
            else:
                y = backend.linear(x2, prepared, bias)  # [T, out]
        ctx.save_for_backward(x2, *((weight, mask) if decay else ()))
        ctx.backend, ctx.prepared, ctx.mvue, ctx.fp8, ctx.decay = backend, prepared, mvue, fp8_simulated, decay
        ctx.has_bias, ctx.xshape, ctx.wdtype = bias is not None, shape, weight.dtype
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy: Tensor):
        x2 = ctx.saved_tensors[0]
        gy2 = gy.reshape(-1, gy.shape[-1]).contiguous()  # [T, out]; materialises stride-0 gradients
        gx = gw = gb = None
        backend, prepared = ctx.backend, ctx.prepared
        with torch.autocast(gy.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                if ctx.fp8:
                    gx = fp8_qdq(gy2, E5M2) @ fp8_qdq(_dense_weight(backend, prepared), E5M2)
                else:
                    gx = backend.grad_input(gy2, prepared)  # [T, in]
                gx = gx.reshape(ctx.xshape)
            if ctx.needs_input_grad[1]:
                gw = _grad_weight(ctx, gy2, x2).to(ctx.wdtype)  # [out, in]
                if ctx.decay:  # SR-STE in autograd: += λ(1−M)⊙W
                    w, mask = ctx.saved_tensors[1:]
                    if torch.compiler.is_compiling():  # functional form: inductor mis-handled the in-place update
                        gw = gw + ctx.decay * torch.where(mask, 0.0, w)
                    else:
                        from sparse24.kernels.masked_decay import masked_decay_

                        masked_decay_(gw, w.detach(), mask, ctx.decay)  # fused kernel on CUDA
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = gy2.sum(0)
        return gx, gw, gb, None, None, None, None, None, None


def _grad_weight(ctx, gy2: Tensor, x2: Tensor) -> Tensor:
    if ctx.mvue is not None:
        gyt = mvue_token_grad(gy2, *ctx.mvue)  # [out, T4]
        pad = gyt.shape[1] - x2.shape[0]
        xp = F.pad(x2, (0, 0, 0, pad)) if pad else x2  # [T4, in]
    else:
        gyt, xp = gy2.t(), x2  # [out, T], [T, in]
    if ctx.fp8:
        return fp8_qdq(gyt, E5M2) @ fp8_qdq(xp, E5M2)
    return ctx.backend.grad_weight(gyt, xp, sparse=ctx.mvue is not None)
