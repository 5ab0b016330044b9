"""Self-describing checkpoints.

A sparse24 folder is always loadable by plain ``transformers`` (dense weights with zeros, via ``save_pretrained``),
plus ``sparse24_config.json`` (format version, method config, sparse module names, free-form ``extra`` such as the
pruning protocol). ``compressed=True`` adds ``sparse24_compressed.safetensors``: every 2:4 weight as kept values
``[out, in/2]`` + uint8 metadata ``[out, in/4]`` (see :mod:`sparse24.compress`), other tensors as they are.
Every write goes to a temporary folder that is renamed into place; an existing folder is never replaced unless
``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sparse24 import __version__
from sparse24.api import sparse_modules, sparsify
from sparse24.compress import compress_24, decompress_24
from sparse24.config import MagnitudeConfig, SparseConfig

__all__ = ["save_sparse", "load_sparse", "read_sparse24_config", "atomic_folder", "FORMAT_VERSION",
           "CONFIG_NAME", "COMPRESSED_NAME", "effective_state_dict"]

FORMAT_VERSION = 1
CONFIG_NAME = "sparse24_config.json"
COMPRESSED_NAME = "sparse24_compressed.safetensors"


class atomic_folder:
    """Context manager yielding a temporary folder that replaces ``path`` only if the block succeeds."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists; choose another output folder or pass overwrite=True "
                                  "(--overwrite on the command line)")
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)


def effective_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict plain ``transformers`` expects (2:4 weights with zeros, no sparse24 buffers) + sparse names."""
    sparse = dict(sparse_modules(model))
    sd = {}
    for key, t in model.state_dict().items():
        mod, _, leaf = key.rpartition(".")
        if mod in sparse:
            if leaf in ("mask", "beta", "_extra_state", "scale", "step", "dense_mode"):
                continue
            if leaf == "weight":
                t = sparse[mod].sparse_weight()
                t = t.t().contiguous() if sparse[mod].conv1d else t  # GPT-2 Conv1D stores [in, out]
        sd[key] = t
    return sd, sorted(sparse)


def save_sparse(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    compressed: bool = False,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save an HF model holding ``SparseLinear`` modules; returns the folder.

    Plain ``AutoModelForCausalLM.from_pretrained(folder)`` loads the dense-with-zeros weights; :func:`load_sparse`
    rebuilds the 2:4 modules (from the compressed file when present, bit-exactly).
    """
    sd, names = effective_state_dict(model)
    if not names:
        raise ValueError("model has no SparseLinear modules; call sparse24.sparsify(model, config) first")
    configs = {type(m.config) for _, m in sparse_modules(model)}
    first = next(m for _, m in sparse_modules(model)).config
    record = {
        "format": "sparse24", "format_version": FORMAT_VERSION, "sparse24_version": __version__,
        "method": first.name if len(configs) == 1 else "mixed", "config": first.to_dict(),
        "modules": names, "compressed": COMPRESSED_NAME if compressed else None, "extra": extra or {},
    }
    with atomic_folder(folder, overwrite) as tmp:
        model.save_pretrained(tmp, state_dict=dict(sd))  # HF consumes the dict
        if compressed:
            conv = {fqn for fqn, m in sparse_modules(model) if m.conv1d}
            _save_compressed(sd, names, tmp / COMPRESSED_NAME, conv)
        (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2, default=str))
    return Path(folder)


def _save_compressed(sd: dict[str, torch.Tensor], names: list[str], path: Path, transposed: set[str]) -> None:
    tensors, seen, aliases, sparse = {}, {}, {}, {}
    for key, t in sd.items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if ptr is not None and ptr in seen:  # tied weights (e.g. lm_head = embed_tokens) are stored once
            aliases[key] = seen[ptr]
            continue
        seen[ptr] = key
        if key.endswith(".weight") and key[: -len(".weight")] in names:
            flip = key[: -len(".weight")] in transposed  # compress along `in` even where it is stored [in, out]
            values, meta = compress_24(t.t() if flip else t, key)
            tensors[key + ".values"], tensors[key + ".meta"] = values.contiguous(), meta.contiguous()
            sparse[key] = {"shape": list(t.shape), "dtype": str(t.dtype), "transposed": flip}
        else:
            tensors[key] = t.contiguous()
    meta = {"format": "sparse24-2:4", "format_version": str(FORMAT_VERSION),
            "sparse": json.dumps(sparse), "aliases": json.dumps(aliases)}
    save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(path), metadata=meta)


def read_sparse24_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``sparse24_config.json``; clear errors for missing, corrupt or too-new files."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a sparse24 checkpoint (save one with "
                                "sparse24.save_sparse, or load a plain HF folder with transformers)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from e
    version = record.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{path} has no integer format_version; the checkpoint is corrupt")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}, newer than this sparse24 reads ({FORMAT_VERSION}); "
                         "upgrade sparse24 (pip install -U sparse24)")
    SparseConfig.from_dict(record["config"])  # validates the method and its fields
    return record


def load_compressed(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a compressed file back into a dense state dict (2:4 weights with zeros), validating everything."""
    try:
        raw = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        sparse, aliases = json.loads(meta["sparse"]), json.loads(meta["aliases"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the compressed checkpoint ({e}); the file is corrupt") from e
    sd = {k: v for k, v in raw.items() if not k.endswith((".values", ".meta"))}
    for key, info in sparse.items():
        if key + ".values" not in raw or key + ".meta" not in raw:
            raise ValueError(f"{path}: {key} is listed as sparse but its values/meta are missing; the file is corrupt")
        w = decompress_24(raw[key + ".values"], raw[key + ".meta"], key)
        w = w.t().contiguous() if info.get("transposed") else w
        if list(w.shape) != info["shape"] or str(w.dtype) != info["dtype"]:
            raise ValueError(f"{path}: {key} decompresses to {tuple(w.shape)} {w.dtype} but the metadata says "
                             f"{info['shape']} {info['dtype']}; the file is corrupt")
        sd[key] = w
    for key, target in aliases.items():
        sd[key] = sd[target]
    return sd


def load_sparse(
    folder: str | os.PathLike, *, backend: str = "auto", device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None, prefer_compressed: bool = True,
) -> nn.Module:
    """Load a sparse24 folder as an HF causal LM with ``SparseLinear`` modules (fixed masks, ready to evaluate)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    record = read_sparse24_config(folder)
    kw: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if prefer_compressed and record.get("compressed"):
        sd = load_compressed(Path(folder) / record["compressed"])
        config = AutoConfig.from_pretrained(folder)
        model_cls = AutoModelForCausalLM._model_mapping[type(config)]
        model = model_cls.from_pretrained(None, config=config, state_dict=sd, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    model.to(device)
    model.eval()
    static = MagnitudeConfig(backend=backend)  # the saved weights already carry the 2:4 zeros
    sparsify(model, {"_default": None, **{name: static for name in record["modules"]}})
    return model
