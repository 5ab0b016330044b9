"""Device and dtype resolution for the command-line jobs, and the one way to swap a submodule."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["resolve_device", "resolve_dtype", "set_module", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; a CUDA device without a GPU is refused."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device {name}: choose auto, cpu, cuda or cuda:N")
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype | None:
    """``auto``: float32 on the CPU, the checkpoint's dtype elsewhere (None)."""
    if name == "auto":
        return torch.float32 if device == "cpu" else None
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"--dtype {name}: choose auto, {', '.join(DTYPES)}") from None


def set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the submodule at dotted name ``fqn`` by ``new`` (instances are swapped, classes never patched)."""
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
