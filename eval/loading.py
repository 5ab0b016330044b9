"""Load a model for evaluation: a sparse24 checkpoint (via ``load_sparse``), a plain HF folder, or the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["load_for_eval"]


def load_for_eval(spec: str | Path | None, device: str = "cpu",
                  dtype: torch.dtype | None = None) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model, tokenizer, info)``; sparse24 folders (compressed or not) load with their 2:4 modules."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse24.assets import resolve_model
    from sparse24.io import CONFIG_NAME, load_sparse, read_sparse24_config

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
