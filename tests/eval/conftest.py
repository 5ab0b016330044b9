"""Reuse the tiny offline tokenizer/model builders of tests/prune/conftest.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_prune_fixtures",
                                               Path(__file__).parents[1] / "prune" / "prune_fixtures.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
make_tokenizer, make_model_dir = _mod.make_tokenizer, _mod.make_model_dir


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    return make_model_dir(tmp_path / "tiny")


@pytest.fixture
def tiny_gpt2_dir(tmp_path) -> Path:
    """A tiny GPT-2 (learned position table of 32) with the tiny tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_tokenizer()
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_positions=32, n_embd=32, n_layer=1, n_head=2, vocab_size=len(tok))).save_pretrained(
        folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny byte-level BPE tokenizer (vocabulary 320) trained on the shipped text."""
    return make_tokenizer()
