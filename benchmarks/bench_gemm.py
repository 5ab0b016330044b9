"""2:4 GEMMs vs dense, ``Y = X W̃ᵀ`` for every named shape and M (dense-equivalent TFLOPS, speedup in plot.py).

    python benchmarks/bench_gemm.py                      # GPU: Llama-7B/8B/70B shapes, M in shapes.GEMM_TOKENS, bf16
    python benchmarks/bench_gemm.py --dtype fp16 --shapes llama2-7b-mlp-up --tokens 16 4096
    python benchmarks/bench_gemm.py --smoke              # CPU: the contract twins of the GPU backends, tiny shape

Providers: ``dense`` (F.linear on the weight with zeros: the baseline), ``cusparselt`` (the backend: torch's search
+ guard), ``cusparselt_alg0`` (torch's default algorithm, no tuning), ``cutlass`` (SM8x only), ``cusparselt_fp8``
(e4m3 sparse, SM90) and ``dense_fp8`` (``torch._scaled_mm`` dense e4m3, the FP8 baseline). ``--smoke`` runs
``dense`` plus ``cusparselt_contract``/``cusparselt_fp8_contract``/``dense_fp8_contract`` (same calling code, products
by the dense reference): it checks the script, not the speed. Compression happens once, outside the timed region.
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

GPU_PROVIDERS = ("dense", "cusparselt", "cusparselt_alg0", "cutlass", "cusparselt_fp8", "dense_fp8")
SMOKE_PROVIDERS = ("dense", "cusparselt_contract", "cusparselt_fp8_contract", "dense_fp8_contract")


def _dense_fp8(w: torch.Tensor, x: torch.Tensor, ops):
    from sparse24.fp8 import fp8_quantize

    if w.shape[0] % 16 or w.shape[1] % 16:
        return None
    qw, sw = fp8_quantize(w)  # [N, K]; q = w · s
    inv_w = (1 / sw).float()

    def run():
        qx, sx = fp8_quantize(x)  # per-call activation quantisation, as the sparse FP8 path does
        return ops.scaled_mm(qx, qw.t(), (1 / sx).float(), inv_w, out_dtype=x.dtype)

    return run


def make(provider: str, w: torch.Tensor, x: torch.Tensor):
    """A zero-argument callable running ``x @ w.T`` on ``provider``, or None when it cannot run here."""
    if provider == "dense":
        return lambda: F.linear(x, w)
    from sparse24.kernels.contract import ContractOps, TorchOps

    from sparse24.backends import BACKENDS, get_backend

    if provider.startswith("dense_fp8"):
        return _dense_fp8(w, x, ContractOps() if provider.endswith("_contract") else TorchOps())
    get_backend("dense")  # registers the GPU backends
    name = "cusparselt" if provider == "cusparselt_alg0" else provider
    be = BACKENDS[name]
    if be.check(tuple(w.shape), w.dtype, w.device):
        return None
    p = be.prepare(w)
    if provider == "cusparselt_alg0":
        from sparse24.kernels.backends import pad_rows

        xp = pad_rows(x, 8)
        return lambda: torch._cslt_sparse_mm(p.packed, xp.t(), transpose_result=True, alg_id=0)
    return lambda: be.linear(x, p, None)


def run(args: argparse.Namespace) -> tuple[str, list[dict]]:
    device = H.device_for(args)
    dtype = H.DTYPES[args.dtype]
    shapes = S.SMOKE_SHAPES if args.smoke else [S.get(i) for i in args.shapes] if args.shapes else S.GEMM_SHAPES
    tokens = args.tokens or (S.SMOKE_TOKENS if args.smoke else S.GEMM_TOKENS)
    providers = SMOKE_PROVIDERS if args.smoke else GPU_PROVIDERS
    from sparse24.masks import transposable_mask_24

    stamp, rows = H.env_stamp(device), []
    for shape in shapes:
        H.write_csv(H.csv_path(args, "gemm", device), rows)  # partial: survives a timeout
        w = torch.randn(shape.wshape, device=device, dtype=dtype)
        w = w * transposable_mask_24(w)
        for m in tokens:
            x = torch.randn(m, shape.in_features, device=device, dtype=dtype)
            for provider in providers:
                fn = make(provider, w, x)
                if fn is None:
                    continue
                fn()  # outside the timed region: cuSPARSELt's one-time search, Triton compilation
                q = H.bench(fn, device, args.smoke)
                flop = 2.0 * m * shape.out_features * shape.in_features
                rows.append(H.row("gemm", provider, shape.id, m, args.dtype, "ms", q, stamp))
                rows.append(H.row("gemm", provider, shape.id, m, args.dtype, "TFLOPS", H.tflops(q, flop), stamp))
    return device, rows


def main(argv: list[str] | None = None) -> int:
    return H.main(__doc__, run, "gemm", "ms", argv)


if __name__ == "__main__":
    sys.exit(main())
