"""Finished models in the core formats, plots, and the λ sweep helper."""

from __future__ import annotations

import json

import pytest
import torch
from sparse24.train.pretrain import pretrain

from sparse24.api import sparse_modules
from sparse24.masks import is_24

TINY = {"data": "shipped", "tokenizer": "byte", "batch_size": 2, "seq_len": 16, "eval_batches": 1, "progress": False,
        "ckpt_every": 0}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE24_CACHE", str(tmp_path / "cache"))


def test_sparse_run_saves_sparse24_folder(tmp_path):
    from sparse24.io import load_sparse

    rows = pretrain("sste", tmp_path / "run", model="llama-tiny", steps=3, **TINY)
    final = tmp_path / "run" / "final"
    assert json.loads((final / "sparse24_train.json").read_text())["saved_as"] == "sparse24"
    model = load_sparse(final)
    assert len(list(sparse_modules(model))) == 6 and all(is_24(m.sparse_weight()) for _, m in sparse_modules(model))
    assert rows[-1]["val_loss"] is not None and "flip_rate" in rows[-1]
    assert any(k.startswith("flip_rate/model.layers.0.mlp") for k in rows[-1])  # per-layer flip rates


def test_srste_after_dense_finetune_saves_plain_dense(tmp_path):
    from transformers import AutoModelForCausalLM

    rows = pretrain("srste_decay_ft", tmp_path / "run", model="llama-tiny", steps=6, **TINY)
    assert [r["dense"] for r in rows] == [False] * 4 + [True] * 2
    final = tmp_path / "run" / "final"
    assert json.loads((final / "sparse24_train.json").read_text())["saved_as"] == "dense"
    assert not (final / "sparse24_config.json").exists()
    w = AutoModelForCausalLM.from_pretrained(final).model.layers[0].mlp.up_proj.weight
    assert not is_24(w)  # the dense fine-tune filled the pruned weights in


def test_gpt2_run_saves_sparse24_folder_in_conv1d_layout(tmp_path):
    from transformers import AutoModelForCausalLM

    from sparse24 import load_sparse

    pretrain("sste", tmp_path / "run", model="gpt2-tiny", steps=2, **TINY)
    final = tmp_path / "run" / "final"
    assert json.loads((final / "sparse24_train.json").read_text())["saved_as"] == "sparse24"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert is_24(model.transformer.h[0].mlp.c_fc.weight.t())  # Conv1D stores [in, out]
    assert not is_24(model.transformer.h[0].attn.c_attn.weight.t())
    loaded = dict(sparse_modules(load_sparse(final)))  # the compressed file rebuilds the same 2:4 layers
    assert torch.equal(loaded["transformer.h.0.mlp.c_fc"].sparse_weight(), model.transformer.h[0].mlp.c_fc.weight.t())


def test_plots(tmp_path):
    from sparse24.train.plot import final_losses, main
    from sparse24.train.telemetry import read_jsonl

    for r in ("dense", "ste"):
        pretrain(r, tmp_path / r, model="llama-tiny", steps=3, save=False, **{**TINY, "eval_batches": 3})
    assert main([str(tmp_path / "dense"), str(tmp_path / "ste"), "--out", str(tmp_path / "l.png"),
                 "--flips", str(tmp_path / "f.png"), "--final", str(tmp_path / "b.png"), "--zoom", "0.4"]) == 0
    for f in ("l.png", "f.png", "b.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = read_jsonl(tmp_path / "ste" / "metrics.jsonl")[-1]
    assert final_losses([tmp_path / "ste"]) == {"ste": {"val": last["val_loss"], "se": last["val_loss_se"]}}


def test_validation_standard_error_matches_the_batches():
    from sparse24.train.pretrain import make_trainer

    trainer, _ = make_trainer("sste", model="llama-tiny", steps=1, **{**TINY, "eval_batches": 4})
    mean, se = trainer.evaluate_with_se()
    with torch.no_grad():
        per_batch = torch.tensor([float(trainer.loss_fn(trainer.model, b)) for b in trainer.val_batches],
                                 dtype=torch.float64)
    assert len(per_batch) == 4 and mean == pytest.approx(float(per_batch.mean()), rel=1e-5)
    assert se == pytest.approx(float(per_batch.std() / 2), rel=1e-4)  # sample std / sqrt(4)


def test_decay_sweep_lowers_flip_rate():
    from sparse24.train.sweep import sweep_decay

    rows = sweep_decay([0.0, 2.0], steps=8, model="llama-tiny", data="shipped", tokenizer="byte", batch_size=2,
                       seq_len=16, lr=1e-2, warmup=0.0)
    assert [r["decay"] for r in rows] == [0.0, 2.0]
    assert rows[0]["flip_rate"] > 0 and rows[1]["flip_rate"] < rows[0]["flip_rate"]
    assert torch.isfinite(torch.tensor([r["final_loss"] for r in rows])).all()
