"""SLoRB (Sparse Low-Rank Boosting, AST arXiv 2407.20584 §4.3): a 2:4 linear plus a cheap low-rank term.

``Y = X (W⊙M)ᵀ + (X Pᵀ) Sᵀ`` with ``P ∈ R^{(d/k)×d}`` summing each group of ``k`` consecutive inputs (ones at columns
``[r·k, (r+1)·k)`` of row ``r``; optionally trainable) and ``S ∈ R^{N×(d/k)}`` initialised from the weights the mask
removed: ``S[i, r] = (1/k) Σ_{l∈r} W[i, l]·(1−M[i, l])`` ("mean"; or "sum", "zero", "xavier"). Rank ≤ d/k, extra
parameters ``N·d/k`` (+ ``d²/k`` with a trainable P). With ``rank=r`` instead of a group size, ``P`` [r, in] and ``S``
[out, r] are a free rank-r term set by the caller (``--method lowrank`` fits them), ``r·(N+d)`` parameters.

On disk (:func:`save_slorb_model`): the 2:4 part is a normal sparse24 folder (:func:`sparse24.save_sparse`); S and P go
to ``slorb.safetensors``, listed under ``extra["slorb"]`` in ``sparse24_config.json`` (``loader: "slorb"``). Plain
``transformers`` loads only the 2:4 part, i.e. a model *without* the SLoRB term, which is a different (worse) model
(so :func:`sparse24.load_sparse` refuses the folder); :func:`sparse24.load` / :func:`load_slorb_model` rebuild the
whole thing, and :func:`merge_slorb` turns each wrapper into a
dense ``nn.Linear`` holding ``W⊙M + S·P`` (exactly equivalent, but dense, so no 2:4 speed-up).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse24.linear import SparseLinear
from sparse24.loaders import register_loader

__all__ = ["SLoRBLinear", "slorb_init", "add_slorb", "slorb_modules", "without_slorb", "merge_slorb",
           "save_slorb_model", "load_slorb_model", "attach_slorb", "describe", "SLORB_FILE", "INITS"]

SLORB_FILE = "slorb.safetensors"
INITS = ("mean", "sum", "zero", "xavier")


def group_projection(in_features: int, k: int, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """``P`` ``[in/k, in]``: row ``r`` has ones at columns ``[r·k, (r+1)·k)``."""
    groups = torch.arange(in_features, device=device) // k  # [in]
    return (groups.unsqueeze(0) == torch.arange(in_features // k, device=device).unsqueeze(1)).to(dtype)


@torch.no_grad()
def slorb_init(weight: Tensor, mask: Tensor, k: int, init: str = "mean") -> Tensor:
    """``S`` ``[out, in/k]`` from the pruned weights ``W·(1−M)`` of each group of ``k`` inputs."""
    out_f, in_f = weight.shape
    removed = (weight * ~mask.bool()).reshape(out_f, in_f // k, k)  # [out, in/k, k]
    if init == "mean":
        return removed.mean(-1)
    if init == "sum":
        return removed.sum(-1)
    if init in ("zero", "xavier"):
        s = torch.zeros(out_f, in_f // k, dtype=weight.dtype, device=weight.device)
        return nn.init.xavier_uniform_(s) if init == "xavier" else s
    raise ValueError(f"SLoRB init {init!r}: choose one of {INITS}")


class SLoRBLinear(nn.Module):
    """A :class:`~sparse24.SparseLinear` (kept as ``.sparse``, same mask refresh and decay) plus ``(X Pᵀ) Sᵀ``."""

    def __init__(self, sparse: SparseLinear, group_size: int | None = 16, init: str = "mean",
                 trainable_projection: bool = True, rank: int | None = None) -> None:
        super().__init__()
        if not isinstance(sparse, SparseLinear):
            raise TypeError(f"SLoRBLinear wraps a sparse24.SparseLinear, got {type(sparse).__name__}")
        d = sparse.in_features
        self.sparse, self.in_features, self.out_features = sparse, d, sparse.out_features
        w = sparse.weight.detach()
        if rank is not None:  # a free rank-r term: P [rank, in] and S [out, rank], zeros until the caller sets them
            if rank < 1:
                raise ValueError(f"SLoRB rank {rank}: must be >= 1")
            self.group_size, self.rank = None, rank
            self.S = nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
            self.P = nn.Parameter(torch.zeros(rank, d, dtype=w.dtype, device=w.device))
            return
        if group_size is None or group_size <= 0 or d % group_size:
            raise ValueError(f"SLoRB group size {group_size} must divide in_features={d}; pick a divisor "
                             "(e.g. 16) or turn SLoRB off")
        self.group_size, self.rank = group_size, d // group_size
        self.S = nn.Parameter(slorb_init(w, sparse.mask, group_size, init))  # [out, in/k]
        self.P = None
        if trainable_projection:
            p = group_projection(d, group_size, w.dtype, w.device)  # [in/k, in]
            self.P = nn.Parameter(nn.init.xavier_uniform_(p) if init == "xavier" else p)

    @property
    def weight(self) -> Tensor:
        """The dense weight of the 2:4 part (what HF code that peeks at ``.weight`` expects)."""
        return self.sparse.weight

    @property
    def bias(self) -> Tensor | None:
        return self.sparse.bias

    def project(self, x: Tensor) -> Tensor:
        """``X Pᵀ`` ``[..., in/k]`` (a reshape-and-sum while P is the fixed group projection)."""
        if self.P is not None:
            return F.linear(x, self.P)
        return x.reshape(*x.shape[:-1], self.in_features // self.group_size, self.group_size).sum(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.sparse(x) + F.linear(self.project(x), self.S)  # [..., out]

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """``W⊙M + S·P`` ``[out, in]``: the dense matrix this module applies."""
        p = self.P if self.P is not None else group_projection(self.in_features, self.group_size,
                                                               self.S.dtype, self.S.device)
        return self.sparse.sparse_weight() + self.S @ p  # [out, in]

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, rank={self.rank}, trainable_projection={self.P is not None}"


def slorb_modules(model: nn.Module) -> Iterator[tuple[str, SLoRBLinear]]:
    for fqn, m in model.named_modules():
        if isinstance(m, SLoRBLinear):
            yield fqn, m


def _set(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def add_slorb(model: nn.Module, group_size: int = 16, init: str = "mean", trainable_projection: bool = True,
              names: list[str] | None = None) -> list[str]:
    """Wrap every ``SparseLinear`` (or those in ``names``) in an :class:`SLoRBLinear`; call after the initial mask."""
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)
              and (names is None or n in names)]
    for fqn, m in chosen:
        _set(model, fqn, SLoRBLinear(m, group_size, init, trainable_projection))
    return [n for n, _ in chosen]


@contextlib.contextmanager
def without_slorb(model: nn.Module) -> Iterator[dict[str, SLoRBLinear]]:
    """Temporarily put the bare ``SparseLinear`` back in place of every wrapper (to save the 2:4 part)."""
    wrappers = dict(slorb_modules(model))
    for fqn, w in wrappers.items():
        _set(model, fqn, w.sparse)
    try:
        yield wrappers
    finally:
        for fqn, w in wrappers.items():
            _set(model, fqn, w)


def merge_slorb(model: nn.Module) -> nn.Module:
    """Replace every wrapper by a dense ``nn.Linear`` holding ``W⊙M + S·P`` (same outputs, plain HF layout)."""
    for fqn, w in list(slorb_modules(model)):
        lin = w.sparse.to_dense()
        with torch.no_grad():
            lin.weight.copy_(w.merged_weight())
        _set(model, fqn, lin)
    return model


def slorb_record(model: nn.Module) -> dict[str, Any] | None:
    """What ``extra["slorb"]`` records (None without wrappers)."""
    mods = dict(slorb_modules(model))
    if not mods:
        return None
    ks = {m.group_size for m in mods.values()}
    return {"file": SLORB_FILE, "group_size": ks.pop() if len(ks) == 1 else None,
            "modules": {n: {"group_size": m.group_size, "trainable_projection": m.P is not None,
                            **({"rank": m.rank} if m.group_size is None else {})} for n, m in mods.items()},
            "note": "plain transformers loads only the 2:4 part (no SLoRB term); use sparse24.load(folder)"}


def save_slorb_model(model: nn.Module, folder: str | os.PathLike, *, compressed: bool = False,
                     overwrite: bool = False, method: str | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
    """``save_sparse`` of the 2:4 part + ``slorb.safetensors`` (S, P), one atomic folder write with one integrity
    record; the folder's ``loader`` is ``slorb`` (``sparse24.load`` rebuilds the wrappers, ``load_sparse`` refuses)."""
    from sparse24.io import save_sparse

    record = slorb_record(model)
    extra = {**(extra or {}), **({"slorb": record} if record else {})}
    with without_slorb(model) as wrappers:
        tensors = {}
        for fqn, w in wrappers.items():
            tensors[f"{fqn}.S"] = w.S.detach()
            if w.P is not None:
                tensors[f"{fqn}.P"] = w.P.detach()
        return save_sparse(model, folder, compressed=compressed, overwrite=overwrite, method=method, extra=extra,
                           loader="slorb" if tensors else "sparse24",
                           extra_files={SLORB_FILE: tensors} if tensors else None)


def attach_slorb(model: nn.Module, folder: str | os.PathLike, record: dict[str, Any],
                 tensors: dict[str, Tensor] | None = None) -> nn.Module:
    """Wrap the modules listed in ``record`` (``extra["slorb"]``) with their S (and P): ``tensors``, or read from
    ``folder/record['file']`` (verified against the checkpoint's integrity record)."""
    from sparse24.io import read_extra_file, read_sparse24_config

    path = Path(folder) / record["file"]
    if tensors is None:
        tensors = read_extra_file(folder, read_sparse24_config(folder), record["file"])
    present = dict(model.named_modules())
    for fqn, info in record["modules"].items():
        if not isinstance(present.get(fqn), SparseLinear):
            raise ValueError(f"{folder}: SLoRB module {fqn} is not a 2:4 module of the loaded model")
        sparse = present[fqn]
        wrapper = SLoRBLinear(sparse, info["group_size"], "zero", info["trainable_projection"], rank=info.get("rank"))
        want = {"S": wrapper.S} | ({"P": wrapper.P} if wrapper.P is not None else {})
        for leaf, param in want.items():
            t = tensors.get(f"{fqn}.{leaf}")
            if t is None or t.shape != param.shape:
                raise ValueError(f"{path}: {fqn}.{leaf} is missing or has the wrong shape "
                                 f"(expected {tuple(param.shape)}); the file is corrupt")
            with torch.no_grad():
                param.copy_(t)
        _set(model, fqn, wrapper)
    return model


def load_slorb_model(folder: str | os.PathLike, *, backend: str = "auto", device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> nn.Module:
    """The 2:4 model (as :func:`sparse24.load_sparse` builds it) plus the SLoRB wrappers recorded in
    ``sparse24_config.json`` (if any); registered as the ``slorb`` loader of :func:`sparse24.load`."""
    from sparse24.io import build_sparse_model, read_extra_file, read_sparse24_config

    rec = read_sparse24_config(folder)
    if rec["loader"] not in ("slorb", "sparse24"):
        raise ValueError(f"{folder} is a {rec['loader']!r} checkpoint; load it with sparse24.load(folder)")
    record = rec["extra"].get("slorb")
    tensors = read_extra_file(folder, rec, record["file"]) if record else None  # verified before any model is built
    model = build_sparse_model(folder, rec, backend=backend, device=device, dtype=dtype)
    if record:
        attach_slorb(model, folder, record, tensors)
        model.to(device)
    return model.eval()


register_loader("slorb", None, load_slorb_model)


def describe(model: nn.Module) -> dict[str, int]:
    """Counts for reports: wrapped layers and their extra parameters."""
    mods = [m for _, m in slorb_modules(model)]
    return {"layers": len(mods), "extra_params": sum(m.S.numel() + (m.P.numel() if m.P is not None else 0)
                                                     for m in mods)}
