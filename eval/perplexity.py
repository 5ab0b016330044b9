"""Perplexity with a recorded protocol: non-overlapping windows of ``seqlen`` tokens over one token stream.

The text is tokenized once (no special tokens), cut into ``len // seqlen`` windows (the tail shorter than
``seqlen`` is dropped and reported), every window is scored independently (no context carried over), and
``ppl = exp(Σ NLL / Σ predicted tokens)`` with ``seqlen − 1`` predictions per window. This is the WikiText-2 protocol
of the Wanda/SparseGPT code; the result records text, token counts and seqlen so numbers are comparable.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["perplexity"]


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, seqlen: int, *, batch_size: int = 1,
               max_windows: int | None = None, device: str | torch.device | None = None,
               progress: bool = False, text_name: str = "?") -> dict[str, Any]:
    """Perplexity of ``model`` on the 1-D ``tokens`` stream; returns ppl and the protocol it used."""
    from tqdm.auto import tqdm

    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if seqlen < 2:
        raise ValueError(f"--seqlen {seqlen}: needs at least 2 tokens per window")
    n = len(tokens) // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one window of --seqlen {seqlen}")
    device = device or next(model.parameters()).device
    windows = tokens[: n * seqlen].reshape(n, seqlen)  # [n, seqlen]
    model.eval()
    nll, t0 = 0.0, time.time()
    for b0 in tqdm(range(0, n, batch_size), desc=f"ppl {text_name}@{seqlen}", disable=not progress):
        ids = windows[b0 : b0 + batch_size].to(device)  # [b, seqlen]
        logits = model(input_ids=ids, use_cache=False).logits.float()  # [b, seqlen, V]
        nll += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                     reduction="sum"))
    predicted = n * (seqlen - 1)
    return {"text": text_name, "ppl": math.exp(nll / predicted), "nll_per_token": nll / predicted,
            "seqlen": seqlen, "windows": n, "tokens_in_text": int(len(tokens)), "tokens_scored": predicted,
            "tokens_dropped": int(len(tokens) - n * seqlen), "seconds": round(time.time() - t0, 2)}
