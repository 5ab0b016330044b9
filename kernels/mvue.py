"""MVUE 2:4 sampling: an unbiased random 2:4 tensor ``Z`` with ``E[Z] = x`` (approximate MVUE of Chmiel et al.).

``mvue`` (the op: kernel on CUDA, reference elsewhere), ``mvue_triton`` (launcher of ``_mvue_kernel``), ``mvue_ref``.

Contract
- Layout: any contiguous ``[..., C]``, groups of 4 along the last dim, ``C % 4 == 0`` (for ``∇Yᵀ`` ``[out, T]`` pad T
  to a multiple of 4 first, as :func:`sparse24.ste.mvue_token_grad` does).
- Dtypes: float32, float16, bfloat16 in and out; all arithmetic in float32.
- Sampling (same distribution as :func:`sparse24.masks.mvue_24`): ``a = |x| + 1.19209e-7``; draw the first index
  with probability ``a_i/S``, the second ``j ≠ i`` with ``a_j/(S − a_i)``; keep ``x_k / p_k`` at the two drawn
  positions, ``p`` the exact inclusion probabilities (:func:`sparse24.masks.mvue_inclusion_probs`). ``S − a_i`` is
  the sum of the other three (no cancellation). Exactly 2 kept per group.
- Randomness: Philox via ``tl.rand(seed, offset + 2·group + {0, 1})``. The same ``(seed, offset)`` gives the same
  sample; advance ``offset`` by ``2 · numel/4`` (the value :func:`mvue` returns as ``next_offset``) for a fresh
  stream. Group ids are int32: at most 2**30 groups per call.
- Not bit-exact with the reference (a different random stream; the reference divides in the input dtype): tested
  statistically (unbiased mean, keep frequencies = ``p``, kept values = ``x/p``).
- Replaces: ``sparse24.masks.mvue_24(x, generator)`` (cumsum, two scatters and a float64 probability pass).
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
    rows_view,
    tl,
    triton,
)
from torch import Tensor

from sparse24.masks import MVUE_EPS, mvue_24

__all__ = ["mvue", "mvue_triton", "mvue_ref"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _pick(u, c0, c1, c2):
    """Index drawn by inverse CDF: how many cumulative probabilities lie below ``u`` (0..3)."""
    return (c0 < u).to(tl.int32) + (c1 < u).to(tl.int32) + (c2 < u).to(tl.int32)


@triton.jit
def _out(x, k, i, j, p):
    keep = (k == i) | (k == j)
    return round_to(tl.where(keep, x.to(tl.float32) / p, 0.0), x.dtype)


@triton.jit(do_not_specialize=["seed", "offset"])  # a new offset every call must not recompile
def _mvue_kernel(x_ptr, out_ptr, NG, seed, offset, BLOCK: tl.constexpr, EPS: tl.constexpr):
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [B] group ids
    ok = g < NG
    base = g.to(tl.int64) * 4
    x0 = tl.load(x_ptr + base + 0, mask=ok, other=0.0)
    x1 = tl.load(x_ptr + base + 1, mask=ok, other=0.0)
    x2 = tl.load(x_ptr + base + 2, mask=ok, other=0.0)
    x3 = tl.load(x_ptr + base + 3, mask=ok, other=0.0)
    a0, a1 = tl.abs(x0.to(tl.float32)) + EPS, tl.abs(x1.to(tl.float32)) + EPS
    a2, a3 = tl.abs(x2.to(tl.float32)) + EPS, tl.abs(x3.to(tl.float32)) + EPS
    s = a0 + a1 + a2 + a3
    u1 = tl.rand(seed, offset + 2 * g)
    u2 = tl.rand(seed, offset + 2 * g + 1)
    i = _pick(u1, a0 / s, (a0 + a1) / s, (a0 + a1 + a2) / s)  # first draw
    b0, b1, b2 = tl.where(i == 0, 0.0, a0), tl.where(i == 1, 0.0, a1), tl.where(i == 2, 0.0, a2)
    b3 = tl.where(i == 3, 0.0, a3)
    sb = b0 + b1 + b2 + b3
    j = _pick(u2, b0 / sb, (b0 + b1) / sb, (b0 + b1 + b2) / sb)  # second draw, without replacement
    j = tl.where(j == i, (i + 1) % 4, j)  # only through rounding at the top of the cdf
    # inclusion probabilities p_k = t_k + a_k Σ_{m≠k} t_m / (S − a_m), with S − a_m summed from the other three
    r0, r1 = (a0 / s) / (a1 + a2 + a3), (a1 / s) / (a0 + a2 + a3)
    r2, r3 = (a2 / s) / (a0 + a1 + a3), (a3 / s) / (a0 + a1 + a2)
    rs = r0 + r1 + r2 + r3
    p0, p1 = a0 / s + a0 * (rs - r0), a1 / s + a1 * (rs - r1)
    p2, p3 = a2 / s + a2 * (rs - r2), a3 / s + a3 * (rs - r3)
    tl.store(out_ptr + base + 0, _out(x0, 0, i, j, p0), mask=ok)
    tl.store(out_ptr + base + 1, _out(x1, 1, i, j, p1), mask=ok)
    tl.store(out_ptr + base + 2, _out(x2, 2, i, j, p2), mask=ok)
    tl.store(out_ptr + base + 3, _out(x3, 3, i, j, p3), mask=ok)


def mvue_triton(x: Tensor, seed: int, offset: int = 0) -> tuple[Tensor, int]:
    """Triton launcher: ``(Z, next_offset)``, an unbiased 2:4 sample of ``x`` and the offset for the next call."""
    check_input("mvue", x, "x", DTYPES)
    launch_device_ok("mvue", _mvue_kernel, x)
    if not (0 <= int(seed) < 2**63 and 0 <= int(offset) < 2**31):
        raise ValueError(f"mvue: seed must be in [0, 2**63) and offset in [0, 2**31), got {seed}, {offset}")
    x2 = rows_view(x)
    out = torch.empty_like(x2)
    ng = x2.numel() // 4
    if ng >= 2**30:
        raise ValueError(f"mvue: {ng} groups exceed the 2**30 per call limit; split the tensor along its rows")
    if ng:
        BLOCK = 4096 if is_interpreter() else 512  # the stream depends on group ids only, not on BLOCK
        _mvue_kernel[(cdiv(ng, BLOCK),)](x2, out, ng, int(seed), int(offset), BLOCK=BLOCK, EPS=MVUE_EPS)
    return out.reshape(x.shape), int(offset) + 2 * ng


def mvue_ref(x: Tensor, seed: int, offset: int = 0) -> tuple[Tensor, int]:
    """Pure torch reference (same distribution, its own stream): the core :func:`sparse24.masks.mvue_24`."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(int(seed) * 1_000_003 + int(offset))
    return mvue_24(x, gen), int(offset) + 2 * (x.numel() // 4)


def mvue(x: Tensor, seed: int, offset: int = 0) -> tuple[Tensor, int]:
    """The op: the Triton kernel on CUDA, the pure-torch sampler elsewhere (same distribution, other stream)."""
    if x.is_cuda and HAS_TRITON:
        return mvue_triton(x, seed, offset)
    return mvue_ref(x, seed, offset)
