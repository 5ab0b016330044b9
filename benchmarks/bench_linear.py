"""``SparseLinear`` forward + backward per method vs ``nn.Linear`` (what one layer costs a training step).

    python benchmarks/bench_linear.py                    # GPU: every method on the auto backend
    python benchmarks/bench_linear.py --smoke            # CPU: nn.Linear vs SparseLinear on the contract twin

The timed region is ``y = layer(x); y.backward(gy)``. Two modes per method:
``micro``: the weight is unchanged between calls (micro-batches of one optimizer step: the packed weight is reused);
``step``: the weight version is bumped before each call (a step boundary every call: it re-packs, the per-step cost).
Methods: ``srste-t`` (transposable SR-STE: sparse fwd and ∇X), ``srste-t-mvue`` (+ sparse ∇W), ``sste`` (S-STE:
sparse fwd), ``sste-mvue``, ``sste-fp8`` (native e4m3 forward where the GPU has it).
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

GPU_BACKENDS = ("auto",)
SMOKE_BACKENDS = ("cusparselt_contract",)
MODES = ("micro", "step")


def methods() -> dict[str, object]:
    from sparse24.config import SRSTEConfig, SSTEConfig

    return {"srste-t": SRSTEConfig(transposable=True), "srste-t-mvue": SRSTEConfig(transposable=True, mvue=True),
            "sste": SSTEConfig(), "sste-mvue": SSTEConfig(mvue=True), "sste-fp8": SSTEConfig(fp8=True)}


def make(method: str, backend: str, mode: str, shape: S.Shape, m: int, dtype: torch.dtype, device: str):
    """The timed step for one configuration, or None when the backend cannot run it here."""
    from sparse24.linear import SparseLinear

    lin = torch.nn.Linear(shape.in_features, shape.out_features, device=device, dtype=dtype)
    if method != "dense":
        cfg = methods()[method]
        if backend == "cusparselt_contract" and getattr(cfg, "fp8", False):
            backend = "cusparselt_fp8_contract"
        try:
            lin = SparseLinear.from_dense(lin, cfg, backend=backend)
        except RuntimeError:
            return None
    x = torch.randn(m, shape.in_features, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(m, shape.out_features, device=device, dtype=dtype)

    def step():
        if mode == "step":
            with torch.no_grad():
                lin.weight.add_(0)  # in place: bumps the version, as optimizer.step() does
        lin(x).backward(gy)

    return step


def run(args: argparse.Namespace) -> tuple[str, list[dict]]:
    device = H.device_for(args)
    dtype = H.DTYPES[args.dtype]
    shapes = S.SMOKE_SHAPES if args.smoke else [S.get(i) for i in args.shapes] if args.shapes else S.GEMM_SHAPES[:3]
    tokens = args.tokens or (S.SMOKE_TOKENS[-1:] if args.smoke else (4096, 16384))
    backends = SMOKE_BACKENDS if args.smoke else GPU_BACKENDS
    stamp, rows = H.env_stamp(device), []
    configs = [("nn.Linear", "dense", "micro")] + [(f"{meth}", b, mode) for meth in methods() for b in backends
                                                   for mode in MODES]
    for shape in shapes:
        H.write_csv(H.csv_path(args, "linear", device), rows)  # partial: survives a timeout
        for m in tokens:
            for meth, backend, mode in configs:
                fn = make("dense" if meth == "nn.Linear" else meth, backend, mode, shape, m, dtype, device)
                if fn is None:
                    continue
                fn()  # warm-up: first pack, alg search
                q = H.bench(fn, device, args.smoke)
                flop = 6.0 * m * shape.out_features * shape.in_features  # fwd + dX + dW, dense-equivalent
                provider = meth if meth == "nn.Linear" else f"{meth}/{backend}/{mode}"
                rows.append(H.row("linear_fwd_bwd", provider, shape.id, m, args.dtype, "ms", q, stamp))
                rows.append(H.row("linear_fwd_bwd", provider, shape.id, m, args.dtype, "TFLOPS",
                                  H.tflops(q, flop), stamp))
    return device, rows


def main(argv: list[str] | None = None) -> int:
    return H.main(__doc__, run, "linear", "ms", argv)


if __name__ == "__main__":
    sys.exit(main())
