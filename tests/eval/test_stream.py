"""Streamed perplexity: the text is read and tokenized in bounded chunks that reproduce one-call tokenization
exactly, windows are cut as tokens arrive, and the work per step does not grow with the text."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparse24.texts import iter_text, iter_tokens, read_text, shipped_text, tokenize_text


def _messy_text(n_lines: int, seed: int) -> str:
    """Shipped prose with shuffled lines, multi-byte characters, runs of spaces/newlines and long unbroken words."""
    rng = random.Random(seed)
    lines = shipped_text().splitlines()
    extra = ["naïve café", "中文字符", "emoji 🎉🎉 here", "x" * 700, "   spaced    out  ", "", "\t\ttabs", "a\r\nb"]
    return "\n".join(rng.choice(lines + extra) for _ in range(n_lines))



class _Counting:
    """A fast tokenizer that records the longest text it was asked to encode."""

    is_fast = True

    def __init__(self, inner):
        self.inner, self.longest = inner, 0

    def __call__(self, text, **kw):
        self.longest = max(self.longest, len(text))
        return self.inner(text, **kw)


class _Uniform(nn.Module):
    """Stub LM with all-zero logits (ppl = vocab exactly) that records the shape of every forward."""

    def __init__(self, vocab: int):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(vocab_size=vocab)
        self.shapes: list[tuple[int, int]] = []

    def forward(self, input_ids, use_cache=False):
        self.shapes.append(tuple(input_ids.shape))
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.config.vocab_size))


@pytest.mark.parametrize("chunk_chars", [2048, 3000, 8192])
def test_streamed_tokens_equal_one_call(chunk_chars, tiny_tokenizer):
    tok = tiny_tokenizer
    text = _messy_text(400, seed=chunk_chars)
    pieces = [text[i : i + 997] for i in range(0, len(text), 997)]
    stats: dict = {}
    streamed = torch.cat(list(iter_tokens(tok, pieces, chunk_chars, stats=stats)))
    assert torch.equal(streamed, tokenize_text(tok, text)) and stats == {}


def test_iter_text_pieces_join_to_read_text(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text(_messy_text(200, seed=1), encoding="utf-8")
    jl = tmp_path / "b.jsonl"
    rows = [{"text": _messy_text(5, seed=i)} for i in range(30)]
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    for path in (txt, jl):
        pieces = list(iter_text(path, block_chars=500))
        assert "".join(pieces) == read_text(path) and max(map(len, pieces)) <= 500
    jl.write_text(json.dumps(rows[0]) + "\n" + '{"txt": 1}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: every line needs a string 'text'"):
        list(iter_text(jl))


def test_text_perplexity_streamed_equals_whole_text(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse24.perplexity import perplexity, text_perplexity

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = tmp_path / "t.txt"
    path.write_text(_messy_text(120, seed=7), encoding="utf-8")
    streamed = text_perplexity(model, tok, path, 48, batch_size=3, max_windows=9, chunk_chars=2048, say=None)
    whole = perplexity(model, tokenize_text(tok, read_text(path)), 48, batch_size=2, max_windows=9)
    for key in ("windows", "tokens_in_text", "tokens_scored", "tokens_dropped", "seqlen"):
        assert streamed[key] == whole[key], key
    assert math.isclose(streamed["ppl"], whole["ppl"], rel_tol=1e-6)


def test_work_and_memory_do_not_grow_with_the_text(tmp_path, tiny_tokenizer):
    from sparse24.perplexity import text_perplexity

    tok = _Counting(tiny_tokenizer)
    peaks = {}
    for copies in (5, 50):
        path = tmp_path / f"t{copies}.txt"
        path.write_text(shipped_text() * copies, encoding="utf-8")  # 22 kB vs 220 kB
        model = _Uniform(vocab=len(tok.inner))
        tracemalloc.start()
        res = text_perplexity(model, tok, path, 64, batch_size=4, max_windows=10, chunk_chars=2048, say=None)
        peaks[copies] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert res["windows"] == 10 and math.isclose(res["ppl"], len(tok.inner), rel_tol=1e-6)
        assert res["tokens_in_text"] == len(tokenize_text(tok.inner, shipped_text() * copies))  # counted to the end
        assert model.shapes == [(4, 64), (4, 64), (2, 64)]  # only the asked windows, 4 per forward
        assert tok.longest <= 2048
    # 10x the text (+200 kB), same peak: holding just the text in one string would add 200 kB, its tokens > 2 MB
    assert peaks[50] < peaks[5] + 64_000, peaks


def test_logits_budget_caps_windows_per_forward(monkeypatch):
    import sparse24.perplexity as ppl

    model = _Uniform(vocab=100)
    monkeypatch.setattr(ppl, "LOGITS_BUDGET", 2 * 64 * 100 * 4)  # room for two windows' logits
    res = ppl.perplexity(model, torch.randint(0, 100, (64 * 5 + 3,)), 64, batch_size=8)
    assert model.shapes == [(2, 64), (2, 64), (1, 64)] and res["windows"] == 5 and res["tokens_dropped"] == 3
