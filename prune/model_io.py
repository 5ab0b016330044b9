"""Safetensors shards streamed tensor by tensor, and the architecture check for the layer-sequential driver
(where models come from is :mod:`sparse24.assets`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["ShardReader", "decoder_layers", "SUPPORTED_TYPES"]

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class ShardReader:
    """Read single tensors from a folder's safetensors files (single file or sharded with an index)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            self.where = {k: self.folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        elif (self.folder / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(self.folder / "model.safetensors"), "pt") as f:
                self.where = {k: self.folder / "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(f"{self.folder}: no model.safetensors(.index.json); save the model with "
                                    "save_pretrained(safe_serialization=True)")

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.where:
            raise KeyError(f"{self.folder}: tensor {name!r} not found in the safetensors files")
        with safe_open(str(self.where[name]), "pt", device=str(device)) as f:
            return f.get_tensor(name)

    def load_module(self, module: nn.Module, prefix: str, device: torch.device | str, dtype: torch.dtype) -> None:
        """Materialise a meta ``module`` on ``device`` from the tensors named ``prefix.<param>``."""
        module.to_empty(device=device)
        with torch.no_grad():
            for key, t in list(module.state_dict(keep_vars=True).items()):
                full = f"{prefix}.{key}"
                src = self.get(full, device)
                t.copy_(src.to(dtype) if src.is_floating_point() else src)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a Llama-family causal LM, with a clear error for other architectures."""
    mtype = getattr(model.config, "model_type", "?")
    inner = getattr(model, "model", None)
    missing = [a for a in ("layers", "embed_tokens", "rotary_emb") if not hasattr(inner, a)]
    if inner is None or missing:
        raise ValueError(f"model_type {mtype!r} ({type(model).__name__}) is not supported by the layer-sequential "
                         f"driver: it lacks model.{', model.'.join(missing or ['model'])}. Supported: Llama-family "
                         f"decoders ({', '.join(SUPPORTED_TYPES)}) with model.layers / embed_tokens / rotary_emb")
    if not isinstance(inner.layers, nn.ModuleList) or len(inner.layers) == 0:
        raise ValueError(f"model_type {mtype!r}: model.layers is not a non-empty ModuleList")
    return inner.layers
