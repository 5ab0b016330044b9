"""Named weight shapes ``[out, in]`` shared by the benchmarks and the tests (one definition, ids as pytest ids).

``MODEL_SHAPES``: linear layers of real models (the benchmark grid, times ``TOKENS``). ``TEST_SHAPES``: small and
odd shapes the interpreter can run in milliseconds, chosen to hit the tails of every kernel's blocking.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    id: str
    out_features: int
    in_features: int
    note: str = ""

    @property
    def wshape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)


MODEL_SHAPES: tuple[Shape, ...] = (
    # Llama-2-7B: hidden 4096, MLP 11008, MHA (k/v = 4096)
    Shape("llama2-7b-attn-qkvo", 4096, 4096, "q/k/v/o projections"),
    Shape("llama2-7b-mlp-up", 11008, 4096, "up and gate projections"),
    Shape("llama2-7b-mlp-down", 4096, 11008),
    # Llama-3-8B: hidden 4096, MLP 14336, GQA with 8 kv heads of 128 (k/v = 1024)
    Shape("llama3-8b-attn-qo", 4096, 4096, "q/o projections"),
    Shape("llama3-8b-attn-kv", 1024, 4096, "k/v projections (GQA)"),
    Shape("llama3-8b-mlp-up", 14336, 4096, "up and gate projections"),
    Shape("llama3-8b-mlp-down", 4096, 14336),
    # GPT-2 small MLP and ViT-L/16 MLP (the PyTorch 2:4 training blog's shape)
    Shape("gpt2-mlp-fc", 3072, 768),
    Shape("gpt2-mlp-proj", 768, 3072),
    Shape("vitl-mlp-fc1", 4096, 1024),
    Shape("vitl-mlp-fc2", 1024, 4096),
    # Llama-3-70B: hidden 8192, MLP 28672, GQA with 8 kv heads of 128 (k/v = 1024)
    Shape("llama3-70b-attn-qo", 8192, 8192, "q/o projections"),
    Shape("llama3-70b-attn-kv", 1024, 8192, "k/v projections (GQA)"),
    Shape("llama3-70b-mlp-up", 28672, 8192, "up and gate projections"),
    Shape("llama3-70b-mlp-down", 8192, 28672),
)
GEMM_SHAPES: tuple[Shape, ...] = tuple(s for s in MODEL_SHAPES if s.id in (
    "llama2-7b-mlp-up", "llama2-7b-mlp-down", "llama3-8b-attn-qo", "llama3-8b-mlp-up", "llama3-70b-mlp-up",
    "llama3-70b-mlp-down"))  # the run_gpu.sh grid: 7B/8B/70B MLP and attention projections

TEST_SHAPES: tuple[Shape, ...] = (
    Shape("single-group", 1, 4, "one group of 4"),
    Shape("tiny", 4, 8),
    Shape("ragged-k", 36, 52, "in % 16 != 0: tails of every column block"),
    Shape("ragged-rows", 20, 64, "rows not a multiple of the row block"),
    Shape("cutlass-min", 32, 64, "smallest fp16 CUTLASS / cuSPARSELt weight"),
    Shape("wide", 8, 1028, "more than one column block"),
)

TOKENS: tuple[int, ...] = (1, 16, 64, 256, 1024, 4096, 16384)  # M = tokens per GEMM (decode ... long prefill)
GEMM_TOKENS: tuple[int, ...] = (16, 256, 2048, 8192, 16384)
SMOKE_SHAPES: tuple[Shape, ...] = (Shape("smoke", 32, 64),)
SMOKE_TOKENS: tuple[int, ...] = (1, 16)

BY_ID = {s.id: s for s in MODEL_SHAPES + TEST_SHAPES + SMOKE_SHAPES}


def get(shape_id: str) -> Shape:
    try:
        return BY_ID[shape_id]
    except KeyError:
        raise ValueError(f"unknown shape id {shape_id!r}; choose from {sorted(BY_ID)}") from None


def pytest_params(shapes: tuple[Shape, ...] = TEST_SHAPES, min_rows_multiple: int = 1):
    """``pytest.param(shape, id=shape.id)`` for the shapes whose rows are a multiple of ``min_rows_multiple``."""
    import pytest

    return [pytest.param(s, id=s.id) for s in shapes if s.out_features % min_rows_multiple == 0]
