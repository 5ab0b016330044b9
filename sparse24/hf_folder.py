"""Streaming access to an HF checkpoint folder: config, weight files, safetensors headers, shard-by-shard writes.

Format converters use these to touch one shard at a time (a 70B model never sits in memory) and to know, from
``config.json`` alone, which tensors and shapes a folder must hold. Safetensors only: pickle files are never loaded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

__all__ = ["load_config_json", "weight_files", "shard_headers", "read_shard", "write_shards", "copy_side_files",
           "expected_tensors", "INDEX_NAME", "SINGLE_NAME"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_PICKLE = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_NOT_SIDE = {"config.json", INDEX_NAME, "sparse24_config.json"}


def load_config_json(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; clear errors for a missing folder, missing file or bad JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the checkpoint folder (the one holding config.json)")
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not an HF checkpoint folder")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from e
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{path} has no model_type; it is not a transformers config.json")
    return config


def weight_files(folder: Path) -> dict[str, str] | list[str]:
    """The index's ``weight_map`` (tensor -> file) when the folder is sharded, else ``[file name]``."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index ({e}); the checkpoint is damaged") from e
        for fname in sorted(set(weight_map.values())):
            if not (folder / fname).is_file():
                raise FileNotFoundError(f"{folder / fname} is listed in {INDEX_NAME} but missing; the checkpoint is "
                                        "incomplete: re-download that shard")
        return weight_map
    if (folder / SINGLE_NAME).is_file():
        return [SINGLE_NAME]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    if found:
        raise ValueError(f"{folder} holds {len(found)} safetensors files but no {INDEX_NAME}; restore the index file")
    if any(p.suffix in _PICKLE for p in folder.iterdir()):
        raise ValueError(f"{folder} holds only pickle weights (.bin/.pt); sparse24 reads safetensors only, because "
                         "loading pickle can run code: re-save the model with save_pretrained(safe_serialization=True)")
    raise FileNotFoundError(f"{folder} holds no weights ({SINGLE_NAME} or {INDEX_NAME})")


def shard_headers(folder: Path, files: dict[str, str] | list[str]) -> dict[str, tuple[str, str, list[int]]]:
    """``tensor name -> (file, dtype, shape)`` read from the safetensors headers only (no tensor data)."""
    names = sorted(set(files.values())) if isinstance(files, dict) else list(files)
    out: dict[str, tuple[str, str, list[int]]] = {}
    for fname in names:
        try:
            with safe_open(str(folder / fname), framework="pt") as f:
                for key in f.keys():
                    if key in out:
                        raise ValueError(f"{folder}: {key} is stored twice ({out[key][0]} and {fname}); the "
                                         "checkpoint is inconsistent")
                    sl = f.get_slice(key)
                    out[key] = (fname, sl.get_dtype(), list(sl.get_shape()))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{folder / fname} is not a readable safetensors file ({e}); re-download it") from e
    if isinstance(files, dict):
        for key, fname in files.items():
            if out.get(key, (fname,))[0] != fname:
                raise ValueError(f"{INDEX_NAME} puts {key} in {fname} but it is in {out[key][0]}; the index is stale")
            if key not in out:
                raise ValueError(f"{INDEX_NAME} lists {key} in {fname} but that file does not hold it; the checkpoint "
                                 "is incomplete: re-download that shard")
    return out


def read_shard(path: Path, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The named tensors of one safetensors file, on the CPU."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: cannot read tensors ({e}); the file is damaged: re-download it") from e


def write_shards(folder: Path, shards: Iterable[tuple[str, dict[str, torch.Tensor]]]) -> None:
    """Write ``(file name, tensors)`` pairs; one non-empty file becomes ``model.safetensors``, more get an index."""
    written: dict[str, dict[str, torch.Tensor] | None] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for fname, tensors in shards:
        if not tensors:
            continue
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / fname), metadata={"format": "pt"})
        written[fname] = None
        weight_map.update(dict.fromkeys(tensors, fname))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if len(written) == 1:
        (only,) = written
        if only != SINGLE_NAME:
            (folder / only).rename(folder / SINGLE_NAME)
    elif written:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer, generation config and other small files (never weights, pickles or configs we rewrite)."""
    copied = []
    for p in sorted(src.iterdir()):
        if (p.is_file() and not p.name.startswith(".") and p.name not in _NOT_SIDE
                and p.suffix not in (".safetensors", *_PICKLE)):
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return copied


def expected_tensors(
    config: dict[str, Any], folder: Path | str = "",
) -> tuple[dict[str, list[int]], dict[str, str], list[str]]:
    """From ``config.json`` alone (model built on the meta device): ``{tensor: shape}`` of the causal LM, tied
    aliases ``{tensor: the tensor it shares storage with}``, and the ``nn.Linear`` module paths."""
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in config.items() if k not in ("quantization_config", "compression_config")}
    try:
        hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder}/config.json: transformers cannot build a causal LM from it ({e}); upgrade "
                         "transformers or check model_type") from e
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name], aliases[first[id(p)]] = first[id(p)], name
        else:
            first[id(p)] = name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return shapes, aliases, linears
