"""Pack a 2:4 tensor into torch's CUTLASS layout: kept values ``[m, k/2]`` + reordered metadata.

Contract
- Layout in: 2-D ``[m, k]`` row-major (a weight ``[out, in]``; for ``W̃ᵀ`` pass ``w.t().contiguous()``), 2:4 along
  ``k``. Constraints of the conversion: fp16/bf16 ``m % 32 == 0``, ``k % 32 == 0``; int8 ``m % 16 == 0``,
  ``k % 64 == 0`` (an even number of metadata columns: with an odd one torch's reordering computes offsets past the
  end of the buffer). The CUTLASS matmul needs more: sparse operand at least (32, 64) for fp16/bf16, (16, 128) int8.
- Layout out: ``values [m, k/2]`` (input dtype; the two kept entries of each group in index order) and ``meta``
  ``[m, k/16]`` int16 (fp16/bf16) or ``[m, k/32]`` int32 (int8): 4 bits per group, ``i0 | i1 << 2``, packed 4 (or 8)
  groups per element, then scattered into CUTLASS's ``ColumnMajorInterleaved<2>`` order with the row interleave
  (32/4 for int16, 16/2 for int32) and the 2x2 swizzle. Bit-identical to
  ``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass``, including its encodings
  for groups with fewer than two non-zeros (``0000 -> 0b1110``). Wrap the result with
  ``SparseSemiStructuredTensorCUTLASS(shape, values, meta, None, None, None)`` to run ``F.linear`` on CUTLASS (SM8x).
- Validation: ``validate=True`` (default) refuses tensors that are not 2:4 (torch silently packs garbage,
  pytorch#159872); it costs one host sync, so the per-step training path passes ``validate=False`` for masks it built.
- cuSPARSELt needs something else: its compressed operand is one opaque buffer (values + metadata in a
  version-specific, alignment-padded layout) that only ``torch._cslt_compress(w)`` (cusparseLtSpMMACompress) produces;
  sparse24 never packs it itself.
- Dtypes: float16, bfloat16, int8 (float32 on CUTLASS uses a 1:2 pattern and is not packed here).
- Replaces: ``sparse_semi_structured_from_dense_cutlass(w)`` (a dozen torch ops plus a scatter of the metadata).
- Speed: not yet measured on a GPU.
"""

from __future__ import annotations

import torch
from sparse24.kernels._utils import HAS_TRITON, cdiv, check_input, launch_device_ok, tl, triton
from torch import Tensor

from sparse24.compress import check_24

__all__ = ["pack_cutlass", "pack_cutlass_triton", "pack_cutlass_ref", "unpack_cutlass_ref", "META_FORMAT"]

DTYPES = (torch.float16, torch.bfloat16, torch.int8)
# dtype -> (meta dtype, groups per meta element, rows multiple, cols multiple)
META_FORMAT = {
    torch.float16: (torch.int16, 4, 32, 32),
    torch.bfloat16: (torch.int16, 4, 32, 32),
    torch.int8: (torch.int32, 8, 16, 64),
}


@triton.jit
def _select(i, x0, x1, x2, x3):
    return tl.where(i == 0, x0, tl.where(i == 1, x1, tl.where(i == 2, x2, x3)))


@triton.jit
def _pack_cutlass_kernel(w_ptr, val_ptr, meta_ptr, M, K, MC, Q: tl.constexpr, GROUP: tl.constexpr,
                       INTERWEAVE: tl.constexpr, IS_FLOAT: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]  # [BR, 1] rows
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]  # [1, BC] metadata columns
    ok = (r < M) & (c < MC)
    r64 = r.to(tl.int64)
    meta = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.int32)
    for q in tl.static_range(Q):
        g = c * Q + q  # group index along k
        src = w_ptr + r64 * K + 4 * g
        x0 = tl.load(src + 0, mask=ok, other=0)
        x1 = tl.load(src + 1, mask=ok, other=0)
        x2 = tl.load(src + 2, mask=ok, other=0)
        x3 = tl.load(src + 3, mask=ok, other=0)
        if IS_FLOAT:  # 16-bit floats arrive as int16 bit patterns; -0.0 is zero, as in torch's `dense != 0`
            m0, m1, m3 = (x0 & 0x7FFF) != 0, (x1 & 0x7FFF) != 0, (x3 & 0x7FFF) != 0
        else:
            m0, m1, m3 = x0 != 0, x1 != 0, x3 != 0
        # torch's Espresso-minimised encoding (also defines the pattern for groups with < 2 or > 2 non-zeros)
        e0, e1, e2 = m0 & m1, (~m0) & m1, (~m0) & (~m1)
        i0 = e1.to(tl.int32) | (e2.to(tl.int32) << 1)
        i1 = (e0 | e2 | m3).to(tl.int32) | ((e1 | (~m1)).to(tl.int32) << 1)
        dst = val_ptr + r64 * (K // 2) + 2 * g
        tl.store(dst + 0, _select(i0, x0, x1, x2, x3), mask=ok)
        tl.store(dst + 1, _select(i1, x0, x1, x2, x3), mask=ok)
        meta = meta | ((i0 | (i1 << 2)) << (4 * q))
    # scatter into CUTLASS's interleaved column-major metadata order
    dr = r // GROUP * GROUP + (r % 8) * INTERWEAVE + (r % GROUP) // 8
    dc = c + 0 * r
    swap = ((dr % 2 == 0) & (dc % 2 == 1)).to(tl.int32) - ((dr % 2 == 1) & (dc % 2 == 0)).to(tl.int32)
    dr = dr + swap
    dc = dc - swap
    off = (dc // 2).to(tl.int64) * M * 2 + dr * 2 + dc % 2
    tl.store(meta_ptr + off, meta.to(meta_ptr.dtype.element_ty), mask=ok)


def pack_cutlass_triton(w: Tensor, validate: bool = True) -> tuple[Tensor, Tensor]:
    """Triton launcher: pack a 2-D 2:4 tensor into ``(values [m, k/2], meta)`` in the CUTLASS layout torch consumes."""
    check_input("pack_cutlass", w, "w", DTYPES, ndim=2)
    meta_dtype, q, rmul, cmul = META_FORMAT[w.dtype]
    m, k = w.shape
    if m % rmul or k % cmul:
        raise ValueError(
            f"pack_cutlass: shape {tuple(w.shape)} {w.dtype} needs rows % {rmul} == 0 and cols % {cmul} == 0 for the "
            "CUTLASS layout; pad the weight or use the dense backend"
        )
    if validate:
        check_24(w, "pack_cutlass input")
    launch_device_ok("pack_cutlass", _pack_cutlass_kernel, w)
    w = w.contiguous()
    values = torch.empty(m, k // 2, dtype=w.dtype, device=w.device)
    bits = torch.int16 if w.dtype.is_floating_point else w.dtype  # values move as bit patterns, never as floats
    mc = k // (4 * q)
    meta = torch.empty(m, mc, dtype=meta_dtype, device=w.device)
    if w.numel():
        BR, BC = 32, 16
        _pack_cutlass_kernel[(cdiv(m, BR), cdiv(mc, BC))](
            w.view(bits), values.view(bits), meta, m, k, mc, Q=q, GROUP=32 if q == 4 else 16,
            INTERWEAVE=4 if q == 4 else 2, IS_FLOAT=w.dtype.is_floating_point, BLOCK_R=BR, BLOCK_C=BC,
        )
    return values, meta


def pack_cutlass_ref(w: Tensor, validate: bool = True) -> tuple[Tensor, Tensor]:
    """Reference: torch's pure-torch CUTLASS conversion (runs on CPU)."""
    if validate:
        check_24(w, "pack_cutlass input")
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    return sparse_semi_structured_from_dense_cutlass(w)


def unpack_cutlass_ref(values: Tensor, meta: Tensor) -> Tensor:
    """Inverse, by torch's ``sparse_semi_structured_to_dense_cutlass`` (the round-trip oracle)."""
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_to_dense_cutlass

    return sparse_semi_structured_to_dense_cutlass(values, meta)


def pack_cutlass(w: Tensor, validate: bool = True) -> tuple[Tensor, Tensor]:
    """The op: the Triton kernel on CUDA, the torch conversion elsewhere (same result bit for bit)."""
    if w.is_cuda and HAS_TRITON:
        return pack_cutlass_triton(w, validate)
    return pack_cutlass_ref(w, validate)
