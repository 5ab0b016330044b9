"""Validation of a compressed-tensors 2:4 checkpoint from ``config.json`` and safetensors headers (no tensor data).

The sparsity format comes from a fixed allow-list, never a registry lookup (``sparsity_config.format`` of an untrusted
``config.json`` was a code-execution sink, huggingface/transformers#46342). Quantized checkpoints are refused by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse24.hf_folder import expected_tensors, load_config_json, shard_headers, weight_files

__all__ = ["CTCheckpoint", "inspect_compressed_tensors", "ct_section", "SPARSE24_BITMASK", "DENSE", "PARTS"]

SPARSE24_BITMASK = "sparse-24-bitmask"
DENSE = "dense"  # llm-compressor's uncompressed save: plain .weight tensors, 2:4 declared by sparsity_structure
PARTS = ("compressed", "bitmask", "shape")
_QUANT_LEAVES = ("weight_scale", "weight_zero_point", "input_scale", "input_zero_point", "weight_global_scale",
                 "output_scale", "weight_g_idx", "weight_packed", "k_scale", "v_scale")
CT_KEYS = ("quantization_config", "compression_config")  # the latter is what compressed-tensors < 0.5 wrote


def ct_section(config: dict[str, Any]) -> dict[str, Any] | None:
    """The compressed-tensors part of ``config.json``, or None."""
    for key in CT_KEYS:
        qc = config.get(key)
        if isinstance(qc, dict) and (qc.get("quant_method") == "compressed-tensors"
                                     or (key == "compression_config" and "sparsity_config" in qc)):
            return qc
    return None


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
    if fmt not in (SPARSE24_BITMASK, DENSE):
        hint = {"sparse-bitmask": "that is unstructured sparsity, not 2:4",
                "marlin-24": "that is Marlin 4-bit weight-only quantization + 2:4, which sparse24 does not import"}
        raise ValueError(f"{folder}: sparsity format {fmt!r} is not imported (sparse24 reads {SPARSE24_BITMASK!r} "
                         f"and 2:4 {DENSE!r}); " + hint.get(str(fmt), "no other format is recognised"))
    structure = str(sc.get("sparsity_structure") or "").lower()
    if structure != "2:4":
        if fmt == DENSE:
            raise ValueError(f"{folder}: sparsity_structure is {sc.get('sparsity_structure')!r}, not '2:4': this "
                             "dense checkpoint is not 2:4 sparse; prune it with `sparse24 prune`")
        raise ValueError(f"{folder}: sparsity_structure is {sc.get('sparsity_structure')!r}, not '2:4'; "
                         "sparse-24-bitmask is defined for 2:4 only, so config.json is inconsistent")
    if fmt == DENSE and not sc.get("targets"):
        raise ValueError(f"{folder}: the dense sparsity_config has no targets, so it does not say which layers are "
                         "2:4; add e.g. \"targets\": [\"Linear\"], \"ignore\": [\"lm_head\"] to it")
    return sc


@dataclass
class CTCheckpoint:
    """What :func:`inspect_compressed_tensors` found: config, sparse module paths and per-file tensor names."""

    folder: Path
    config: dict[str, Any]
    sparsity: dict[str, Any]
    modules: list[str]  # 2:4 module paths (stored as .compressed/.bitmask/.shape, or targeted when 'dense'), sorted
    files: dict[str, list[str]]  # weight file name -> tensor names in it
    dropped: list[str] = field(default_factory=list)  # stale buffers present in the files but not in the model


def inspect_compressed_tensors(folder: str | os.PathLike) -> CTCheckpoint:
    """Validate a 2:4 compressed-tensors folder (``sparse-24-bitmask``, or ``dense`` with ``sparsity_structure``
    "2:4") from ``config.json`` and the safetensors headers (no tensor data read).

    Checks: the format allow-list and quantization refusal, every tensor the model of ``config.json`` needs is
    present (plain, or as its three compressed parts) with the shape ``config.json`` implies.
    """
    folder = Path(folder)
    config = load_config_json(folder)
    qc = ct_section(config)
    if qc is None:
        raise ValueError(f"{folder}/config.json has no compressed-tensors quantization_config; this is not a "
                         "compressed-tensors checkpoint (a sparse24 or plain HF folder loads with sparse24.load_sparse "
                         "or transformers)")
    sparsity = _check_sparsity(qc, folder)
    headers = shard_headers(folder, weight_files(folder))  # name -> (file, dtype, shape)
    expected, aliases, linears = expected_tensors(config, folder)  # name -> shape; tied name -> its partner
    quant = [k for k in headers if k.rpartition(".")[2] in _QUANT_LEAVES]
    if quant:
        raise ValueError(f"{folder}: {quant[0]} is a quantization parameter but config.json declares no quantization; "
                         "the checkpoint is inconsistent (sparse24 imports sparse-only 2:4 checkpoints)")
    modules = sorted({k.rpartition(".")[0] for k in headers if k.rpartition(".")[2] in PARTS})
    if sparsity["format"] == DENSE:
        if modules:
            raise ValueError(f"{folder}: {modules[0]}.compressed is stored but the sparsity format is 'dense'; "
                             "config.json and the weights do not match")
        modules = _targeted(linears, sparsity.get("targets") or [], sparsity.get("ignore") or [])
        if not modules:
            raise ValueError(f"{folder}: sparsity_config targets {sparsity.get('targets')} (ignore "
                             f"{sparsity.get('ignore')}) select no nn.Linear of this model; fix config.json")
    for mod in modules if sparsity["format"] == SPARSE24_BITMASK else []:
        missing = [p for p in PARTS if f"{mod}.{p}" not in headers]
        if missing:
            found = ", ".join(f"{mod}.{p}" for p in PARTS if p not in missing)
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
    present = {k for k in headers if k.rpartition(".")[2] not in PARTS} | {f"{m}.weight" for m in modules}
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


def _targeted(linears: list[str], targets: list[str], ignore: list[str]) -> list[str]:
    """compressed-tensors' matching for ``nn.Linear`` modules: exact name, ``re:`` + regex (``re.match``) or class."""

    def hit(name: str, patterns: list[str]) -> bool:
        return any(p == name or p in ("Linear", "Module") or (p.startswith("re:") and re.match(p[3:], name))
                   for p in patterns)

    return sorted(n for n in linears if hit(n, targets) and not hit(n, ignore))
