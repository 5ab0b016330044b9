"""Reuse the tiny offline tokenizer/model builders of tests/prune/conftest.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_prune_fixtures", Path(__file__).parents[1] / "prune" / "prune_fixtures.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
make_tokenizer, make_model_dir = _mod.make_tokenizer, _mod.make_model_dir


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    return make_model_dir(tmp_path / "tiny")
