"""Perplexity with a recorded protocol: non-overlapping windows of ``seqlen`` tokens over one token stream.

The text is tokenized as one stream (no special tokens), cut into ``len // seqlen`` windows (the tail shorter than
``seqlen`` is dropped and reported), every window is scored independently (no context carried over), and
``ppl = exp(Σ NLL / Σ predicted tokens)`` with ``seqlen − 1`` predictions per window. This is the WikiText-2 protocol
of the Wanda/SparseGPT code; the result records text, token counts and seqlen so numbers are comparable.

Memory does not grow with the text: :func:`text_perplexity` reads and tokenizes the text in bounded chunks (once to
count its tokens, once to score), windows are cut as the tokens arrive, and the loss is taken window by window, so
at most ``windows per forward x seqlen x vocab`` logits exist at any time (capped at :data:`LOGITS_BUDGET` bytes).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["perplexity", "text_perplexity", "iter_windows", "windows_per_forward", "LOGITS_BUDGET"]

LOGITS_BUDGET = 1 << 30  # bytes of float32 logits one forward may produce (the rest of a batch waits)


def iter_windows(chunks: Iterable[torch.Tensor], seqlen: int) -> Iterator[torch.Tensor]:
    """Consecutive non-overlapping ``[seqlen]`` windows of a stream of 1-D token chunks (the tail is dropped)."""
    rest = torch.empty(0, dtype=torch.long)
    for chunk in chunks:
        buf = torch.cat([rest, chunk])  # [len(rest) + len(chunk)]
        n = len(buf) // seqlen
        for w in range(n):
            yield buf[w * seqlen : (w + 1) * seqlen]  # [seqlen]
        rest = buf[n * seqlen :]


def windows_per_forward(model: nn.Module, seqlen: int, batch_size: int) -> int:
    """``batch_size``, lowered so that one forward's float32 logits stay under :data:`LOGITS_BUDGET`."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1
    return max(1, min(batch_size, LOGITS_BUDGET // (seqlen * vocab * 4)))


@torch.no_grad()
def _score(model: nn.Module, windows: Iterator[torch.Tensor], n: int, seqlen: int, per_forward: int,
           device: str | torch.device, progress: bool, label: str, say: Callable[[str], None] | None) -> float:
    """Σ NLL (float64 sum of per-window float32 losses) over the first ``n`` windows, ``per_forward`` at a time."""
    from tqdm.auto import tqdm

    model.eval()
    nll, done, t0 = 0.0, 0, time.time()
    bar = tqdm(total=n, desc=label, disable=not progress, unit="win")
    while done < n:
        batch = [w for _, w in zip(range(min(per_forward, n - done)), windows)]
        if not batch:
            raise RuntimeError(f"{label}: the token stream ended after {done} of {n} windows")
        ids = torch.stack(batch).to(device)  # [b, seqlen]
        logits = model(input_ids=ids, use_cache=False).logits  # [b, seqlen, V]
        for i in range(len(batch)):  # one window at a time: the loss's copies stay [seqlen, V]
            nll += float(F.cross_entropy(logits[i, :-1].float(), ids[i, 1:], reduction="sum"))
        del logits
        done += len(batch)
        bar.update(len(batch))
        if say is not None and done == len(batch) and done < n:
            dt = time.time() - t0
            say(f"{label}: first {done} window(s) took {dt:.1f} s; expect about {_duration(dt * n / done)} "
                f"for {n} windows on this machine")
    bar.close()
    return nll


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _result(name: str, nll: float, n: int, seqlen: int, total: int, seconds: float, **extra: Any) -> dict[str, Any]:
    predicted = n * (seqlen - 1)
    return {"text": name, "ppl": math.exp(nll / predicted), "nll_per_token": nll / predicted, "seqlen": seqlen,
            "windows": n, "tokens_in_text": int(total), "tokens_scored": predicted,
            "tokens_dropped": int(total - n * seqlen), "seconds": round(seconds, 2), **extra}


def _check(seqlen: int, batch_size: int, max_windows: int | None) -> None:
    if seqlen < 2:
        raise ValueError(f"--seqlen {seqlen}: needs at least 2 tokens per window")
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"--max-windows {max_windows}: must be at least 1 (or left out for all windows)")


def perplexity(model: nn.Module, tokens: torch.Tensor, seqlen: int, *, batch_size: int = 1,
               max_windows: int | None = None, device: str | torch.device | None = None,
               progress: bool = False, text_name: str = "?") -> dict[str, Any]:
    """Perplexity of ``model`` on the 1-D ``tokens`` stream; returns ppl and the protocol it used."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    _check(seqlen, batch_size, max_windows)
    n = len(tokens) // seqlen if max_windows is None else min(len(tokens) // seqlen, max_windows)
    if n == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one window of --seqlen {seqlen}")
    device = device or next(model.parameters()).device
    t0 = time.time()
    nll = _score(model, iter_windows([tokens], seqlen), n, seqlen, windows_per_forward(model, seqlen, batch_size),
                 device, progress, f"ppl {text_name}@{seqlen}", None)
    return _result(text_name, nll, n, seqlen, len(tokens), time.time() - t0)


def text_perplexity(model: nn.Module, tokenizer: Any, text: str | os.PathLike, seqlen: int, *, batch_size: int = 1,
                    max_windows: int | None = None, device: str | torch.device | None = None,
                    progress: bool = False, say: Callable[[str], None] | None = print,
                    chunk_chars: int = 1 << 16) -> dict[str, Any]:
    """Perplexity on a named text or a .txt/.jsonl file, streamed (memory independent of the text's length).

    Pass 1 tokenizes the text chunk by chunk only to count its tokens (so the window count, the dropped tail and the
    expected time are known up front); pass 2 tokenizes again and scores the first windows as they are cut. The
    tokens equal one ``tokenize_text`` call over the whole text (see :func:`sparse24.texts.iter_tokens`). ``say``
    prints the plan and, after the first forward, the expected time."""
    from sparse24.texts import iter_text, iter_tokens

    _check(seqlen, batch_size, max_windows)
    name = str(text)
    stats: dict[str, int] = {}
    digest = hashlib.sha256()

    def hashed(pieces: Iterator[str]) -> Iterator[str]:
        for piece in pieces:
            digest.update(piece.encode("utf-8"))
            yield piece

    total = sum(len(c) for c in iter_tokens(tokenizer, hashed(iter_text(text, chunk_chars)), chunk_chars, stats=stats))
    n = total // seqlen if max_windows is None else min(total // seqlen, max_windows)
    if n == 0:
        raise ValueError(f"{name} has {total} tokens, fewer than one window of --seqlen {seqlen}; use a longer text "
                         "or a shorter --seqlen")
    per_forward = windows_per_forward(model, seqlen, batch_size)
    if say is not None:
        capped = f" (--batch-size {batch_size} capped: logits memory)" if per_forward < batch_size else ""
        say(f"ppl {name}: {total} tokens -> scoring {n} windows x {seqlen} tokens, {per_forward} per forward"
            f"{capped}")
    device = device or next(model.parameters()).device
    t0 = time.time()
    windows = iter_windows(iter_tokens(tokenizer, iter_text(text, chunk_chars), chunk_chars), seqlen)
    nll = _score(model, windows, n, seqlen, per_forward, device, progress, f"ppl {name}@{seqlen}", say)
    return _result(name, nll, n, seqlen, total, time.time() - t0, text_sha256=digest.hexdigest()[:16],
                   tokenization="streamed" + (f", {stats['unverified_cuts']} unverified cuts" if stats else ""))
