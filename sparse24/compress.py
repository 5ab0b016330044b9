"""The portable compressed 2:4 format: kept values ``[..., in/2]`` plus one uint8 of metadata per group.

This is sparse24's on-disk packing (the one place packing happens for checkpoints); the names carry ``disk`` because
the CUTLASS/cuSPARSELt runtime layouts (``sparse24.kernels.compress24``) are a different thing. Each group of 4 along
the last dim stores its two kept values in index order and a byte ``i0 | i1 << 2`` with ``i0 < i1``. Groups with fewer
than two non-zeros keep (and store) zeros, so every group has exactly two slots, as the hardware formats need.
Compression verifies the 2:4 pattern first and refuses anything else (torch silently produces garbage, pytorch#159872).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparse24.masks import magnitude_mask_24

__all__ = ["pack_24_disk", "unpack_24_disk", "check_24", "VALID_META"]

# the 6 valid (i0, i1) pairs, i0 < i1, encoded as i0 | i1 << 2
VALID_META = tuple(i | j << 2 for i in range(4) for j in range(i + 1, 4))


_PRUNE_HINT = "prune it first (sparse24.magnitude_mask_24 or sparse24 prune)"


def check_24(w: Tensor, name: str = "tensor", hint: str = _PRUNE_HINT) -> None:
    """Raise, naming the tensor and the first offending group, unless every group of 4 has <= 2 non-zeros.
    ``hint`` ends the message: what the caller's user should do about it."""
    if w.dim() < 1 or w.shape[-1] % 4:
        raise ValueError(f"{name}: last dimension of shape {tuple(w.shape)} is not divisible by 4, so it is not 2:4")
    nz = (w != 0).reshape(-1, w.shape[-1] // 4, 4).sum(-1)  # [rows, G]
    bad = (nz > 2).nonzero()
    if len(bad):
        row, group = bad[0].tolist()
        vals = w.reshape(-1, w.shape[-1])[row, 4 * group : 4 * group + 4].tolist()
        raise ValueError(
            f"{name} is not 2:4: row {row}, group {group} (columns {4 * group}..{4 * group + 3}) has "
            f"{int(nz[row, group])} non-zeros {vals} ({len(bad)} bad groups in all); {hint}"
        )


def pack_24_disk(w: Tensor, name: str = "tensor") -> tuple[Tensor, Tensor]:
    """Pack a 2:4 tensor ``[..., in]`` into ``values [..., in/2]`` and ``meta`` uint8 ``[..., in/4]``."""
    if not w.is_floating_point():
        raise TypeError(f"{name}: dtype {w.dtype} is not supported; compress floating-point weights")
    check_24(w, name)
    g = w.reshape(*w.shape[:-1], w.shape[-1] // 4, 4)  # [..., G, 4]
    keep = magnitude_mask_24((w != 0).to(torch.float32)).reshape(g.shape)  # non-zeros first, then later zeros
    order = torch.arange(4, device=w.device)
    idx = torch.argsort((~keep).to(torch.int64) * 4 + order, dim=-1)[..., :2]  # kept positions, ascending
    values = torch.gather(g, -1, idx).reshape(*w.shape[:-1], w.shape[-1] // 2)
    meta = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)
    return values, meta


def unpack_24_disk(values: Tensor, meta: Tensor, name: str = "tensor") -> Tensor:
    """Inverse of :func:`pack_24_disk`; validates shapes and metadata so corrupt input fails loudly."""
    if meta.dtype != torch.uint8:
        raise ValueError(f"{name}: metadata dtype {meta.dtype} is not uint8; the compressed file is corrupt")
    if values.shape[:-1] != meta.shape[:-1] or values.shape[-1] != 2 * meta.shape[-1]:
        raise ValueError(
            f"{name}: values {tuple(values.shape)} and metadata {tuple(meta.shape)} do not match "
            "(need values [..., 2g] with metadata [..., g]); the compressed file is corrupt"
        )
    valid = torch.tensor(VALID_META, dtype=torch.uint8, device=meta.device)
    if not bool(torch.isin(meta, valid).all()):
        raise ValueError(f"{name}: metadata holds invalid index pairs; the compressed file is corrupt")
    m = meta.to(torch.int64)
    idx = torch.stack([m & 3, m >> 2], dim=-1)  # [..., G, 2]
    out = torch.zeros(*meta.shape, 4, dtype=values.dtype, device=values.device)
    out.scatter_(-1, idx, values.reshape(*meta.shape, 2))
    return out.reshape(*meta.shape[:-1], 4 * meta.shape[-1])
