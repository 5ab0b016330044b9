"""Mask quality and speed on the CPU: magnitude, exact transposable (90 patterns), torch's greedy 4x4 tile pruner.

    python benchmarks/bench_masks.py                # 4096x4096 fp32, 2 threads, writes benchmarks/results/masks_cpu.*

torch's greedy tile (``torch.sparse._semi_structured_conversions._sparse_semi_structured_tile``) is a Python loop
over tiles, so it is timed on a ``--greedy-size`` square and scaled by the tile count (marked "extrapolated").
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import subprocess
import time
from pathlib import Path

import torch

from sparse24.masks import magnitude_mask_24, retained_fraction, transposable_mask_24

RESULTS = Path(__file__).parent / "results"


def timeit(fn, reps: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return sorted(out)


def quantiles(ts: list[float]) -> tuple[float, float, float]:
    q = torch.tensor(ts).quantile(torch.tensor([0.2, 0.5, 0.8])).tolist()
    return q[0], q[1], q[2]


def greedy_mask(w: torch.Tensor) -> torch.Tensor:
    from torch.sparse._semi_structured_conversions import _sparse_semi_structured_tile

    return _sparse_semi_structured_tile(w.abs().clone()) != 0  # it prunes by signed value: give it |w|


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--greedy-size", type=int, default=256, help="square size for torch's (slow) greedy tile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = torch.randn(args.size, args.size)
    wg = w[: args.greedy_size, : args.greedy_size].contiguous()
    scale = (args.size / args.greedy_size) ** 2
    rows = []
    for provider, fn, x, k in [
        ("magnitude_24", magnitude_mask_24, w, 1.0),
        ("transposable_exact_90", transposable_mask_24, w, 1.0),
        ("torch_greedy_tile", greedy_mask, wg, scale),
    ]:
        ts = timeit(lambda: fn(x), args.reps if k == 1.0 else 1)
        mask = fn(x)
        rows.append({"provider": provider, "time_s": [t * k for t in quantiles(ts)],
                     "retained": retained_fraction(x, mask), "extrapolated": k != 1.0,
                     "rows_ok": bool((mask.reshape(-1, 4).sum(-1) == 2).all()),
                     "cols_ok": bool((mask.t().reshape(-1, 4).sum(-1) == 2).all())})
    meta = {"device": f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)",
            "torch": torch.__version__, "git_sha": _git_sha(), "date": datetime.date.today().isoformat()}
    _write(rows, args, meta)


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _write(rows: list[dict], args: argparse.Namespace, meta: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    shape = f"{args.size}x{args.size}"
    with open(RESULTS / "masks_cpu.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["op", "provider", "shape", "dtype", "metric", "p20", "p50", "p80", *meta])
        for r in rows:
            p20, p50, p80 = r["time_s"]
            wr.writerow(["mask", r["provider"], shape, "float32", "time_s", p20, p50, p80, *meta.values()])
            wr.writerow(["mask", r["provider"], shape, "float32", "retained_abs_fraction", *[r["retained"]] * 3,
                         *meta.values()])
    lines = [f"# 2:4 mask speed and quality, {shape} float32 weight (randn)", "",
             f"{meta['device']}, torch {meta['torch']}, git {meta['git_sha']}, {meta['date']}.", "",
             "| mask | time (p50) | retained \\|w\\| | rows 2:4 | cols 2:4 |", "|---|---|---|---|---|"]
    for r in rows:
        t = f"{r['time_s'][1]:.3f} s" + (f" (extrapolated from {args.greedy_size}²)" if r["extrapolated"] else "")
        lines.append(f"| {r['provider']} | {t} | {r['retained']:.4f} | {r['rows_ok']} | {r['cols_ok']} |")
    (RESULTS / "masks_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
