"""Row shards of FSDP2 (``fully_shard``) parameters: the local rows, where they start, and gathering them back.

FSDP2 shards every parameter along dim 0 (``Shard(0)``, ``torch.chunk`` sizes: ``ceil(rows / world)`` per rank, the
last ones shorter or empty). For a linear weight ``[out, in]`` dim 0 is the output dimension, so a rank holds whole
rows and every 2:4 group (4 neighbours along the input dimension) lies on one rank. Plain tensors pass through: on
one process every helper here is the identity, so mask and decay code can call them unconditionally.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["is_sharded", "local", "row_range", "shard_rows", "gather_rows", "all_sum", "full_tensor", "shard_like",
           "world"]


def is_sharded(t: Tensor) -> bool:
    """True for a DTensor (a parameter or gradient under ``fully_shard``)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_row_sharded(t: Tensor) -> None:
    from torch.distributed.tensor import Shard

    if t.device_mesh.ndim != 1 or t.placements[0] != Shard(0):
        raise NotImplementedError(f"sparse24 supports parameters sharded along dim 0 on a 1-D mesh (FSDP2's default); "
                                  f"got placements {t.placements} on a {t.device_mesh.ndim}-D mesh")


def local(t: Tensor) -> Tensor:
    """This rank's rows of a sharded tensor (a view that writes through); a plain tensor unchanged."""
    if not is_sharded(t):
        return t
    _check_row_sharded(t)
    return t.to_local()


def row_range(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of the rows ``rank`` holds under ``Shard(0)`` (``torch.chunk`` sizes)."""
    chunk = -(-rows // world_size)
    start = min(rank * chunk, rows)
    return start, min(start + chunk, rows)


def shard_rows(full: Tensor, like: Tensor) -> Tensor:
    """The rows of ``full`` that this rank holds of ``like`` (a sharded tensor of the same shape); ``full`` itself
    when ``like`` is a plain tensor."""
    if not is_sharded(like):
        return full
    _check_row_sharded(like)
    mesh = like.device_mesh
    start, stop = row_range(full.shape[0], mesh.get_local_rank(), mesh.size())
    return full[start:stop]


def gather_rows(part: Tensor, rows: int) -> Tensor:
    """Concatenate every rank's ``part`` (its ``row_range`` of a ``rows``-row tensor) into the full tensor, on every
    rank. Bool tensors travel as uint8 (gloo has no bool)."""
    rank, ws = world()
    if ws == 1:
        return part
    chunk = -(-rows // ws)
    wire = part.to(torch.uint8) if part.dtype == torch.bool else part
    padded = wire.new_zeros((chunk, *part.shape[1:]))  # every rank sends the same size
    padded[: part.shape[0]] = wire
    bufs = [torch.empty_like(padded) for _ in range(ws)]
    torch.distributed.all_gather(bufs, padded)
    full = torch.cat([b[: row_range(rows, r, ws)[1] - row_range(rows, r, ws)[0]] for r, b in enumerate(bufs)])
    return full.to(part.dtype)


def all_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over all ranks (in place, returned); identity on one process."""
    if world()[1] > 1:
        torch.distributed.all_reduce(t)
    return t


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor on every rank (an all-gather for a DTensor; collective: every rank must call it)."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """``full`` as a DTensor placed like ``like`` (this rank's rows, copied); ``full`` when ``like`` is plain."""
    if not is_sharded(like) or tuple(full.shape) != tuple(like.shape):
        return full
    from torch.distributed.tensor import DTensor

    part = shard_rows(full, like).to(like.to_local().device).clone()
    return DTensor.from_local(part, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())
