"""Load a model for evaluation: a sparse24 checkpoint (via ``load_sparse``), a plain HF folder, or the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["load_for_eval", "resolve_device", "resolve_dtype"]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available; use --device cpu")
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype | None:
    """``auto``: float32 on the CPU, the checkpoint's dtype elsewhere (None)."""
    if name == "auto":
        return torch.float32 if device == "cpu" else None
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"--dtype {name}: choose auto, float32, bfloat16 or float16") from None


def load_for_eval(spec: str | Path | None, device: str = "cpu",
                  dtype: torch.dtype | None = None) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model, tokenizer, info)``; sparse24 folders (compressed or not) load with their 2:4 modules."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse24.io import CONFIG_NAME, load_sparse, read_sparse24_config
    from sparse24.prune.model_io import resolve_model

    folder = resolve_model(spec)
    info: dict[str, Any] = {"model": str(folder), "sparse24": False}
    if (folder / CONFIG_NAME).is_file():
        record = read_sparse24_config(folder)
        if record.get("method") == "armor":  # ArmorLinear modules (block-diagonal factors around a 2:4 core)
            from sparse24.prune.armor_linear import load_armor

            model = load_armor(folder, device=device, dtype=dtype)
        elif record.get("extra", {}).get("slorb"):  # AST: 2:4 modules plus SLoRB low-rank terms
            from sparse24.prune.slorb import load_slorb_model

            model = load_slorb_model(folder, device=device, dtype=dtype)
        else:
            model = load_sparse(folder, device=device, dtype=dtype)
        info.update(sparse24=True, method=record.get("extra", {}).get("method", record.get("method")),
                    compressed=bool(record.get("compressed")))
        tok_dir = folder if (folder / "tokenizer_config.json").is_file() else record.get("extra", {}).get("model_dir")
    else:
        kw = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForCausalLM.from_pretrained(folder, **kw).to(device).eval()
        tok_dir = folder
    if tok_dir is None:
        raise FileNotFoundError(f"{folder} has no tokenizer files; copy them in from the source model")
    return model, AutoTokenizer.from_pretrained(tok_dir), info
