"""Self-describing checkpoints (inference exports).

A sparse24 folder is always loadable by plain ``transformers`` (dense weights with zeros, via ``save_pretrained``),
plus ``sparse24_config.json``: format version, the ``loader`` that reads it back (``sparse24``, ``armor``, ``slorb``;
see :mod:`sparse24.loaders`), the ``method`` that produced the weights, every sparse module's own config
(``module_configs``), a free-form ``extra`` (e.g. the pruning protocol) and an ``integrity`` record (a content hash per
tensor and a fingerprint per HF weight file, :mod:`sparse24.integrity`) that every load verifies.
``compressed=True`` adds ``sparse24_compressed.safetensors``: every 2:4 weight as kept values ``[out, in/2]`` + uint8
metadata ``[out, in/4]`` (:func:`sparse24.compress.pack_24_disk`), other tensors as they are.

What a checkpoint is for: **inference**. It holds the effective 2:4 weights, not the dense latent weights, S-STE's β,
the step counter or optimizer state, so training cannot continue from it bit-exactly; resume training from the
trainer's checkpoints (``sparse24 train --resume``). Every write goes to a temporary folder renamed into place; an
existing folder is never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from sparse24 import __version__
from sparse24.api import sparse_modules, sparsify
from sparse24.compress import check_24, pack_24_disk, unpack_24_disk
from sparse24.config import SparseConfig, SSTEConfig
from sparse24.fileio import atomic_folder, atomic_save_safetensors, atomic_write_json
from sparse24.integrity import (
    digest_tensors,
    fingerprint_files,
    verify_files,
    verify_tensors,
    weight_files,
)
from sparse24.linear import is_conv1d
from sparse24.masks import magnitude_mask_24

__all__ = ["save_sparse", "load_sparse", "read_sparse24_config", "write_checkpoint", "build_sparse_model",
           "read_extra_file", "read_hf_config", "read_hf_weights", "build_hf_model", "effective_state_dict",
           "InferenceExportWarning", "FORMAT_VERSION", "CONFIG_NAME", "COMPRESSED_NAME", "SPARSE24_BUFFERS", "KIND",
           "checkpoint_record"]

log = logging.getLogger("sparse24")

FORMAT_VERSION = 2  # 2: loader, producing method, per-module configs, integrity record
CONFIG_NAME = "sparse24_config.json"
COMPRESSED_NAME = "sparse24_compressed.safetensors"
# SparseLinear state that is not part of the HF layout (``scale``, ``step``, ``dense_mode``: older checkpoints)
SPARSE24_BUFFERS = ("mask", "beta", "_extra_state", "scale", "step", "dense_mode")
KIND = ("inference export: effective 2:4 weights only (no dense latent weights, S-STE beta, step counter or optimizer "
        "state); to continue training, resume from the trainer's checkpoints (sparse24 train --resume)")
_CONFIG_FIX = ("re-save the checkpoint with sparse24, or delete sparse24_config.json to load the folder as a plain HF "
               "model")


class InferenceExportWarning(UserWarning):
    """``save_sparse`` dropped training state (dense latent weights, β, step counter) that the model still had."""


# ---- saving ----------------------------------------------------------------------------------------------------------
def effective_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict plain ``transformers`` expects (2:4 weights with zeros, no sparse24 buffers) + sparse names.

    Refuses modules in dense fine-tune mode: their weights are not 2:4, and a 2:4 checkpoint of them would be re-pruned
    on load (save such a model with ``unsparsify`` + ``save_pretrained`` as a dense model instead)."""
    sparse = dict(sparse_modules(model))
    dense = sorted(n for n, m in sparse.items() if bool(m.dense_mode))
    if dense:
        raise ValueError(f"{dense[0]} ({len(dense)} modules in all) is in dense fine-tune mode, so its weight is not "
                         "2:4; save it as a dense model (sparse24.unsparsify(model), then model.save_pretrained) "
                         "or switch back with sparse24.set_dense_finetune(model, False)")
    sd = {}
    for key, t in model.state_dict().items():
        mod, _, leaf = key.rpartition(".")
        if mod in sparse:
            if leaf in SPARSE24_BUFFERS:
                continue
            if leaf == "weight":
                t = _export_weight(sparse[mod])
                t = t.t().contiguous() if sparse[mod].conv1d else t  # GPT-2 Conv1D stores [in, out]
        sd[key] = t
    return sd, sorted(sparse)


def _export_weight(mod: nn.Module) -> torch.Tensor:
    """``W̃`` with +0.0 at every zero (the compressed file stores pruned zeros as +0): the parameter itself when it
    already is exactly that (a pruned model's weights are), so saving a large model does not copy every weight."""
    w = mod.weight.detach()
    if not mod.dense_mode and not isinstance(mod.config, SSTEConfig):  # then W̃ = W * mask
        if not bool(((w != 0) & ~mod.mask).any()) and not bool(((w == 0) & w.signbit()).any()):
            return w
    return mod.sparse_weight() + 0.0


def _warn_if_training_state_dropped(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """An inference export keeps the effective weights only: say so when the model held more (a training run)."""
    lost = []
    for fqn, m in sparse_modules(model):
        w = sd[f"{fqn}.weight"]
        w = w.t() if m.conv1d else w
        if int(m.step) > 0 or not torch.equal(w, m.weight.detach()):
            lost.append(fqn)
    if lost:
        warnings.warn(f"save_sparse writes an {KIND}. {lost[0]} ({len(lost)} modules) had latent weights or "
                      "steps that are not saved.", InferenceExportWarning, stacklevel=3)


def _pack(sd: dict[str, torch.Tensor], names: set[str], transposed: set[str]) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of the compressed file: 2:4 weights packed, tied tensors stored once (``aliases``)."""
    tensors, seen, aliases, sparse = {}, {}, {}, {}
    for key, t in sd.items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if ptr is not None and ptr in seen:  # tied weights (e.g. lm_head = embed_tokens) are stored once
            aliases[key] = seen[ptr]
            continue
        if ptr is not None:
            seen[ptr] = key
        fqn = key[: -len(".weight")] if key.endswith(".weight") else None
        if fqn in names:
            flip = fqn in transposed  # compress along `in` even where it is stored [in, out]
            values, meta = pack_24_disk(t.t() if flip else t, key)
            tensors[key + ".values"], tensors[key + ".meta"] = values, meta
            sparse[key] = {"shape": list(t.shape), "dtype": str(t.dtype), "transposed": flip}
        else:
            tensors[key] = t
    meta = {"format": "sparse24-2:4", "format_version": str(FORMAT_VERSION),
            "sparse": json.dumps(sparse), "aliases": json.dumps(aliases)}
    return tensors, meta


def write_checkpoint(model: nn.Module, folder: str | os.PathLike, state_dict: dict[str, torch.Tensor], *,
                     loader: str, method: str, module_configs: dict[str, dict[str, Any]], overwrite: bool = False,
                     pack: tuple[set[str], set[str]] | None = None, extra: dict[str, Any] | None = None,
                     extra_files: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """The one writer of sparse24 folders (used by every saver): ``save_pretrained(state_dict)``, the compressed file
    (``pack`` = (names to pack, names stored transposed)), each of ``extra_files`` (``{file: tensors}``, e.g. ARMOR's
    factors), and ``sparse24_config.json`` with the integrity record of all of them — atomically."""
    extra_files = extra_files or {}
    with atomic_folder(folder, overwrite) as tmp:
        model.save_pretrained(tmp, state_dict=dict(state_dict))  # HF consumes the dict
        own = list(extra_files)
        if pack is not None:
            tensors, meta = _pack(state_dict, *pack)
            atomic_save_safetensors(tensors, tmp / COMPRESSED_NAME, metadata=meta)
            own.append(COMPRESSED_NAME)
        for name, tensors in extra_files.items():
            atomic_save_safetensors(tensors, tmp / name, metadata={"format": f"sparse24-{loader}"})
        record = checkpoint_record(tmp, digest_tensors(state_dict), loader=loader, method=method,
                                   module_configs=module_configs, own=own,
                                   compressed=COMPRESSED_NAME if pack is not None else None, extra=extra,
                                   extra_digests={n: digest_tensors(t) for n, t in extra_files.items()})
        atomic_write_json(tmp / CONFIG_NAME, record)
    return Path(folder)


def checkpoint_record(folder: Path, tensor_digests: dict[str, str], *, loader: str, method: str,
                      module_configs: dict[str, dict[str, Any]], own: list[str] = (), compressed: str | None = None,
                      extra: dict[str, Any] | None = None, extra_digests: dict[str, dict[str, str]] | None = None
                      ) -> dict[str, Any]:
    """The ``sparse24_config.json`` record of a folder whose weight files are already written in ``folder``:
    format, loader, producing method, every module's config and the integrity record (``tensor_digests`` from
    :func:`~sparse24.integrity.digest_tensors` over the HF state dict; the files are fingerprinted here)."""
    return {
        "format": "sparse24", "format_version": FORMAT_VERSION, "sparse24_version": __version__,
        "kind": KIND, "loader": loader, "method": method, "modules": sorted(module_configs),
        "module_configs": module_configs, "compressed": compressed, "extra": extra or {},
        "integrity": {"hash": "sha256[:16] of dtype|shape|bytes", "tensors": tensor_digests,
                      "files": fingerprint_files(folder, weight_files(folder, own)),
                      "extra_files": extra_digests or {}},
    }


def save_sparse(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    compressed: bool = False,
    overwrite: bool = False,
    method: str | None = None,
    extra: dict[str, Any] | None = None,
    loader: str = "sparse24",
    extra_files: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Save an HF model holding ``SparseLinear`` modules as an **inference export**; returns the folder.

    Plain ``AutoModelForCausalLM.from_pretrained(folder)`` loads the dense-with-zeros weights; :func:`sparse24.load`
    rebuilds every 2:4 module from its own recorded config (from the compressed file when present, bit-exactly).
    ``method``: what produced the weights (e.g. ``"sparsegpt"``); default ``extra["method"]`` if given, else the
    modules' config name (``"mixed"`` for several). The dense latent weights, S-STE's β and the step counter are not
    saved (an :class:`InferenceExportWarning` says so when the model had them): resume training from the trainer's
    checkpoints. ``loader``/``extra_files``: for formats that extend this one (SLoRB adds its ``S``/``P`` file).
    """
    sd, names = effective_state_dict(model)
    if not names:
        raise ValueError("model has no SparseLinear modules; call sparse24.sparsify(model, config) first")
    mods = dict(sparse_modules(model))
    configs = {n: mods[n].config.to_dict() for n in names}
    if method is None:
        given = (extra or {}).get("method")
        kinds = {mods[n].config.name for n in names}
        method = given if isinstance(given, str) else (kinds.pop() if len(kinds) == 1 else "mixed")
    _warn_if_training_state_dropped(model, sd)
    pack = (set(names), {n for n in names if mods[n].conv1d}) if compressed else None
    return write_checkpoint(model, folder, sd, loader=loader, method=method, module_configs=configs,
                            overwrite=overwrite, pack=pack, extra=extra, extra_files=extra_files)


# ---- reading ---------------------------------------------------------------------------------------------------------
def _legacy_loader(record: dict[str, Any]) -> str:
    if record.get("method") == "armor":
        return "armor"
    return "slorb" if isinstance(record.get("extra"), dict) and record["extra"].get("slorb") else "sparse24"


def read_sparse24_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``sparse24_config.json`` (format 1 records are upgraded in memory, without integrity).

    Clear errors, naming the file and the fix, for a missing, non-UTF-8, non-JSON, non-object, incomplete or too-new
    file and for invalid module configs."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a sparse24 checkpoint (save one with "
                                "sparse24.save_sparse, or load a plain HF folder with sparse24.load / transformers)")
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); the checkpoint is corrupt: {_CONFIG_FIX}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt: {_CONFIG_FIX}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a JSON {type(record).__name__}, not an object; the checkpoint is corrupt: "
                         f"{_CONFIG_FIX}")
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path} has no integer format_version; the checkpoint is corrupt: {_CONFIG_FIX}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}, newer than this sparse24 reads ({FORMAT_VERSION}); "
                         "upgrade sparse24 (pip install -U sparse24)")
    need = ("modules", "config") if version == 1 else ("loader", "method", "modules", "module_configs", "integrity")
    missing = [k for k in need if k not in record]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}; the checkpoint is corrupt: {_CONFIG_FIX}")
    record.setdefault("extra", {})
    modules = record["modules"]
    if not isinstance(modules, list) or not all(isinstance(n, str) for n in modules):
        raise ValueError(f"{path}: 'modules' must be a list of module names; the checkpoint is corrupt: {_CONFIG_FIX}")
    if not isinstance(record["extra"], dict):
        raise ValueError(f"{path}: 'extra' must be an object; the checkpoint is corrupt: {_CONFIG_FIX}")
    if version == 1:  # one config for every module, no integrity record, loader implied by the method
        record = {**record, "loader": _legacy_loader(record), "integrity": None,
                  "method": record["extra"].get("method", record.get("method")),
                  "module_configs": dict.fromkeys(modules, record["config"])}
    configs = record["module_configs"]
    if not isinstance(configs, dict) or set(configs) != set(modules):
        raise ValueError(f"{path}: 'module_configs' must hold one config per name in 'modules'; the checkpoint is "
                         f"corrupt: {_CONFIG_FIX}")
    for name, cfg in configs.items():
        try:
            if not isinstance(cfg, dict):
                raise TypeError(f"config is a {type(cfg).__name__}, not an object")
            SparseConfig.from_dict(cfg)  # validates the method and its fields
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: module {name}: {e}; {_CONFIG_FIX}") from None
    integrity = record["integrity"]
    if integrity is not None and not (isinstance(integrity, dict) and isinstance(integrity.get("tensors"), dict)
                                      and isinstance(integrity.get("files"), dict)):
        raise ValueError(f"{path}: 'integrity' is malformed; the checkpoint is corrupt: {_CONFIG_FIX}")
    if not isinstance(record["loader"], str):
        raise ValueError(f"{path}: 'loader' must be a string; the checkpoint is corrupt: {_CONFIG_FIX}")
    return record


def _own_files(record: dict[str, Any]) -> list[str]:
    """Files in the folder that sparse24 wrote next to the HF ones (not HF weight files)."""
    integ = record.get("integrity") or {}
    own = list(integ.get("extra_files", {}))
    extra = record.get("extra", {})
    for sub in extra.values():  # legacy (format 1) extension files: extra.<name>.file
        if isinstance(sub, dict) and isinstance(sub.get("file"), str):
            own.append(sub["file"])
    return own + ([record["compressed"]] if record.get("compressed") else [])


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is truncated or corrupt ({e}); copy the file again or re-save the checkpoint") \
            from None
    return tensors, meta


def read_extra_file(folder: str | os.PathLike, record: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """Tensors of a file a saver added with ``extra_files``, verified against the integrity record."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the checkpoint is incomplete (re-save it)")
    tensors, _ = _read_safetensors(path)
    integ = record.get("integrity")
    if integ is not None:
        if name not in integ.get("extra_files", {}):
            raise ValueError(f"{path} is not in {CONFIG_NAME}'s integrity record; the checkpoint is corrupt "
                             "(re-save it)")
        verify_tensors(tensors, integ["extra_files"][name], path)
    return tensors


def load_compressed(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a compressed file back into a dense state dict (2:4 weights with zeros), validating its structure."""
    path = Path(path)
    raw, meta = _read_safetensors(path)
    try:
        sparse, aliases = json.loads(meta["sparse"]), json.loads(meta["aliases"])
        if not isinstance(sparse, dict) or not isinstance(aliases, dict):
            raise TypeError("metadata 'sparse'/'aliases' are not objects")
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the compressed checkpoint's metadata ({e}); the file is corrupt") \
            from None
    sd = {k: v for k, v in raw.items() if not k.endswith((".values", ".meta"))}
    for key, info in sparse.items():
        if key + ".values" not in raw or key + ".meta" not in raw:
            raise ValueError(f"{path}: {key} is listed as sparse but its values/meta are missing; the file is corrupt")
        w = unpack_24_disk(raw[key + ".values"], raw[key + ".meta"], key)
        w = w.t().contiguous() if info.get("transposed") else w
        if list(w.shape) != info.get("shape") or str(w.dtype) != info.get("dtype"):
            raise ValueError(f"{path}: {key} decompresses to {tuple(w.shape)} {w.dtype} but the metadata says "
                             f"{info.get('shape')} {info.get('dtype')}; the file is corrupt")
        sd[key] = w
    for key, target in aliases.items():
        if target not in sd:
            raise ValueError(f"{path}: alias {key} -> {target} points at no tensor; the file is corrupt")
        sd[key] = sd[target]
    return sd


def read_hf_config(folder: str | os.PathLike) -> Any:
    """``AutoConfig`` of an HF folder, with a clear error for a missing or garbage ``config.json``."""
    from transformers import AutoConfig

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not an HF model folder (copy config.json from the "
                                "source model)")
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path} is not a valid transformers config ({msg}); copy config.json from the source model "
                         "or re-save the checkpoint") from None


def read_hf_weights(folder: str | os.PathLike, own: list[str] = ()) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder's safetensors weight files (all shards); pickled ``*.bin`` files are refused."""
    folder = Path(folder)
    names = [n for n in weight_files(folder, own) if n.endswith(".safetensors")]
    if not names:
        pickled = [n for n in weight_files(folder, own) if n.endswith(".bin")]
        if pickled:
            raise ValueError(f"{folder / pickled[0]}: pickled weights are never loaded (they can run code); re-save "
                             "the model with save_pretrained(folder) (safetensors is the default)")
        raise FileNotFoundError(f"{folder} holds no model.safetensors; the checkpoint is incomplete")
    sd: dict[str, torch.Tensor] = {}
    for name in names:
        sd.update(_read_safetensors(folder / name)[0])
    return sd


def build_hf_model(folder: str | os.PathLike, config: Any, sd: dict[str, torch.Tensor],
                   dtype: torch.dtype | None) -> nn.Module:
    """The causal LM class of ``config`` filled from ``sd`` (already read and verified), in eval mode."""
    from transformers import AutoModelForCausalLM

    try:
        model_cls = AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise ValueError(f"{Path(folder) / 'config.json'}: model type {getattr(config, 'model_type', '?')!r} is not "
                         "a causal LM this transformers knows; upgrade transformers or fix config.json") from None
    kw: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    return model_cls.from_pretrained(None, config=config, state_dict=sd, **kw).eval()


def _beta(m: nn.Module) -> torch.Tensor | None:
    """S-STE's β buffer (named ``beta``, formerly ``scale``)."""
    for name in ("beta", "scale"):
        if m._buffers.get(name) is not None:
            return m._buffers[name]
    return None


@torch.no_grad()
def _rebuild_modules(model: nn.Module, folder: Path, record: dict[str, Any], backend: str) -> None:
    """Each listed linear becomes the 2:4 module of its own recorded config, computing exactly the saved weight."""
    present = dict(model.named_modules())
    unknown = [n for n in record["modules"] if n not in present]
    if unknown:
        log.warning("sparse24: %s lists %d module(s) the model does not have (ignored): %s", folder / CONFIG_NAME,
                    len(unknown), ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    spec: dict[str, SparseConfig | None] = {"_default": None}
    for fqn in record["modules"]:
        if fqn not in present:
            continue
        mod = present[fqn]
        w = mod.weight.detach()
        check_24(w.t() if is_conv1d(mod) else w, f"{fqn}.weight",
                 hint=f"the weights in {folder} are not 2:4 (saved in dense fine-tune mode, or written over by a "
                      "plain save_pretrained); load the folder as a dense model with transformers")
        spec[fqn] = dataclasses.replace(SparseConfig.from_dict(record["module_configs"][fqn]), backend=backend)
    sparsify(model, spec)
    for _, m in sparse_modules(model):  # the saved weight already is W̃: keep all its non-zeros, β = 1
        m.mask.copy_(magnitude_mask_24(m.weight.detach()))
        beta = _beta(m)
        if beta is not None:
            beta.fill_(1.0)


def build_sparse_model(folder: str | os.PathLike, record: dict[str, Any], *, backend: str = "auto",
                       device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       prefer_compressed: bool = True) -> nn.Module:
    """The sparse24 reader behind :func:`load_sparse` and the loaders that extend it (SLoRB): verify the folder
    against its integrity record, read the weights (compressed file or HF files), rebuild the 2:4 modules."""
    folder = Path(folder)
    integ = record.get("integrity")
    own = _own_files(record)
    if integ is not None:
        verify_files(folder, integ["files"], own)
    else:
        log.warning("sparse24: %s was written by an older sparse24 without an integrity record; its content is not "
                    "verified (re-save it to add one)", folder)
    config = read_hf_config(folder)
    if prefer_compressed and record.get("compressed"):
        where = folder / record["compressed"]
        if not where.is_file():
            raise FileNotFoundError(f"{where} is missing; the checkpoint is incomplete (pass prefer_compressed=False "
                                    "to load the HF weights)")
        sd = load_compressed(where)
    else:
        where, sd = folder, read_hf_weights(folder, own)
    if integ is not None:
        verify_tensors(sd, integ["tensors"], where)
    model = build_hf_model(folder, config, sd, dtype)
    model.to(device)
    _rebuild_modules(model, folder, record, backend)
    return model.eval()


def load_sparse(
    folder: str | os.PathLike, *, backend: str = "auto", device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None, prefer_compressed: bool = True,
) -> nn.Module:
    """Load a folder written by :func:`save_sparse` as an HF causal LM with ``SparseLinear`` modules (eval mode).

    Every module is rebuilt from its recorded config with ``backend``; masks are fixed at the saved weights. Folders of
    another loader (ARMOR, SLoRB) are refused: :func:`sparse24.load` reads every kind."""
    record = read_sparse24_config(folder)
    if record["loader"] != "sparse24":
        raise ValueError(f"{folder} is a {record['loader']!r} checkpoint (method {record.get('method')!r}); "
                         "load_sparse would drop its extra parts: load it with sparse24.load(folder)")
    return build_sparse_model(folder, record, backend=backend, device=device, dtype=dtype,
                              prefer_compressed=prefer_compressed)
