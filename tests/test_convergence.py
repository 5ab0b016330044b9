"""A 2-layer Llama, sparsified, trains on the shipped text on the CPU through the shared Trainer (the one
``sparse24 train`` and ``sparse24 demo`` run): loss falls, weights stay exactly 2:4, masks move under SR-STE."""

from __future__ import annotations

import pytest

from sparse24 import MagnitudeConfig, SRSTEConfig, SSTEConfig, is_24, sparse_modules, sparsify
from sparse24.demo import demo_trainer
from sparse24.texts import byte_tokens, shipped_text

pytestmark = pytest.mark.usefixtures("one_thread")  # a 2-layer d=64 model: one thread is the fast setting


@pytest.mark.parametrize(
    "config",
    [SSTEConfig(), SSTEConfig(mvue=True), SRSTEConfig(decay=6e-5, mask_refresh=1), MagnitudeConfig(mask_refresh=5)],
    ids=["sste", "sste-mvue", "srste", "ste-refresh5"],
)
def test_sparse_llama_trains_30_steps(tiny_llama, config):
    model = tiny_llama(layers=2, hidden=64)
    sparsify(model, config)
    trainer = demo_trainer(model, byte_tokens(shipped_text()), steps=30, quiet=True, batch=8, seqlen=64)
    hist = trainer.fit()
    model = trainer.unwrapped
    first, last = sum(h["loss"] for h in hist[:3]) / 3, sum(h["loss"] for h in hist[-3:]) / 3
    assert last < 0.75 * first, (first, last)
    assert all(is_24(m.sparse_weight()) for _, m in sparse_modules(model))
    logged = [h for h in hist if "flip_rate" in h]
    assert logged and all(0.0 <= h["flip_rate"] <= 1.0 for h in logged)
    if isinstance(config, SRSTEConfig):
        assert any(h["flip_rate"] > 0 for h in logged)  # masks really move while training
