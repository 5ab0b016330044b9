"""``SparseLinear`` forward + backward vs ``nn.Linear`` (the end-to-end cost a training step pays per layer).

    python benchmarks/bench_linear.py                    # GPU: SR-STE transposable config, every backend
    python benchmarks/bench_linear.py --smoke            # CPU: nn.Linear vs SparseLinear(dense / triton)

The timed region is ``y = layer(x); y.backward(gy)``. SparseLinear recompresses its weight on every forward unless
its caller passes a step key to the backend's ``prepare`` (see kernels/backends.py), so this measures the worst case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import _harness as H  # noqa: E402
from benchmarks import shapes as S  # noqa: E402

GPU_BACKENDS = ("dense", "cusparselt", "cutlass")
SMOKE_BACKENDS = ("dense", "triton")


def make(provider: str, shape: S.Shape, m: int, dtype: torch.dtype, device: str):
    from sparse24.backends import BACKENDS
    from sparse24.config import SRSTEConfig
    from sparse24.linear import SparseLinear

    lin = torch.nn.Linear(shape.in_features, shape.out_features, device=device, dtype=dtype)
    if provider != "nn.Linear":
        name = provider.removeprefix("sparse24-")
        if BACKENDS[name].check(shape.wshape, dtype, torch.device(device)):
            return None
        lin = SparseLinear.from_dense(lin, SRSTEConfig(transposable=True), backend=name)
    x = torch.randn(m, shape.in_features, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(m, shape.out_features, device=device, dtype=dtype)

    def step():
        lin(x).backward(gy)

    return step


def run(args: argparse.Namespace) -> tuple[str, list[dict]]:
    device = H.device_for(args)
    import sparse24.kernels.backends  # noqa: F401  (registers the GPU/Triton backends)

    dtype = H.DTYPES[args.dtype]
    shapes = S.SMOKE_SHAPES if args.smoke else [S.get(i) for i in args.shapes] if args.shapes else S.MODEL_SHAPES
    tokens = args.tokens or (S.SMOKE_TOKENS if args.smoke else S.TOKENS[2:])
    backends = SMOKE_BACKENDS if args.smoke else GPU_BACKENDS
    providers = ("nn.Linear", *(f"sparse24-{b}" for b in backends))
    stamp, rows = H.env_stamp(device), []
    for shape in shapes:
        H.write_csv(args.out_dir / f"linear_{device}.csv", rows)  # partial: survives a timeout
        for m in tokens:
            for provider in providers:
                fn = make(provider, shape, m, dtype, device)
                if fn is None:
                    continue
                q = H.bench(fn, device, args.smoke)
                flop = 6.0 * m * shape.out_features * shape.in_features  # fwd + dX + dW, dense-equivalent
                rows.append(H.row("linear_fwd_bwd", provider, shape.id, m, args.dtype, "ms", q, stamp))
                rows.append(H.row("linear_fwd_bwd", provider, shape.id, m, args.dtype, "TFLOPS",
                                  H.tflops(q, flop), stamp))
    return device, rows


def main(argv: list[str] | None = None) -> int:
    return H.main(__doc__, run, "linear", "ms", argv)


if __name__ == "__main__":
    sys.exit(main())
