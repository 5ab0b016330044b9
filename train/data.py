"""Token streams for pretraining: build once, cache, sample deterministic batches by position.

Sources: ``olmo`` (the English corpus of :mod:`sparse24.train.corpus`; ``olmo:N``: the first N documents of each of its
sources, for smoke runs), ``shipped`` (the small text in ``sparse24/data``, for tests and demos), or a path: a ``.txt``
file, a ``.jsonl`` file (``"text"`` field), a folder of those, or an HF ``datasets`` folder (``save_to_disk``, a
``text`` column). Tokenizers: ``bpe`` (a GPT-2-style byte-level BPE trained on the training split with the
``tokenizers`` library, saved with the cache), ``byte`` (256 byte tokens) or a path to a ``tokenizer.json`` / HF
tokenizer folder. Caches live under ``~/.cache/sparse24/`` (``SPARSE24_CACHE`` overrides). Batch ``i`` is a pure
function of (seed, i), so the data position of a run is just its step counter.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse24.assets import cache_dir
from sparse24.texts import jsonl_texts, read_text

__all__ = ["TokenData", "load_data", "batch_at", "val_batches", "read_texts"]


@dataclass
class TokenData:
    """Train/validation token streams (1-D int64) and what made them."""

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    tokenizer: Any  # tokenizers.Tokenizer, or None for byte tokens
    info: dict


def read_texts(path: str | os.PathLike) -> list[str]:
    """Documents of a .txt / .jsonl file, a folder of them, or an HF ``datasets`` folder with a ``text`` column."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--data {p}: no such file or folder (use 'olmo', 'shipped', a .txt/.jsonl file, "
                                "a folder of them, or an HF datasets folder)")
    if p.is_dir() and (p / "dataset_info.json").exists() or p.is_dir() and (p / "state.json").exists():
        return _hf_folder(p)
    files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl")) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"--data {p}: found no .txt or .jsonl files")
    docs = []
    for f in files:
        if f.suffix == ".jsonl":
            docs += jsonl_texts(f)
        else:
            docs += [d for d in read_text(f).split("\n\n") if d.strip()]
    return docs


def _hf_folder(p: Path) -> list[str]:
    try:
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
        ds = ds["train"] if hasattr(ds, "keys") and "train" in ds else ds
        if "text" not in ds.column_names:
            raise ValueError(f"--data {p}: the dataset has no 'text' column (columns: {ds.column_names})")
        return list(ds["text"])
    except ImportError:
        import pyarrow as pa

        texts = []
        for f in sorted(p.rglob("*.arrow")):
            with pa.memory_map(str(f)) as src:
                table = pa.ipc.open_stream(src).read_all()
            if "text" not in table.column_names:
                raise ValueError(f"--data {f}: no 'text' column (columns: {table.column_names})") from None
            texts += table.column("text").to_pylist()
        return texts


def _documents(source: str) -> tuple[list[str], dict]:
    if source == "olmo" or source.startswith("olmo:") and source[5:].isdigit():
        from sparse24.train.corpus import olmo_documents

        docs, counts = olmo_documents(per_source=int(source[5:]) if source != "olmo" else None)
        return docs, {"source": source, "documents": counts}
    if source == "shipped":
        from sparse24.texts import shipped_text

        return [d for d in shipped_text().split("\n\n") if d.strip()], {"source": "shipped"}
    return read_texts(source), {"source": str(Path(source).resolve())}


def _split(docs: list[str], val_fraction: float, seed: int = 1234) -> tuple[list[str], list[str]]:
    """Hold out whole documents (a seeded shuffle), at least one."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(docs) * val_fraction))) if len(docs) > 1 else 0
    val = set(order[:n_val])
    return [d for i, d in enumerate(docs) if i not in val], [d for i, d in enumerate(docs) if i in val]


def train_bpe(docs: list[str], vocab_size: int) -> Any:
    """A GPT-2-style byte-level BPE (``<|endoftext|>`` as id 0) trained on ``docs``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def _encode(docs: list[str], tokenizer: Any) -> np.ndarray:
    """Documents joined by an end-of-text token (id 0 for BPE, byte 0 for byte tokens)."""
    if tokenizer is None:
        data = b"\x00".join(d.encode("utf-8") for d in docs)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    ids = []
    for enc in tokenizer.encode_batch(docs):
        ids += enc.ids + [0]
    return np.asarray(ids, dtype=np.int64)


def _load_tokenizer(spec: str) -> Any:
    from tokenizers import Tokenizer

    p = Path(spec)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"--tokenizer {spec}: expected 'bpe', 'byte', a tokenizer.json or a folder with one")
    return Tokenizer.from_file(str(f))


def load_data(source: str = "olmo", tokenizer: str = "bpe", vocab_size: int = 8192, val_fraction: float = 0.05,
              cache: bool = True) -> TokenData:
    """Tokenize ``source`` once (cached by source, tokenizer and split) and return train/val streams."""
    key = hashlib.sha256(json.dumps([source, _fingerprint(source), tokenizer, vocab_size, val_fraction]).encode())
    name = Path(source).name.replace(":", "-")  # olmo:N -> olmo-N
    folder = cache_dir() / f"tokens-{name}-{tokenizer if tokenizer in ('bpe', 'byte') else 'custom'}" \
        f"-{key.hexdigest()[:12]}"
    if cache and (folder / "info.json").exists():
        info = json.loads((folder / "info.json").read_text())
        tok = _load_tokenizer(str(folder)) if (folder / "tokenizer.json").exists() else None
        arrays = [torch.from_numpy(np.load(folder / f"{s}.npy").astype(np.int64)) for s in ("train", "val")]
        return TokenData(*arrays, info["vocab_size"], tok, info)
    docs, info = _documents(source)
    train_docs, val_docs = _split(docs, val_fraction)
    tok = None if tokenizer == "byte" else train_bpe(train_docs, vocab_size) if tokenizer == "bpe" \
        else _load_tokenizer(tokenizer)
    vocab = 256 if tok is None else tok.get_vocab_size()
    train, val = _encode(train_docs, tok), _encode(val_docs, tok)
    info.update(tokenizer=tokenizer, vocab_size=vocab, train_tokens=len(train), val_tokens=len(val),
                train_documents=len(train_docs), val_documents=len(val_docs), val_fraction=val_fraction)
    if cache:
        from sparse24.fileio import atomic_folder

        with atomic_folder(folder, overwrite=True) as tmp:
            dtype = np.uint16 if vocab <= 65535 else np.int32
            np.save(tmp / "train.npy", train.astype(dtype))
            np.save(tmp / "val.npy", val.astype(dtype))
            if tok is not None:
                tok.save(str(tmp / "tokenizer.json"))
            (tmp / "info.json").write_text(json.dumps(info, indent=2))
    return TokenData(torch.from_numpy(train), torch.from_numpy(val), vocab, tok, info)


def _fingerprint(source: str) -> str:
    p = Path(source)
    if source in ("olmo", "shipped") or not p.exists():
        return source
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return ";".join(f"{f}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files)


def batch_at(tokens: torch.Tensor, index: int, batch: int, seqlen: int, seed: int) -> dict[str, torch.Tensor]:
    """Micro-batch number ``index``: ``batch`` random windows, ``input_ids``/``labels`` ``[batch, seqlen]``."""
    if len(tokens) <= seqlen + 1:
        raise ValueError(f"the training split has {len(tokens)} tokens, fewer than --seq-len {seqlen} + 2; "
                         "use a shorter --seq-len or more text")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    starts = torch.randint(0, len(tokens) - seqlen - 1, (batch,), generator=gen)
    win = torch.stack([tokens[s : s + seqlen + 1] for s in starts.tolist()])  # [B, T+1]
    return {"input_ids": win[:, :-1], "labels": win[:, 1:]}


def val_batches(tokens: torch.Tensor, batch: int, seqlen: int, max_batches: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive non-overlapping windows of the validation split (the same every time)."""
    n = min((len(tokens) - 1) // seqlen, batch * max_batches)
    if n < 1:
        raise ValueError(f"the validation split has {len(tokens)} tokens, too few for --seq-len {seqlen}")
    win = tokens[: n * seqlen + 1]
    x, y = win[:-1].view(n, seqlen), win[1:].view(n, seqlen)  # [n, T]
    return [{"input_ids": x[i : i + batch], "labels": y[i : i + batch]} for i in range(0, n, batch)]
