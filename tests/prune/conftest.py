"""Fixtures for the pruning tests (helpers live in prune_fixtures.py, shared with tests/eval)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prune_fixtures import make_model_dir, make_tokenizer


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    """A 2-layer hidden-64 Llama with a 320-token BPE tokenizer in an HF folder (+ calib.txt)."""
    return make_model_dir(tmp_path / "tiny")


@pytest.fixture
def tiny_tokenizer():
    return make_tokenizer()
