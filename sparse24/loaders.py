"""One ``load`` for every checkpoint folder: a registry of loaders keyed by format name.

Like transformers' ``quant_method -> quantizer`` mapping: a sparse24 folder names its loader in
``sparse24_config.json`` (``"loader"``: ``sparse24`` = dense-with-zeros / compressed 2:4, ``armor``, ``slorb``); a
folder without one is offered to the registered detectors (e.g. compressed-tensors), and a plain HF folder loads as a
dense model. Method modules register their own loader when imported; the table below only says which module to
import for a recorded name, so ``import sparse24`` stays light and this module names no method's code.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from sparse24.fileio import TOKENIZER_FILES
from sparse24.integrity import weight_files
from sparse24.io import CONFIG_NAME, build_sparse_model, read_hf_config, read_hf_weights, read_sparse24_config

__all__ = ["load", "register_loader", "detect_format", "get_loader", "loader_names", "Loaded", "LoadFn", "DetectFn"]

log = logging.getLogger("sparse24")

LoadFn = Callable[..., nn.Module]  # load_fn(folder: Path, *, backend: str, device, dtype) -> nn.Module (eval mode)
DetectFn = Callable[[Path], bool]  # detect_fn(folder) -> True if this loader reads a folder without sparse24_config


@dataclass(frozen=True)
class _Loader:
    name: str
    detect: DetectFn | None
    load: LoadFn


_LOADERS: dict[str, _Loader] = {}
# recorded loader name -> module that registers it on import (lazy: method code is imported only when needed)
_LAZY = {"armor": "sparse24.prune.armor_linear", "slorb": "sparse24.prune.slorb",
         "compressed-tensors": "sparse24.compressed_tensors"}
# modules whose detectors claim foreign folders (no sparse24_config.json); imported on the first detection
_DETECTORS = ("sparse24.compressed_tensors",)


class Loaded(NamedTuple):
    """What :func:`load` returns: unpack as ``model, tokenizer, info = sparse24.load(folder)``."""

    model: nn.Module
    tokenizer: Any
    info: dict[str, Any]


def register_loader(format_name: str, detect_fn: DetectFn | None, load_fn: LoadFn) -> None:
    """Register ``load_fn`` for ``format_name``.

    Folders with a ``sparse24_config.json`` are dispatched by its ``loader`` field; ``detect_fn(folder)`` (may be
    None) claims folders without one, tried in registration order before the plain-HF fallback.
    ``load_fn(folder, *, backend, device, dtype)`` returns the model in eval mode."""
    if not isinstance(format_name, str) or not format_name:
        raise ValueError("register_loader: format_name must be a non-empty string")
    _LOADERS[format_name] = _Loader(format_name, detect_fn, load_fn)


def loader_names() -> list[str]:
    """Registered and importable format names."""
    return sorted(set(_LOADERS) | set(_LAZY))


def get_loader(name: str) -> _Loader:
    """The loader for ``name``, importing the module that registers it if needed."""
    if name not in _LOADERS and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in _LOADERS:
        raise ValueError(f"no loader for checkpoint format {name!r} (known: {', '.join(loader_names())}); upgrade "
                         "sparse24 or install the package that registers it")
    return _LOADERS[name]


def detect_format(folder: str | os.PathLike) -> tuple[str, dict[str, Any] | None]:
    """``(format name, sparse24 record or None)`` for a folder, without loading any weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass a checkpoint folder (hub downloads are not used)")
    if (folder / CONFIG_NAME).is_file():
        record = read_sparse24_config(folder)
        return record["loader"], record
    for module in _DETECTORS:
        importlib.import_module(module)
    for ld in list(_LOADERS.values()):
        if ld.detect is not None and ld.detect(folder):
            return ld.name, None
    if (folder / "config.json").is_file():
        return "hf", None
    raise FileNotFoundError(f"{folder}: neither {CONFIG_NAME} nor config.json; pass a sparse24 checkpoint or an HF "
                            "model folder")


def _load_hf(folder: Path, *, backend: str = "auto", device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> nn.Module:
    """A plain HF folder, as a dense model (``backend`` unused); transformers reads the weights (memory-mapped)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    config = read_hf_config(folder)
    files = [n for n in weight_files(folder) if n.endswith(".safetensors")]
    if not files:
        read_hf_weights(folder)  # raises the clear error: pickled weights only, or none at all
    kw: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, local_files_only=True, **kw)
    except (SafetensorError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{folder / files[0]}: the weights are truncated or corrupt ({msg}); copy the file(s) again "
                         "or re-save the model") from None
    return model.to(device).eval()


def _load_sparse24(folder: Path, *, backend: str = "auto", device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> nn.Module:
    return build_sparse_model(folder, read_sparse24_config(folder), backend=backend, device=device, dtype=dtype)


register_loader("sparse24", None, _load_sparse24)
register_loader("hf", None, _load_hf)

def _tokenizer_dir(folder: Path, record: dict[str, Any] | None) -> Path | None:
    """The folder's own tokenizer, else the local source model folder recorded in ``extra.model_dir``."""
    if any((folder / n).is_file() for n in TOKENIZER_FILES):
        return folder
    ref = ((record or {}).get("extra") or {}).get("model_dir")
    if ref is None:
        return None
    path = Path(str(ref)).expanduser()
    if path.is_dir() and any((path / n).is_file() for n in TOKENIZER_FILES):
        return path
    hub = not path.is_absolute() and str(ref).count("/") == 1 and not str(ref).startswith(".")
    raise FileNotFoundError(
        f"{folder}: the tokenizer is recorded as {ref!r} ({CONFIG_NAME} extra.model_dir), which is not a local folder "
        f"with tokenizer files{' (it looks like a hub id)' if hub else ''}; sparse24 never downloads: copy the "
        f"tokenizer files (tokenizer.json, tokenizer_config.json) into {folder}")


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: cannot read the tokenizer ({msg}); copy the tokenizer files from the source model")\
            from None


def load(model: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None, backend: str = "auto", tokenizer: bool | None = None) -> Loaded:
    """Load any checkpoint folder sparse24 reads: ``(model, tokenizer, info)`` (a :class:`Loaded`).

    ``model``: a folder (sparse24 checkpoint of any loader, a registered foreign format, or a plain HF folder), or
    ``None`` / ``"smollm2-135m"`` for the default model. ``tokenizer``: ``None`` loads it when there is one (else
    ``None``), ``True`` requires it, ``False`` skips it. Never downloads. ``info``: ``model`` (the folder),
    ``loader``, ``sparse24`` (a sparse24 folder?), ``method`` and ``compressed``."""
    from sparse24.assets import DEFAULT_MODEL, resolve_model

    # the default's name is never shadowed by a folder of that name in the current directory
    folder = resolve_model(model) if model is None or str(model) == DEFAULT_MODEL else Path(model)
    name, record = detect_format(folder)
    if name in ("sparse24", "hf") or record is not None:
        read_hf_config(folder)  # a broken config.json is reported before anything else
    tok_dir = _tokenizer_dir(folder, record) if tokenizer is not False else None  # refuse before the long part
    if tok_dir is None and tokenizer:
        raise FileNotFoundError(f"{folder} has no tokenizer files; copy them in from the source model")
    net = get_loader(name).load(folder, backend=backend, device=device, dtype=dtype)
    rec = record or {}
    info: dict[str, Any] = {"model": str(folder), "loader": name, "sparse24": record is not None,
                            "method": rec.get("method"), "compressed": bool(rec.get("compressed"))}
    return Loaded(net, _load_tokenizer(tok_dir) if tok_dir is not None else None, info)
