"""Triton weight kernels vs their pure-torch references, in GB/s against the measured copy bandwidth.

    python benchmarks/bench_kernels.py                 # GPU: every kernel on the model weight shapes
    python benchmarks/bench_kernels.py --smoke         # CPU: tiny shape, Triton interpreter (checks the script)

Bytes are the minimum each op must move (read inputs once, write outputs once), so "% of copy" is how close a
kernel gets to the memory roofline of this device; ``copy`` is ``dst.copy_(src)`` of the weight.
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


def cases(w: torch.Tensor):
    """(op, triton fn, reference fn, bytes moved) for one weight ``w``."""
    from sparse24.kernels import fp8_cast, mask24, masked_decay, mvue, pack_cutlass, soft_threshold, transposable_mask

    from sparse24.masks import magnitude_mask_24

    n, e = w.numel(), w.element_size()
    g, mask = torch.randn_like(w), magnitude_mask_24(w)
    beta = torch.ones((), device=w.device)
    w24 = w * mask
    out = [
        ("mask24", lambda: mask24.mask24(w), lambda: mask24.mask24_ref(w), n * (2 * e + 1)),
        ("transposable_mask", lambda: transposable_mask.transposable_mask(w),
         lambda: transposable_mask.transposable_mask_ref(w), n * (2 * e + 1)),
        ("soft_threshold", lambda: soft_threshold.soft_threshold_triton(w, beta),
         lambda: soft_threshold.soft_threshold_ref(w, beta), 2 * n * e),
        ("mvue", lambda: mvue.mvue_triton(w, 0), lambda: mvue.mvue_ref(w, 0), 2 * n * e),
        ("masked_decay", lambda: masked_decay.masked_decay_triton_(g, w, mask, 1e-4),
         lambda: masked_decay.masked_decay_ref_(g, w, mask, 1e-4), n * (3 * e + 1)),
        ("fp8_cast", lambda: fp8_cast.fp8_cast(w), lambda: fp8_cast.fp8_cast_ref(w), n * (e + 1)),
    ]
    if w.dtype in (torch.float16, torch.bfloat16) and w.shape[0] % 32 == 0 and w.shape[1] % 32 == 0:
        out.append(("pack_cutlass", lambda: pack_cutlass.pack_cutlass_triton(w24, validate=False),
                    lambda: pack_cutlass.pack_cutlass_ref(w24, validate=False), n * e + n * e // 2 + n // 8))
    return out


def run(args: argparse.Namespace) -> tuple[str, list[dict]]:
    device = H.device_for(args)
    dtype = H.DTYPES[args.dtype]
    shapes = S.SMOKE_SHAPES if args.smoke else [S.get(i) for i in args.shapes] if args.shapes else S.MODEL_SHAPES
    stamp, rows = H.env_stamp(device), []
    for shape in shapes:
        H.write_csv(H.csv_path(args, "kernels", device), rows)  # partial: survives a timeout
        w = torch.randn(shape.wshape, device=device, dtype=dtype)
        dst = torch.empty_like(w)
        q = H.bench(lambda: dst.copy_(w), device, args.smoke)
        rows.append(H.row("copy", "torch", shape.id, 0, args.dtype, "GB/s", _gbps(q, 2 * w.numel() * w.element_size()),
                          stamp))
        for op, fast, ref, nbytes in cases(w):
            for provider, fn in (("triton", fast), ("torch", ref)):
                q = H.bench(fn, device, args.smoke)
                rows.append(H.row(op, provider, shape.id, 0, args.dtype, "ms", q, stamp))
                rows.append(H.row(op, provider, shape.id, 0, args.dtype, "GB/s", _gbps(q, nbytes), stamp))
    return device, rows


def _gbps(ms: tuple[float, float, float], nbytes: int) -> tuple[float, float, float]:
    return tuple(nbytes / (t * 1e-3) / 1e9 for t in (ms[2], ms[1], ms[0]))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    return H.main(__doc__, run, "kernels", "GB/s", argv)


if __name__ == "__main__":
    sys.exit(main())
