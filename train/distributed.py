"""Scale-out glue for the trainer: the accelerator (DDP or FSDP2), shard checks, per-rank MVUE streams, full state.

``accelerate launch --config_file train/accelerate/fsdp2.yaml`` asks for FSDP2 (``fully_shard``) through the
environment (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION=2``). accelerate honours it on GPUs; on a machine without GPUs
it falls back to plain multi-CPU (DDP over gloo), so :func:`make_accelerator` then turns the same FSDP2 plugin on
over gloo itself. The CPU tests run FSDP2 that way, through accelerate's own ``fully_shard`` preparation.
"""

from __future__ import annotations

import os
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn

from sparse24.api import sparse_modules
from sparse24.sharding import full_tensor, is_sharded, row_range, shard_like

__all__ = ["make_accelerator", "fsdp_requested", "check_shards", "unshardable_layers", "seed_mvue_streams",
           "full_state_dict", "load_full_state_dict", "mvue_stream_seed", "MVUE_RANK_STRIDE"]

MVUE_RANK_STRIDE = 1_000_003  # seed offset between ranks (the gpu branch's SparseLinear uses the same stride)
MVUE_RUN_STRIDE = 104_729  # seed offset between runs with another --seed
_BASE_SEED: WeakKeyDictionary[nn.Module, int] = WeakKeyDictionary()  # each layer's seed from sparsify


def fsdp_requested() -> bool:
    """True when the launcher asked for FSDP (``accelerate launch`` with an FSDP config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


PRECISIONS = ("auto", "no", "bf16", "fp16")


def resolve_precision(precision: str, cpu: bool) -> str:
    """``auto``: bf16 autocast on CUDA (fp32 master weights, the 2:4 GEMMs in bf16 on the sparse kernels), none on
    the CPU; ``bf16``/``fp16`` need a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    mp = ("no" if cpu else "bf16") if precision == "auto" else precision
    if cpu and mp != "no":
        raise ValueError(f"--precision {mp} needs a CUDA GPU (autocast on the CPU is not used); pass --precision no")
    return mp


def make_accelerator(precision: str = "auto", cpu: bool | None = None) -> Any:
    """An ``Accelerator`` for this process: DDP or FSDP2 as launched (FSDP2 over gloo when there is no GPU), with
    accelerate's mixed precision from ``precision`` (see :func:`resolve_precision`)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if fsdp_requested() and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError("sparse24 train supports FSDP2 only (fully_shard): set fsdp_version: 2 in the accelerate "
                         "config (see train/accelerate/fsdp2.yaml)")
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    acc = Accelerator(cpu=cpu, mixed_precision=resolve_precision(precision, cpu))
    if fsdp_requested() and acc.distributed_type == DistributedType.MULTI_CPU:
        # accelerate only turns FSDP on for accelerators; fully_shard itself runs on CPU tensors over gloo
        # (every later AcceleratorState() re-reads PartialState's type, so both are set)
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
        PartialState().distributed_type = acc.state.distributed_type = DistributedType.FSDP
    return acc


def unshardable_layers(model: nn.Module, world_size: int) -> list[str]:
    """The transposable 2:4 layers of which some row shard over ``world_size`` ranks would not hold a multiple of 4
    rows (its 4x4 blocks would straddle two ranks), each as ``"name (rows -> shard sizes)"``."""
    bad = []
    for fqn, m in sparse_modules(model):
        if getattr(m.config, "transposable", False):
            sizes = [b - a for a, b in (row_range(m.out_features, r, world_size) for r in range(world_size))]
            if any(n % 4 for n in sizes):
                bad.append(f"{fqn} ({m.out_features} rows -> shards of {sizes})")
    return bad


def check_shards(model: nn.Module) -> None:
    """Refuse an FSDP2 sharding under which a transposable layer has a shard of a row count not a multiple of 4.
    Enforced, not padded: padding the weight would change the model and FSDP2's own layout."""
    sharded = [m.weight for _, m in sparse_modules(model) if is_sharded(m.weight)]
    bad = unshardable_layers(model, sharded[0].device_mesh.size()) if sharded else []
    if bad:
        raise ValueError("transposable 2:4 masks need every FSDP2 shard's rows to be a multiple of 4; these layers "
                         f"are not: {', '.join(bad)}. Use a number of processes that divides out_features/4, a "
                         "recipe without transposable masks, or DDP (train/accelerate/ddp.yaml)")


def seed_mvue_streams(model: nn.Module, run_seed: int, rank: int) -> None:
    """Give every 2:4 layer an MVUE stream of its own per run seed and rank (call before the first forward).

    The layer's ``seed`` (its index from ``sparsify``) is shifted by the run seed on every rank alike. A
    ``SparseLinear`` that adds its rank itself (it has ``_rank``) is told the rank; otherwise the rank is added here.
    The streams' states are checkpointed per rank, so a resumed run draws the same numbers."""
    for _, m in sparse_modules(model):
        base = _BASE_SEED.setdefault(m, m.seed)  # a second trainer on the same layers starts from the same base
        m.seed = (base + MVUE_RUN_STRIDE * run_seed) % 2**31
        if hasattr(m, "_rank"):  # the layer adds its rank at draw time; one built before the process group
            m._rank = rank  # existed (the model is built before the Accelerator) holds 0 and FSDP2 never re-resolves it
        else:
            m.seed = (m.seed + MVUE_RANK_STRIDE * rank) % 2**31
        if getattr(m, "_generator", None) is not None:  # already drawn from: restart from the new seed
            m._generator = None


def mvue_stream_seed(m: nn.Module) -> int:
    """The seed of the MVUE stream a 2:4 layer draws from on this process (its seed, plus its rank's offset where
    the layer adds the rank itself at draw time)."""
    return int(m.seed) + (MVUE_RANK_STRIDE * int(m._rank) if hasattr(m, "_rank") else 0)


def full_state_dict(model: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every sharded tensor gathered whole (collective: every rank calls it).

    Under FSDP2 each gathered tensor goes to the CPU at once (one whole tensor at a time on the accelerator), and
    only a rank with ``keep`` keeps them (the others return ``{}``); a plain model's state is returned as is."""
    sd = model.state_dict()
    if not any(is_sharded(v) for v in sd.values()):
        return sd if keep else {}
    out = {}
    for k, v in sd.items():
        whole = full_tensor(v)
        if keep:
            out[k] = whole.detach().cpu()
    return out


def load_full_state_dict(model: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Load whole tensors into a model that may be row-sharded: each rank keeps its rows."""
    live = model.state_dict()
    model.load_state_dict({k: shard_like(v, live[k]) if k in live else v for k, v in full.items()})
