"""``ArmorLinear``: inference module for an ARMOR-pruned layer, and its checkpoint format.

``y = A' · core · B' · x + b`` with ``A' = D_r A`` and ``B' = B D_c`` (the norms folded in), both block-diagonal, around
one 2:4 GEMM run by any sparse24 backend. Inference only: the 2:4 GEMM backends need not support autograd.

Checkpoint folder (written by :func:`save_armor`, atomically):
- the HF folder of ``save_pretrained`` whose ``*.weight`` for every ARMOR layer is the dense equivalent
  ``W_eff = A' core B'``: plain ``transformers`` loads it as a dense model that
  computes the same function — plain transformers cannot represent ``A·W·B`` — but with no 2:4 speed-up;
- ``armor.safetensors``: per layer ``<fqn>.a_blocks`` [nJ, bs, bs], ``<fqn>.b_blocks`` [nK, bs, bs] and the core
  packed by :func:`sparse24.pack_24_disk` (``<fqn>.core.values`` [out, in/2], ``<fqn>.core.meta`` [out, in/4]);
- ``sparse24_config.json`` with ``loader`` and ``method: "armor"``, ``modules: []`` (no SparseLinear to rebuild),
  ``extra.armor`` = {file, layers: {fqn: {block_size, shape}}, params} and the integrity record of both files.
:func:`load_armor` (registered as the ``armor`` loader of :func:`sparse24.load`) loads the HF folder, then swaps each
listed ``nn.Linear`` for an ``ArmorLinear``; :func:`sparse24.load_sparse` refuses the folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparse24.backends import select_backend
from sparse24.compress import pack_24_disk, unpack_24_disk
from sparse24.io import read_sparse24_config, write_checkpoint
from sparse24.loaders import register_loader
from sparse24.runtime import set_module

__all__ = ["ArmorLinear", "armor_modules", "save_armor", "load_armor", "armor_parameter_overhead", "ARMOR_FILE"]

ARMOR_FILE = "armor.safetensors"


class ArmorLinear(nn.Module):
    """Drop-in ``nn.Linear`` for inference: x → block-diag ``B'`` → 2:4 core GEMM (sparse24 backend) → ``A'``."""

    def __init__(self, in_features: int, out_features: int, block_size: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 backend: str = "auto") -> None:
        super().__init__()
        if block_size % 4 or in_features % block_size or out_features % block_size:
            raise ValueError(f"ArmorLinear: block_size={block_size} must be a multiple of 4 dividing both "
                             f"in_features={in_features} and out_features={out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.block_size, self.backend = block_size, backend
        kw = {"device": device, "dtype": dtype}
        self.a_blocks = nn.Parameter(torch.eye(block_size, **kw).repeat(out_features // block_size, 1, 1))
        self.core = nn.Parameter(torch.zeros(out_features, in_features, **kw))  # 2:4 with zeros
        self.b_blocks = nn.Parameter(torch.eye(block_size, **kw).repeat(in_features // block_size, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self._prepared: tuple[Any, Any] | None = None

    @classmethod
    def from_result(cls, result, bias: Tensor | None = None, dtype: torch.dtype | None = None,
                    backend: str = "auto") -> ArmorLinear:
        """Build from an :class:`~sparse24.prune.armor.ArmorResult`, folding ``D_r`` into A and ``D_c`` into B."""
        out_f, in_f = result.x.shape
        bs = result.a.shape[-1]
        dtype = dtype or (bias.dtype if bias is not None else result.x.dtype)
        mod = cls(in_f, out_f, bs, bias is not None, device=result.x.device, dtype=dtype, backend=backend)
        with torch.no_grad():
            mod.a_blocks.copy_(result.d_r.reshape(-1, bs, 1) * result.a)  # D_r A, per block rows
            mod.b_blocks.copy_(result.b * result.d_c.reshape(-1, 1, bs))  # B D_c, per block columns
            mod.core.copy_(result.x * result.mask)
            if bias is not None:
                mod.bias.copy_(bias)
        return mod

    def _core_prepared(self, tokens: int) -> tuple[Any, Any]:
        key = (self.core.device, self.core.dtype, self.core._version, self.core.data_ptr())
        if self._prepared is None or self._prepared[0] != key:
            backend = select_backend(self.backend, (self.out_features, self.in_features), self.core.dtype,
                                     self.core.device, tokens=tokens)
            self._prepared = (key, (backend, backend.prepare(self.core.detach())))
        return self._prepared[1]

    def forward(self, x: Tensor) -> Tensor:
        bs, lead = self.block_size, x.shape[:-1]
        x2 = x.reshape(-1, self.in_features // bs, bs)  # [T, nK, bs]
        u = torch.einsum("tkc,kbc->tkb", x2, self.b_blocks).reshape(-1, self.in_features)  # [T, in]: B' x
        backend, prepared = self._core_prepared(u.shape[0])
        v = backend.linear(u, prepared, None).reshape(-1, self.out_features // bs, bs)  # [T, nJ, bs]: core u
        y = torch.einsum("tjb,jab->tja", v, self.a_blocks).reshape(*lead, self.out_features)  # A' v
        return y + self.bias if self.bias is not None else y

    @torch.no_grad()
    def dense_weight(self) -> Tensor:
        """``W_eff = blockdiag(A') · core · blockdiag(B')`` [out, in]."""
        from sparse24.prune.armor import block_product

        return block_product(self.a_blocks, self.core, self.b_blocks)

    def to_dense(self) -> nn.Linear:
        from sparse24.linear import dense_linear

        return dense_linear(self.dense_weight().detach(), self.bias)

    def overhead_params(self) -> int:
        """Extra parameters over a plain 2:4 layer: the two block-diagonal factors."""
        return self.a_blocks.numel() + self.b_blocks.numel()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block_size={self.block_size}, "
                f"bias={self.bias is not None}, backend={self.backend}")


def armor_modules(model: nn.Module) -> list[tuple[str, ArmorLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ArmorLinear)]


def armor_parameter_overhead(model: nn.Module) -> dict[str, float]:
    """Parameter counts: the dense model, the A/B factors, and the overhead as a fraction of the dense model."""
    mods = armor_modules(model)
    extra = sum(m.overhead_params() for _, m in mods)
    ours = {id(p) for _, m in mods for p in (m.a_blocks, m.b_blocks)}
    dense = sum(p.numel() for p in model.parameters() if id(p) not in ours)
    return {"dense_params": dense, "armor_params": extra, "overhead": extra / max(dense, 1), "layers": len(mods)}


def save_armor(model: nn.Module, folder: str | os.PathLike, *, overwrite: bool = False,
               extra: dict[str, Any] | None = None) -> Path:
    """Save an HF model holding ``ArmorLinear`` modules (format in the module docstring); returns the folder.

    Written by :func:`sparse24.io.write_checkpoint`, so the folder carries the integrity record every load verifies."""
    mods = armor_modules(model)
    if not mods:
        raise ValueError("model has no ArmorLinear modules; prune it with `sparse24 prune --method armor` first")
    names = {n for n, _ in mods}
    sd = {}
    for key, t in model.state_dict().items():
        fqn, _, leaf = key.rpartition(".")
        if fqn in names and leaf in ("a_blocks", "b_blocks", "core"):
            continue
        sd[key] = t
    tensors, layers = {}, {}
    for fqn, m in mods:
        sd[f"{fqn}.weight"] = m.dense_weight().detach().to(m.core.dtype)
        values, meta = pack_24_disk(m.core.detach(), f"{fqn}.core")
        tensors.update({f"{fqn}.a_blocks": m.a_blocks.detach(), f"{fqn}.b_blocks": m.b_blocks.detach(),
                        f"{fqn}.core.values": values, f"{fqn}.core.meta": meta})
        layers[fqn] = {"block_size": m.block_size, "shape": [m.out_features, m.in_features]}
    extra = {**(extra or {}), "armor": {"file": ARMOR_FILE, "layers": layers,
                                        "params": armor_parameter_overhead(model)}}
    return write_checkpoint(model, folder, sd, loader="armor", method="armor", module_configs={},
                            overwrite=overwrite, extra=extra, extra_files={ARMOR_FILE: tensors})


def load_armor(folder: str | os.PathLike, *, backend: str = "auto", device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> nn.Module:
    """Load a folder written by :func:`save_armor` with its ``ArmorLinear`` modules rebuilt (eval mode), after
    verifying it against its integrity record."""
    from sparse24.integrity import verify_files, verify_tensors
    from sparse24.io import build_hf_model, read_extra_file, read_hf_config, read_hf_weights

    folder = Path(folder)
    record = read_sparse24_config(folder)
    info = record["extra"].get("armor")
    if record["loader"] != "armor" or not isinstance(info, dict):
        raise ValueError(f"{folder} is not an ARMOR checkpoint (loader {record['loader']!r}); load it with "
                         "sparse24.load(folder)")
    integ = record.get("integrity")
    if integ is not None:
        verify_files(folder, integ["files"], [info["file"]])
    raw = read_extra_file(folder, record, info["file"])
    sd = read_hf_weights(folder, [info["file"]])
    if integ is not None:
        verify_tensors(sd, integ["tensors"], folder)
    model = build_hf_model(folder, read_hf_config(folder), sd, dtype)
    for fqn, spec in info["layers"].items():
        lin = model.get_submodule(fqn)
        out_f, in_f = spec["shape"]
        mod = ArmorLinear(in_f, out_f, spec["block_size"], lin.bias is not None, dtype=lin.weight.dtype,
                          backend=backend)
        missing = [k for k in ("a_blocks", "b_blocks", "core.values", "core.meta") if f"{fqn}.{k}" not in raw]
        if missing:
            raise ValueError(f"{folder / info['file']}: {fqn}.{missing[0]} is missing; the file is corrupt (re-save)")
        with torch.no_grad():
            mod.a_blocks.copy_(raw[f"{fqn}.a_blocks"])
            mod.b_blocks.copy_(raw[f"{fqn}.b_blocks"])
            mod.core.copy_(unpack_24_disk(raw[f"{fqn}.core.values"], raw[f"{fqn}.core.meta"], f"{fqn}.core"))
            if lin.bias is not None:
                mod.bias.copy_(lin.bias)
        set_module(model, fqn, mod)
    return model.to(device).eval()


register_loader("armor", None, load_armor)
