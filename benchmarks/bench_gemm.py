"""2:4 GEMM backends vs the dense masked matmul, ``Y = X W̃ᵀ`` for every named shape and M.

    python benchmarks/bench_gemm.py                      # GPU: all shapes, M in shapes.TOKENS, bf16
    python benchmarks/bench_gemm.py --shapes llama3-8b-mlp-up --tokens 1 4096
    python benchmarks/bench_gemm.py --smoke              # CPU: dense + triton (interpreter) on a tiny shape

Providers: ``dense`` (F.linear on the weight with zeros: the baseline), ``cusparselt`` (guarded alg_id search),
``cusparselt_alg0`` (torch's default algorithm), ``cutlass`` (SM8x), ``cusparselt_fp8`` (e4m3, SM90),
``triton`` (dense masked GEMM; smoke only). Weight compression happens once, outside the timed region.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import _harness as H  # noqa: E402
from benchmarks import shapes as S  # noqa: E402

GPU_PROVIDERS = ("dense", "cusparselt", "cusparselt_alg0", "cutlass", "cusparselt_fp8")
SMOKE_PROVIDERS = ("dense", "triton")


def make(provider: str, w: torch.Tensor, x: torch.Tensor):
    """A zero-argument callable running ``x @ w.T`` on ``provider``, or None when it cannot run here."""
    if provider == "dense":
        return lambda: F.linear(x, w)
    import sparse24.kernels.backends as kb

    from sparse24.backends import BACKENDS

    name = "cusparselt" if provider == "cusparselt_alg0" else provider
    be = BACKENDS[name]
    if be.check(tuple(w.shape), w.dtype, w.device):
        return None
    p = be.prepare(w)
    if provider == "cusparselt_alg0":
        xp = kb._pad_rows(x, 8)
        return lambda: torch._cslt_sparse_mm(p.packed, xp.t(), transpose_result=True, alg_id=0)
    return lambda: be.linear(x, p, None)


def run(args: argparse.Namespace) -> tuple[str, list[dict]]:
    device = H.device_for(args)
    dtype = H.DTYPES[args.dtype]
    shapes = S.SMOKE_SHAPES if args.smoke else [S.get(i) for i in args.shapes] if args.shapes else S.MODEL_SHAPES
    tokens = args.tokens or (S.SMOKE_TOKENS if args.smoke else S.TOKENS)
    providers = SMOKE_PROVIDERS if args.smoke else GPU_PROVIDERS
    from sparse24.masks import transposable_mask_24

    stamp, rows = H.env_stamp(device), []
    for shape in shapes:
        H.write_csv(args.out_dir / f"gemm_{device}.csv", rows)  # partial: survives a timeout
        w = torch.randn(shape.wshape, device=device, dtype=dtype)
        w = w * transposable_mask_24(w)
        for m in tokens:
            x = torch.randn(m, shape.in_features, device=device, dtype=dtype)
            for provider in providers:
                fn = make(provider, w, x)
                if fn is None:
                    continue
                fn()  # outside the timed region: cuSPARSELt's one-time alg_id search, Triton compilation
                q = H.bench(fn, device, args.smoke)
                flop = 2.0 * m * shape.out_features * shape.in_features
                rows.append(H.row("gemm", provider, shape.id, m, args.dtype, "ms", q, stamp))
                rows.append(H.row("gemm", provider, shape.id, m, args.dtype, "TFLOPS", H.tflops(q, flop), stamp))
    return device, rows


def main(argv: list[str] | None = None) -> int:
    return H.main(__doc__, run, "gemm", "ms", argv)


if __name__ == "__main__":
    sys.exit(main())
