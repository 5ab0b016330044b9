"""Row-shard helpers and shard-local telemetry, checked on one process against whole-tensor references:
``row_range`` against ``torch.chunk`` (FSDP2's ``Shard(0)`` sizes), the flip tracker fed per-shard rows plus a sum of
counts against the tracker fed whole masks, and the refusal of shardings that split transposable 4x4 blocks."""

from __future__ import annotations

import pytest
import torch
from sparse24.train.distributed import unshardable_layers
from sparse24.train.model import build_model

from sparse24 import SRSTEConfig, sparsify
from sparse24.masks import magnitude_mask_24
from sparse24.sharding import gather_rows, local, row_range, shard_like, shard_rows
from sparse24.tracking import FlipTracker


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 8])
def test_row_range_is_torch_chunk(world):
    for rows in range(0, 41):
        chunks = list(torch.arange(rows).chunk(world)) if rows else []
        chunks += [torch.arange(0)] * (world - len(chunks))  # chunk drops empty tails; FSDP2 ranks hold nothing
        for r, c in enumerate(chunks):
            a, b = row_range(rows, r, world)
            assert torch.equal(torch.arange(a, b), c), (rows, world, r)


def test_plain_tensors_pass_through():
    t = torch.randn(8, 4)
    assert local(t) is t and shard_rows(t, t) is t and shard_like(t, t) is t and gather_rows(t, 8) is t


def test_flip_tracker_summed_over_row_shards_equals_whole_masks():
    g = torch.Generator().manual_seed(0)
    w = {f"l{i}": torch.randn(4 * (i + 3), 16, generator=g) for i in range(3)}  # rows 12, 16, 20
    whole, parts = FlipTracker(), [FlipTracker(), FlipTracker()]
    for step in range(4):
        w = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in w.items()}
        masks = {k: magnitude_mask_24(v) for k, v in w.items()}
        ref = whole.update(masks)
        shards = [{k: m[slice(*row_range(m.shape[0], r, 2))] for k, m in masks.items()} for r in range(2)]
        seen = {}
        parts[1].update(shards[1], reduce=lambda c: seen.setdefault("c", c.clone()))
        got = parts[0].update(shards[0], reduce=lambda c: c + seen["c"])  # the all-reduce of two ranks
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k] == pytest.approx(ref[k], abs=1e-12), (step, k)
    assert ref["flip_rate"] > 0 and ref["flip_rate_init"] > 0


def test_transposable_layers_refuse_shards_that_split_4x4_blocks():
    net = build_model("llama-tiny", 64, max_len=32, seed=0, seq_len=32)  # FFN: 168 rows (up/gate), 64 (down)
    sparsify(net, {"_default": None, "*.mlp.*": SRSTEConfig(transposable=True)})
    assert unshardable_layers(net, 1) == [] and unshardable_layers(net, 2) == []  # 84 and 32 rows per shard
    bad = unshardable_layers(net, 4)  # 168 -> 42 rows per shard
    assert len(bad) == 4 and all("gate_proj" in b or "up_proj" in b for b in bad) and "42" in bad[0]
    plain = build_model("llama-tiny", 64, max_len=32, seed=0, seq_len=32)
    sparsify(plain, {"_default": None, "*.mlp.*": SRSTEConfig(transposable=False)})
    assert unshardable_layers(plain, 4) == []  # plain 2:4 groups never straddle row shards


def test_mvue_streams_differ_per_rank_and_run_seed():
    from sparse24.train.distributed import MVUE_RANK_STRIDE, seed_mvue_streams

    from sparse24.api import sparse_modules

    def seeds(run_seed: int, rank: int) -> list[int]:
        net = build_model("llama-tiny", 64, max_len=32, seed=0, seq_len=32)
        sparsify(net, {"_default": None, "*.mlp.*": SRSTEConfig(mvue=True)})
        seed_mvue_streams(net, run_seed, rank)
        seed_mvue_streams(net, run_seed, rank)  # a second trainer on the same layers: same streams
        # a SparseLinear with ``_rank`` adds its rank at draw time itself (the same stride)
        return [m.seed + (MVUE_RANK_STRIDE * rank if hasattr(m, "_rank") else 0) for _, m in sparse_modules(net)]

    base = seeds(0, 0)
    assert base == list(range(6))  # one process, seed 0: the layers' own streams, as before
    others = [seeds(0, 1), seeds(1, 0), seeds(1, 1)]
    every = base + [s for o in others for s in o]
    assert len(set(every)) == len(every)  # no two (run seed, rank, layer) share a stream
