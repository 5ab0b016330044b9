"""Read and write compressed-tensors ``sparse-24-bitmask`` checkpoints (the 2:4 format the ecosystem dropped in 2026).

compressed-tensors >= 0.15, vLLM >= 0.19 and current transformers no longer load these folders; sparse24 imports
them into its own checkpoint (a plain dense HF folder with zeros in place + ``sparse24_config.json``) and exports
them for users pinned to the last engines that do (compressed-tensors <= 0.14.0.1, transformers < 5, vLLM <= 0.18).

Import reads one safetensors shard at a time and validates before it writes: the sparsity format comes from a fixed
allow-list (never a registry lookup: ``sparsity_config.format`` of an untrusted ``config.json`` was a code-execution
sink, huggingface/transformers#46342), every tensor ``config.json`` implies must be present with its shape, every
decoded weight must be exactly 2:4, and quantized checkpoints are refused by name rather than half-read.
Validation lives in :mod:`sparse24.ct_checkpoint`, the per-weight codec in :mod:`sparse24.bitmask`, folder plumbing
(shards, index, copying) in :mod:`sparse24.hf_folder`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparse24.bitmask import decode_bitmask_24, encode_bitmask_24
from sparse24.compress import check_24
from sparse24.ct_checkpoint import (
    CT_KEYS,
    DENSE,
    PARTS,
    SPARSE24_BITMASK,
    CTCheckpoint,
    ct_section,
    inspect_compressed_tensors,
)
from sparse24.hf_folder import (
    copy_side_files,
    expected_tensors,
    load_config_json,
    read_shard,
    shard_headers,
    weight_files,
    write_shards,
)

__all__ = [
    "is_compressed_tensors", "inspect_compressed_tensors", "read_compressed_tensors", "compressed_tensors_to_sparse24",
    "load_compressed_tensors", "write_compressed_tensors", "CTCheckpoint", "CT_VERSION", "SPARSE24_BITMASK",
]

CT_VERSION = "0.14.0.1"  # the last compressed-tensors release with the 2:4 compressors; what the export declares


def is_compressed_tensors(folder: str | os.PathLike) -> bool:
    """True when ``folder/config.json`` declares a compressed-tensors checkpoint with 2:4 sparsity (the folders this
    module loads, or refuses with a reason: quantized 2:4, Marlin-24). Dense or quantization-only compressed-tensors
    checkpoints are False: current transformers loads those itself."""
    path = Path(folder) / "config.json"
    try:
        qc = ct_section(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return False
    sc = (qc or {}).get("sparsity_config") or {}
    return sc.get("format") in (SPARSE24_BITMASK, "marlin-24") or str(sc.get("sparsity_structure")).lower() == "2:4"


def read_compressed_tensors(
    folder: str | os.PathLike, checkpoint: CTCheckpoint | None = None,
) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Decode a 2:4 compressed-tensors folder shard by shard: yields ``(file name, dense tensors)``.

    Each yielded dict holds plain HF keys (``P.weight`` with zeros in place of ``P.compressed/bitmask/shape``; for
    the ``dense`` format every targeted weight is checked 2:4).
    Memory: one shard plus the parts of modules split across two shards. Validates before decoding.
    """
    ck = checkpoint or inspect_compressed_tensors(folder)
    dense_modules = set(ck.modules) if ck.sparsity["format"] == DENSE else set()
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for fname in sorted(ck.files):
        raw = read_shard(ck.folder / fname, ck.files[fname])
        out: dict[str, torch.Tensor] = {}
        for key, t in raw.items():
            mod, _, leaf = key.rpartition(".")
            if key in ck.dropped:
                continue
            if leaf not in PARTS:
                if leaf == "weight" and mod in dense_modules:
                    check_24(t, key)  # a 'dense' 2:4 checkpoint is only as good as its zeros
                out[key] = t
                continue
            parts = pending.setdefault(mod, {})
            parts[leaf] = t
            if len(parts) == len(PARTS):
                out[f"{mod}.weight"] = decode_bitmask_24(parts["compressed"], parts["bitmask"], parts["shape"], mod)
                del pending[mod]
        yield fname, out
    assert not pending, f"undecoded modules {sorted(pending)}"  # inspect guarantees all three parts exist


def _strip_ct(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in CT_KEYS}


def compressed_tensors_to_sparse24(
    folder: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
) -> Path:
    """Convert a 2:4 compressed-tensors folder (``sparse-24-bitmask`` or 2:4 ``dense``) into a sparse24 checkpoint.

    ``out`` is a plain dense HF folder (zeros in place, ``config.json`` without ``quantization_config``, tokenizer
    and generation files copied) plus ``sparse24_config.json``; written shard by shard into a temporary folder that
    replaces ``out`` only when complete (an existing ``out`` is kept unless ``overwrite``). Returns ``out``.
    """
    from sparse24.config import MagnitudeConfig
    from sparse24.fileio import atomic_folder, atomic_write_json
    from sparse24.integrity import digest_tensors
    from sparse24.io import CONFIG_NAME, checkpoint_record

    ck = inspect_compressed_tensors(folder)
    digests: dict[str, str] = {}

    def digesting(shards: Iterator[tuple[str, dict[str, torch.Tensor]]]):
        for name, shard in shards:  # one shard in memory at a time; its tensors' digests are kept
            digests.update(digest_tensors(shard))
            yield name, shard

    with atomic_folder(out, overwrite) as tmp:
        write_shards(tmp, digesting(read_compressed_tensors(folder, ck)))
        (tmp / "config.json").write_text(json.dumps(_strip_ct(ck.config), indent=2, sort_keys=True) + "\n")
        copy_side_files(ck.folder, tmp)
        extra = {"imported_from": {"format": ck.sparsity["format"], "folder": str(Path(folder).resolve()),
                                   "compressed_tensors_version": (ct_section(ck.config) or {}).get("version"),
                                   "sparsity_config": ck.sparsity}}
        configs = {m: MagnitudeConfig().to_dict() for m in ck.modules}  # fixed masks: the imported pattern
        record = checkpoint_record(tmp, digests, loader="sparse24", method="compressed-tensors-import",
                                   module_configs=configs, extra=extra)
        atomic_write_json(tmp / CONFIG_NAME, record)
    return Path(out)


def load_compressed_tensors(
    folder: str | os.PathLike, *, backend: str = "auto", device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load a 2:4 compressed-tensors folder straight into an HF causal LM with ``SparseLinear`` modules (fixed masks).

    Same keywords as :func:`sparse24.load_sparse`; the whole decoded state dict is held once, as any load does.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from sparse24.api import sparsify
    from sparse24.config import MagnitudeConfig

    ck = inspect_compressed_tensors(folder)
    sd = {k: v for _, shard in read_compressed_tensors(folder, ck) for k, v in shard.items()}
    cfg = dict(_strip_ct(ck.config))
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    kw: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM._model_mapping[type(config)].from_pretrained(None, config=config, state_dict=sd, **kw)
    model.to(device).eval()
    sparsify(model, {"_default": None, **{m: MagnitudeConfig(backend=backend) for m in ck.modules}})
    return model


def write_compressed_tensors(
    model_or_folder: nn.Module | str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
) -> Path:
    """Export a sparse24 model (with ``SparseLinear`` modules) or sparse24 folder as ``sparse-24-bitmask``.

    Writes what compressed-tensors 0.14.0.1 writes for a sparse-only model: ``P.compressed/bitmask/shape`` for every
    2:4 module, other tensors as they are, the same shard layout as the sparse24 folder, and ``config.json`` with a
    ``quantization_config`` holding the ``sparsity_config`` (targets ``Linear``, dense linears in ``ignore``).
    Only the legacy stack loads it (compressed-tensors<=0.14.0.1 with transformers<5, vLLM<=0.18 on sm90).
    """
    from sparse24.fileio import atomic_folder
    from sparse24.io import read_sparse24_config, save_sparse

    if isinstance(model_or_folder, nn.Module):
        if Path(out).exists() and not overwrite:  # fail before writing a temporary copy of the model
            atomic_folder(out, overwrite)
        parent = Path(out).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent, prefix=".ct-export-") as tmpdir:
            src = save_sparse(model_or_folder, Path(tmpdir) / "sparse24")
            return write_compressed_tensors(src, out, overwrite=overwrite)
    src = Path(model_or_folder)
    record = read_sparse24_config(src)
    modules = set(record["modules"])
    config = load_config_json(src)
    _, _, linears = expected_tensors(config, src)
    not_linear = sorted(modules - set(linears))
    if not_linear:
        raise ValueError(f"{src}: {not_linear[0]} is not an nn.Linear (e.g. a GPT-2 Conv1D); compressed-tensors' "
                         "sparse-24-bitmask targets nn.Linear only, so this model cannot be exported to it")
    files = weight_files(src)
    headers = shard_headers(src, files)
    counts = {"zeros": 0, "total": 0}

    def shards() -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        for fname in sorted({f for f, _, _ in headers.values()}):
            shard: dict[str, torch.Tensor] = {}
            for key, t in read_shard(src / fname, [k for k, v in headers.items() if v[0] == fname]).items():
                mod = key[: -len(".weight")] if key.endswith(".weight") else None
                if t.is_floating_point():
                    counts["zeros"] += int((t == 0).sum())
                    counts["total"] += t.numel()
                if mod in modules:
                    values, bitmask = encode_bitmask_24(t, key)
                    shard[f"{mod}.bitmask"] = bitmask
                    shard[f"{mod}.compressed"] = values
                    shard[f"{mod}.shape"] = torch.tensor(list(t.shape), dtype=torch.int64).reshape(-1, 1)  # [2, 1]
                else:
                    shard[key] = t
            yield fname, shard

    with atomic_folder(out, overwrite) as tmp:
        write_shards(tmp, shards())
        sparsity = {
            "format": SPARSE24_BITMASK, "global_sparsity": counts["zeros"] / max(counts["total"], 1),
            "ignore": sorted(set(linears) - modules), "registry_requires_subclass": False,
            "sparsity_structure": "2:4", "targets": ["Linear"],
        }
        config["quantization_config"] = {"quant_method": "compressed-tensors", "version": CT_VERSION,
                                         "sparsity_config": sparsity, "transform_config": {}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        copy_side_files(src, tmp)
    return Path(out)


def _register() -> None:
    from sparse24.loaders import register_loader

    register_loader("compressed-tensors", is_compressed_tensors, load_compressed_tensors)


_register()
