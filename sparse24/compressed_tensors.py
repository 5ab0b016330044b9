"""Read and write compressed-tensors ``sparse-24-bitmask`` checkpoints (the 2:4 format the ecosystem dropped in 2026).

compressed-tensors >= 0.15, vLLM >= 0.19 and current transformers no longer load these folders; sparse24 imports
them into its own checkpoint (a plain dense HF folder with zeros in place + ``sparse24_config.json``) and exports
them for users pinned to the last engines that do (compressed-tensors <= 0.14.0.1, transformers < 5, vLLM <= 0.18).

Import reads one safetensors shard at a time and validates before it writes: the sparsity format comes from a fixed
allow-list (never a registry lookup: ``sparsity_config.format`` of an untrusted ``config.json`` was a code-execution
sink, huggingface/transformers#46342), every tensor ``config.json`` implies must be present with its shape, every
decoded weight must be exactly 2:4, and quantized checkpoints are refused by name rather than half-read.
The per-weight codec is :mod:`sparse24.bitmask`; folder plumbing (shards, index, copying) is :mod:`sparse24.hf_folder`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparse24.bitmask import decode_bitmask_24, encode_bitmask_24
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

SPARSE24_BITMASK = "sparse-24-bitmask"
CT_VERSION = "0.14.0.1"  # the last compressed-tensors release with the 2:4 compressors; what the export declares
_PARTS = ("compressed", "bitmask", "shape")
_QUANT_LEAVES = ("weight_scale", "weight_zero_point", "input_scale", "input_zero_point", "weight_global_scale",
                 "output_scale", "weight_g_idx", "weight_packed", "k_scale", "v_scale")
_CT_KEYS = ("quantization_config", "compression_config")  # the latter is what compressed-tensors < 0.5 wrote


def _ct_section(config: dict[str, Any]) -> dict[str, Any] | None:
    """The compressed-tensors part of ``config.json``, or None."""
    for key in _CT_KEYS:
        qc = config.get(key)
        if isinstance(qc, dict) and (qc.get("quant_method") == "compressed-tensors"
                                     or (key == "compression_config" and "sparsity_config" in qc)):
            return qc
    return None


def is_compressed_tensors(folder: str | os.PathLike) -> bool:
    """True when ``folder/config.json`` declares a compressed-tensors checkpoint (sparse, quantized or both)."""
    path = Path(folder) / "config.json"
    try:
        return _ct_section(json.loads(path.read_text())) is not None
    except (OSError, json.JSONDecodeError):
        return False


def _describe_quant(qc: dict[str, Any]) -> str:
    parts = []
    for gname, group in (qc.get("config_groups") or {}).items():
        w, a = group.get("weights") or {}, group.get("input_activations") or {}
        desc = f"W{w.get('num_bits', '?')}{w.get('type', '')}"
        desc += f"A{a.get('num_bits')}{a.get('type', '')}" if a else "A16"
        parts.append(f"{gname}: {desc} {w.get('strategy', '')}".strip())
    return f"format {qc.get('format')!r}, " + "; ".join(parts)


def _check_sparsity(qc: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The validated ``sparsity_config``; refuses quantized, unstructured, dense and unknown formats by name."""
    groups = qc.get("config_groups") or {}
    if groups or qc.get("kv_cache_scheme"):
        raise ValueError(
            f"{folder} is a quantized compressed-tensors checkpoint ({_describe_quant(qc)}). sparse24 imports "
            "sparse-only sparse-24-bitmask checkpoints and never half-reads a quantized one: convert the unquantized "
            "2:4 base model instead (e.g. RedHatAI/Sparse-Llama-3.1-8B-2of4 rather than its FP8/INT8 variants)")
    sc = qc.get("sparsity_config") or {}
    fmt = sc.get("format")
    if not sc:
        raise ValueError(f"{folder}/config.json has a compressed-tensors quantization_config without a "
                         "sparsity_config, so it is not a 2:4 checkpoint (compressed-tensors >= 0.15 writes an empty "
                         "one: export 2:4 models with compressed-tensors<=0.14.0.1 or `sparse24 convert`)")
    if fmt != SPARSE24_BITMASK:
        hint = {"dense": "its weights are plain .weight tensors: delete quantization_config from config.json and load "
                         "it as a plain HF folder",
                "sparse-bitmask": "that is unstructured sparsity, not 2:4",
                "marlin-24": "that is Marlin 4-bit weight-only quantization + 2:4, which sparse24 does not import"}
        raise ValueError(f"{folder}: sparsity format {fmt!r} is not imported (sparse24 reads "
                         f"{SPARSE24_BITMASK!r} only); " + hint.get(str(fmt), "no other format is recognised"))
    structure = str(sc.get("sparsity_structure") or "").lower()
    if structure != "2:4":
        raise ValueError(f"{folder}: sparsity_structure is {sc.get('sparsity_structure')!r}, not '2:4'; "
                         "sparse-24-bitmask is defined for 2:4 only, so config.json is inconsistent")
    return sc


@dataclass
class CTCheckpoint:
    """What :func:`inspect_compressed_tensors` found: config, sparse module paths and per-file tensor names."""

    folder: Path
    config: dict[str, Any]
    sparsity: dict[str, Any]
    modules: list[str]  # module paths stored as .compressed/.bitmask/.shape, sorted
    files: dict[str, list[str]]  # weight file name -> tensor names in it
    dropped: list[str] = field(default_factory=list)  # stale buffers present in the files but not in the model


def inspect_compressed_tensors(folder: str | os.PathLike) -> CTCheckpoint:
    """Validate a ``sparse-24-bitmask`` folder from ``config.json`` and the safetensors headers (no tensor data read).

    Checks: the format allow-list and quantization refusal, every tensor the model of ``config.json`` needs is
    present (plain, or as its three compressed parts) with the shape ``config.json`` implies.
    """
    folder = Path(folder)
    config = load_config_json(folder)
    qc = _ct_section(config)
    if qc is None:
        raise ValueError(f"{folder}/config.json has no compressed-tensors quantization_config; this is not a "
                         "compressed-tensors checkpoint (a sparse24 or plain HF folder loads with sparse24.load_sparse "
                         "or transformers)")
    sparsity = _check_sparsity(qc, folder)
    headers = shard_headers(folder, weight_files(folder))  # name -> (file, dtype, shape)
    expected, aliases, _ = expected_tensors(config, folder)  # name -> shape; tied name -> its partner
    quant = [k for k in headers if k.rpartition(".")[2] in _QUANT_LEAVES]
    if quant:
        raise ValueError(f"{folder}: {quant[0]} is a quantization parameter but config.json declares no quantization; "
                         "the checkpoint is inconsistent (sparse24 imports sparse-only 2:4 checkpoints)")
    modules = sorted({k.rpartition(".")[0] for k in headers if k.rpartition(".")[2] in _PARTS})
    for mod in modules:
        missing = [p for p in _PARTS if f"{mod}.{p}" not in headers]
        if missing:
            found = ", ".join(f"{mod}.{p}" for p in _PARTS if p not in missing)
            raise ValueError(f"{folder}: {mod}.{missing[0]} is missing (found {found}); the checkpoint is "
                             "incomplete: re-download every shard listed in model.safetensors.index.json")
        if f"{mod}.weight" in headers:
            raise ValueError(f"{folder}: {mod} is stored both dense ({mod}.weight) and compressed; the checkpoint is "
                             "inconsistent: re-export it")
        want = expected.get(f"{mod}.weight")
        if want is None:
            raise ValueError(f"{folder}: {mod}.compressed does not belong to the {config.get('architectures')} model "
                             "that config.json describes; config.json and the weights do not match")
        _, dtype, cshape = headers[f"{mod}.compressed"]
        if len(want) != 2 or list(cshape) != [want[0], want[1] // 2]:
            raise ValueError(f"{folder}: {mod}.compressed has shape {list(cshape)} but config.json makes {mod}.weight "
                             f"{list(want)}, which compresses to [{want[0]}, {want[-1] // 2}]; the weights do not "
                             "belong to this config.json (wrong model or wrong shard)")
    present = {k for k in headers if k.rpartition(".")[2] not in _PARTS} | {f"{m}.weight" for m in modules}
    missing = [k for k in expected if k not in present and not (k in aliases and aliases[k] in present)]
    if missing:
        raise ValueError(f"{folder}: {missing[0]} is missing ({len(missing)} tensors in all, neither plain nor as "
                         ".compressed/.bitmask/.shape); the checkpoint is incomplete: re-download every shard")
    dropped = [k for k in present if k not in expected and k.endswith("rotary_emb.inv_freq")]
    unexpected = [k for k in present if k not in expected and k not in dropped]
    if unexpected:
        raise ValueError(f"{folder}: {unexpected[0]} is not a tensor of the model config.json describes "
                         f"({len(unexpected)} in all); config.json and the weights do not match")
    for k, (_, dtype, shape) in headers.items():
        if k in expected and list(shape) != list(expected[k]):
            raise ValueError(f"{folder}: {k} has shape {list(shape)} but config.json implies {list(expected[k])}; the "
                             "weights do not belong to this config.json (wrong model or wrong shard)")
    files: dict[str, list[str]] = {}
    for k, (fname, _, _) in headers.items():
        files.setdefault(fname, []).append(k)
    return CTCheckpoint(folder, config, sparsity, modules, files, dropped)


def read_compressed_tensors(
    folder: str | os.PathLike, checkpoint: CTCheckpoint | None = None,
) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Decode a ``sparse-24-bitmask`` folder shard by shard: yields ``(file name, dense tensors)``.

    Each yielded dict holds plain HF keys (``P.weight`` with zeros in place of ``P.compressed/bitmask/shape``).
    Memory: one shard plus the parts of modules split across two shards. Validates before decoding.
    """
    ck = checkpoint or inspect_compressed_tensors(folder)
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for fname in sorted(ck.files):
        raw = read_shard(ck.folder / fname, ck.files[fname])
        out: dict[str, torch.Tensor] = {}
        for key, t in raw.items():
            mod, _, leaf = key.rpartition(".")
            if key in ck.dropped:
                continue
            if leaf not in _PARTS:
                out[key] = t
                continue
            parts = pending.setdefault(mod, {})
            parts[leaf] = t
            if len(parts) == len(_PARTS):
                out[f"{mod}.weight"] = decode_bitmask_24(parts["compressed"], parts["bitmask"], parts["shape"], mod)
                del pending[mod]
        yield fname, out
    assert not pending, f"undecoded modules {sorted(pending)}"  # inspect guarantees all three parts exist


def _strip_ct(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _CT_KEYS}


def compressed_tensors_to_sparse24(
    folder: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
) -> Path:
    """Convert a ``sparse-24-bitmask`` folder into a sparse24 checkpoint; returns ``out``.

    ``out`` is a plain dense HF folder (zeros in place, ``config.json`` without ``quantization_config``, tokenizer
    and generation files copied) plus ``sparse24_config.json``; written shard by shard into a temporary folder that
    replaces ``out`` only when complete (an existing ``out`` is kept unless ``overwrite``).
    """
    from sparse24 import __version__
    from sparse24.config import MagnitudeConfig
    from sparse24.io import CONFIG_NAME, FORMAT_VERSION, atomic_folder

    ck = inspect_compressed_tensors(folder)
    with atomic_folder(out, overwrite) as tmp:
        write_shards(tmp, read_compressed_tensors(folder, ck))
        (tmp / "config.json").write_text(json.dumps(_strip_ct(ck.config), indent=2, sort_keys=True) + "\n")
        copy_side_files(ck.folder, tmp)
        record = {
            "format": "sparse24", "format_version": FORMAT_VERSION, "sparse24_version": __version__,
            "method": MagnitudeConfig.name, "config": MagnitudeConfig().to_dict(), "modules": ck.modules,
            "compressed": None,
            "extra": {"imported_from": {"format": SPARSE24_BITMASK, "folder": str(Path(folder).resolve()),
                                        "compressed_tensors_version": (_ct_section(ck.config) or {}).get("version"),
                                        "sparsity_config": ck.sparsity}},
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2, default=str))
    return Path(out)


def load_compressed_tensors(
    folder: str | os.PathLike, *, backend: str = "auto", device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load a ``sparse-24-bitmask`` folder straight into an HF causal LM with ``SparseLinear`` modules (fixed masks)."""
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
    from sparse24.io import atomic_folder, read_sparse24_config, save_sparse

    if isinstance(model_or_folder, nn.Module):
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
