"""Token data: deterministic batches by position, disjoint validation documents, user files, a tiny BPE."""

from __future__ import annotations

import json

import pytest
import torch
from sparse24.train.data import batch_at, load_data, read_texts, train_bpe, val_batches


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE24_CACHE", str(tmp_path / "cache"))


def test_shipped_bytes_split_and_cache():
    from sparse24.texts import shipped_text

    d = load_data("shipped", "byte")
    assert d.vocab_size == 256 and len(d.train) > 1000 and len(d.val) > 50
    docs = [t for t in shipped_text().split("\n\n") if t.strip()]
    val = bytes(d.val.tolist()).decode().split("\x00")
    assert all(v in docs for v in val)  # whole held-out documents
    train = bytes(d.train.tolist()).decode().split("\x00")
    assert not set(val) & set(train)
    again = load_data("shipped", "byte")  # from the cache
    assert torch.equal(again.train, d.train) and torch.equal(again.val, d.val)


def test_batches_are_a_function_of_position():
    tokens = torch.randint(0, 100, (500,))
    a, b = batch_at(tokens, 7, 4, 16, seed=3), batch_at(tokens, 7, 4, 16, seed=3)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["input_ids"], batch_at(tokens, 8, 4, 16, seed=3)["input_ids"])
    assert torch.equal(a["input_ids"][:, 1:], a["labels"][:, :-1])  # labels are the next tokens
    vb = val_batches(tokens, 4, 16, max_batches=2)
    assert len(vb) == 2 and torch.equal(vb[0]["input_ids"][0], tokens[:16])


def test_user_files_and_bpe(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": f"document number {i} about cats"})
                                                for i in range(20)))
    (tmp_path / "b.txt").write_text("first paragraph here\n\nsecond paragraph there")
    docs = read_texts(tmp_path)
    assert len(docs) == 22 and "second paragraph there" in docs
    tok = train_bpe(docs, vocab_size=300)
    enc = tok.encode("document number 3 about cats")
    assert tok.decode(enc.ids) == "document number 3 about cats" and len(enc.ids) < 20
    with pytest.raises(FileNotFoundError, match="--data"):
        read_texts(tmp_path / "missing.txt")
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(ValueError, match="'text' field"):
        read_texts(tmp_path / "bad.jsonl")
