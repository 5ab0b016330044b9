"""Inference: prefill and decode tokens/s and peak memory, dense model vs the same model with 2:4 ``SparseLinear``.

    python benchmarks/bench_generate.py                  # GPU: a Llama-7B-width model (4 layers), bf16
    python benchmarks/bench_generate.py --smoke          # CPU: a tiny Llama
    sparse24 bench generate --smoke

The sparse model is what :func:`sparse24.load_sparse` returns for a pruned checkpoint (``MagnitudeConfig`` with the
``auto`` backend): sparse kernels for prefill, dense below ``SPARSE24_MIN_TOKENS`` tokens so decode is never slower
than dense. Prefill = one forward of ``batch x prompt`` tokens; decode = greedy ``generate`` of ``--new`` tokens minus
the prefill, reported as generated tokens per second.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import _harness as H  # noqa: E402
from benchmarks.bench_block import build  # noqa: E402

GPU_MODEL = {"hidden": 4096, "intermediate": 11008, "layers": 4, "heads": 32, "kv": 32, "vocab": 32000}
SMOKE_MODEL = {"hidden": 64, "intermediate": 128, "layers": 1, "heads": 4, "kv": 2, "vocab": 64}


def _timed(fn, device: str, reps: int) -> tuple[float, float, float]:
    ts = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    q = torch.tensor(ts).quantile(torch.tensor([0.2, 0.5, 0.8])).tolist()
    return q[0], q[1], q[2]


def measure(model: torch.nn.Module, ids: torch.Tensor, new: int, device: str, reps: int) -> dict[str, tuple]:
    """Seconds for prefill and for generate (quantiles), and peak memory in MB."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(ids)  # warm-up: packing, alg search
        prefill = _timed(lambda: model(ids), device, reps)
        gen = _timed(lambda: model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                            pad_token_id=0), device, reps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return {"prefill": prefill, "generate": gen, "peak": (peak, peak, peak)}


def run(args: argparse.Namespace) -> tuple[str, list[dict]]:
    from sparse24.api import sparsify
    from sparse24.config import MagnitudeConfig

    device = H.device_for(args)
    dtype = H.DTYPES[args.dtype]
    spec = SMOKE_MODEL if args.smoke else GPU_MODEL
    batch, prompt, new, reps = (1, 16, 4, 2) if args.smoke else (1, 2048, 64, 3)
    torch.manual_seed(0)
    dense = build(spec, device).to(dtype).eval()
    sparse = sparsify(copy.deepcopy(dense), MagnitudeConfig())  # weights pruned by magnitude, auto backend
    ids = torch.randint(0, spec["vocab"], (batch, prompt), device=device)
    stamp, rows = H.env_stamp(device), []
    shape = f"llama-{spec['hidden']}x{spec['layers']}"
    for name, model in (("dense", dense), ("sparse24-auto", sparse)):
        r = measure(model, ids, new, device, reps)
        pre = tuple(batch * prompt / t for t in reversed(r["prefill"]))  # tokens/s: the order flips
        dec = tuple(batch * new / max(g - p, 1e-9) for g, p in zip(reversed(r["generate"]), reversed(r["prefill"])))
        rows.append(H.row("generate", name, shape, batch * prompt, args.dtype, "prefill_tok_s", pre, stamp))
        rows.append(H.row("generate", name, shape, batch, args.dtype, "decode_tok_s", dec, stamp))
        rows.append(H.row("generate", name, shape, batch * prompt, args.dtype, "peak_MB", r["peak"], stamp))
        H.write_csv(H.csv_path(args, "generate", device), rows)
    return device, rows


def main(argv: list[str] | None = None) -> int:
    return H.main(__doc__, run, "generate", "prefill_tok_s", argv)


if __name__ == "__main__":
    sys.exit(main())
