"""The compressed-tensors ``sparse-24-bitmask`` codec for one weight (the format of compressed-tensors 0.9–0.14).

A 2:4 weight ``W [out, in]`` is stored as three tensors: ``compressed [out, in/2]`` (the kept values, row-major, in
increasing column order), ``bitmask`` uint8 ``[out, ceil(in/8)]`` (bit j of byte k flags column 8k+j: numpy's
``packbits(..., bitorder="little")`` along ``in``) and ``shape`` int ``[2, 1]`` (``[[out], [in]]``). Every group of
4 along ``in`` flags exactly two positions; a group with fewer non-zeros flags (and stores) zeros.

The writer refuses a weight that is not 2:4 (compressed-tensors' own writer silently keeps the top-2 of each group).
The reader validates everything it decodes, so a damaged file fails naming the tensor instead of loading garbage.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparse24.compress import check_24
from sparse24.masks import magnitude_mask_24

__all__ = ["encode_bitmask_24", "decode_bitmask_24", "pack_bits", "unpack_bits", "BITMASK_DTYPES"]

# value dtypes a sparse-only checkpoint stores; float8 only appears with quantization, which is refused upstream
BITMASK_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# elements per row block: a 14336 x 4096 weight is coded in ~4M-element pieces, so the masks, counts and indices
# the coding needs stay at tens of MiB instead of several times the weight (benchmarks/results/ct_memory.md)
_BLOCK = 1 << 22
_DAMAGED = "the checkpoint is damaged: re-download it, or re-export it with compressed-tensors<=0.14.0.1"


def pack_bits(mask: Tensor) -> Tensor:
    """Bool ``[out, in]`` -> uint8 ``[out, ceil(in/8)]``, bit j of byte k = column 8k+j (little-endian bit order)."""
    out, cols = mask.shape
    nbytes = (cols + 7) // 8
    padded = torch.zeros(out, nbytes * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :cols] = mask.to(torch.uint8)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=mask.device)
    return (padded.reshape(out, nbytes, 8) * weights).sum(-1, dtype=torch.uint8)  # [out, nbytes]


def unpack_bits(bitmask: Tensor, cols: int) -> Tensor:
    """uint8 ``[out, nbytes]`` -> bool ``[out, nbytes*8]`` (callers slice to ``cols`` after checking the padding)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts).bitwise_and_(1)  # [out, nbytes, 8], 0/1
    return bits.reshape(bitmask.shape[0], -1).view(torch.bool)  # zero-copy: the bytes are 0 or 1


def encode_bitmask_24(w: Tensor, name: str = "weight") -> tuple[Tensor, Tensor]:
    """A 2:4 weight ``[out, in]`` -> ``(compressed [out, in/2], bitmask uint8 [out, ceil(in/8)])``."""
    if w.dim() != 2:
        raise ValueError(f"{name}: sparse-24-bitmask stores 2-D weights [out, in], got shape {tuple(w.shape)}")
    if w.dtype not in BITMASK_DTYPES:
        raise TypeError(f"{name}: dtype {w.dtype} is not stored by sparse-24-bitmask; cast to bfloat16 or float16")
    out, cols = w.shape
    if cols % 4:
        check_24(w, name)  # raises: not divisible by 4
    values = torch.empty(out, cols // 2, dtype=w.dtype, device=w.device)
    bitmask = torch.empty(out, (cols + 7) // 8, dtype=torch.uint8, device=w.device)
    for r0, r1 in _row_blocks(out, cols):
        blk = w[r0:r1]  # [rows, in]
        try:
            check_24(blk, name)  # refuse rather than truncate to the top-2 per group
        except ValueError:
            check_24(w, name)  # the same error with whole-tensor row numbers
            raise
        keep = magnitude_mask_24((blk != 0).to(torch.float32))  # [rows, in]: non-zeros, then zeros to fill 2 slots
        values[r0:r1] = blk[keep].view(r1 - r0, cols // 2)  # row-major = increasing column within each row
        bitmask[r0:r1] = pack_bits(keep)
    return values, bitmask


def _row_blocks(out: int, cols: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK // max(cols, 1))
    return [(r0, min(out, r0 + step)) for r0 in range(0, out, step)]


def decode_bitmask_24(compressed: Tensor, bitmask: Tensor, shape: Tensor | list[int], name: str = "weight") -> Tensor:
    """Inverse of :func:`encode_bitmask_24`: the dense ``[out, in]`` weight, zeros in place; validates everything.

    ``name`` is the module path (``model.layers.0.mlp.up_proj``): every error names the tensor at fault.
    """
    dims = shape.flatten().tolist() if isinstance(shape, Tensor) else list(shape)
    if isinstance(shape, Tensor) and (shape.is_floating_point() or shape.numel() != 2):
        raise ValueError(f"{name}.shape must hold two integers [out, in], got {shape.dtype} {tuple(shape.shape)}; "
                         + _DAMAGED)
    if len(dims) != 2 or min(dims) <= 0:
        raise ValueError(f"{name}.shape is {dims}, not a positive [out, in]; " + _DAMAGED)
    out, cols = (int(d) for d in dims)
    if cols % 4:
        raise ValueError(f"{name}: in_features={cols} is not divisible by 4, so the weight cannot be 2:4; " + _DAMAGED)
    if tuple(compressed.shape) != (out, cols // 2):
        raise ValueError(f"{name}.compressed has shape {tuple(compressed.shape)} but {name}.shape [{out}, {cols}] "
                         f"needs [{out}, {cols // 2}] (two kept values per group of 4); " + _DAMAGED)
    if compressed.dtype not in BITMASK_DTYPES:
        raise TypeError(f"{name}.compressed has dtype {compressed.dtype}; a sparse-only checkpoint stores fp16, bf16 "
                        "or fp32 values (float8 values come with quantization, which sparse24 does not import)")
    nbytes = (cols + 7) // 8
    if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (out, nbytes):
        raise ValueError(f"{name}.bitmask is {bitmask.dtype} {tuple(bitmask.shape)}, expected torch.uint8 "
                         f"({out}, {nbytes}) for a [{out}, {cols}] weight; " + _DAMAGED)
    dense = torch.zeros(out, cols, dtype=compressed.dtype, device=compressed.device)
    for r0, r1 in _row_blocks(out, cols):
        _decode_rows(compressed[r0:r1], bitmask[r0:r1], dense[r0:r1], r0, cols, name)
    return dense


def _decode_rows(compressed: Tensor, bitmask: Tensor, dense: Tensor, r0: int, cols: int, name: str) -> None:
    """Validate one row block and scatter its values into ``dense`` (a view of the output); rows start at ``r0``."""
    bits = unpack_bits(bitmask, cols)  # [rows, nbytes*8]
    if bool(bits[:, cols:].any()):
        raise ValueError(f"{name}.bitmask sets padding bits beyond column {cols - 1}; " + _DAMAGED)
    mask = bits[:, :cols]  # [rows, in]
    per_group = mask.reshape(mask.shape[0], cols // 4, 4).sum(-1, dtype=torch.uint8)  # [rows, in/4]
    per_row = per_group.sum(-1)  # [rows]
    bad_rows = (per_row != cols // 2).nonzero()
    if len(bad_rows):
        r = int(bad_rows[0])
        raise ValueError(f"{name}.bitmask flags {int(per_row[r])} positions in row {r0 + r} but {name}.compressed "
                         f"holds {cols // 2} values per row; " + _DAMAGED)
    bad = (per_group != 2).nonzero()
    if len(bad):
        r, g = bad[0].tolist()
        raise ValueError(f"{name} is not 2:4: row {r0 + r}, group {g} (columns {4 * g}..{4 * g + 3}) keeps "
                         f"{int(per_group[r, g])} of 4 values; sparse-24-bitmask keeps exactly 2 of every 4. This "
                         "checkpoint is not a valid 2:4 export: prune the dense model with `sparse24 prune` instead")
    dense.masked_scatter_(mask, compressed)  # row-major fill, the order the writer gathered in; no index tensor
