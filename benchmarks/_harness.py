"""Shared benchmark plumbing: timing quantiles, the environment stamp, long-format CSV and a console table.

CSV columns (one row per measurement, Liger's long format plus provenance):
``op, provider, shape, m, dtype, metric, p20, p50, p80, device, torch, triton, cusparselt, git_sha, date``.
TFLOPS are dense-equivalent (``2·M·N·K`` / time) for every provider, so a 2:4 speedup shows as higher TFLOPS.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["op", "provider", "shape", "m", "dtype", "metric", "p20", "p50", "p80", "device", "torch", "triton",
           "cusparselt", "git_sha", "date"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def bench(fn: Callable[[], object], device: str, smoke: bool = False) -> tuple[float, float, float]:
    """(p20, p50, p80) milliseconds. CUDA: ``triton.testing.do_bench`` (L2 flushed between runs); CPU: wall clock."""
    if device == "cuda":
        from triton.testing import do_bench

        q = do_bench(fn, warmup=5 if smoke else 10, rep=10 if smoke else 40, quantiles=[0.2, 0.5, 0.8])
        return float(q[0]), float(q[1]), float(q[2])
    if not smoke:
        fn()  # warm-up (smoke runs check the script, not the speed: no warm-up, two timed runs)
    ts = []
    for _ in range(2 if smoke else 10):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    q = torch.tensor(ts).quantile(torch.tensor([0.2, 0.5, 0.8])).tolist()
    return q[0], q[1], q[2]


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_stamp(device: str) -> dict[str, str]:
    """Device name and library versions for every row: numbers are only comparable with these attached."""
    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = "none"
    if device == "cuda":
        cc = torch.cuda.get_device_capability()
        name = f"{torch.cuda.get_device_name()} (sm{cc[0]}{cc[1]})"
        cslt = str(torch.backends.cusparselt.version()) if torch.backends.cusparselt.is_available() else "none"
    else:
        name = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
        cslt = "none"
    return {"device": name, "torch": torch.__version__, "triton": triton_v, "cusparselt": cslt,
            "git_sha": git_sha(), "date": datetime.date.today().isoformat()}


def row(op: str, provider: str, shape: str, m: int, dtype: str, metric: str, q: tuple[float, float, float],
        stamp: dict[str, str]) -> dict[str, object]:
    return {"op": op, "provider": provider, "shape": shape, "m": m, "dtype": dtype, "metric": metric,
            "p20": f"{q[0]:.6g}", "p50": f"{q[1]:.6g}", "p80": f"{q[2]:.6g}", **stamp}


def tflops(ms: tuple[float, float, float], flop: float) -> tuple[float, float, float]:
    """Time quantiles -> TFLOPS quantiles (p20 of time is p80 of throughput, so the order flips)."""
    return tuple(flop / (t * 1e-3) / 1e12 for t in (ms[2], ms[1], ms[0]))  # type: ignore[return-value]


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    """Write ``rows`` (replacing the file: one run per file, provenance in every row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


def print_table(rows: list[dict[str, object]], metric: str) -> None:
    sel = [r for r in rows if r["metric"] == metric]
    if not sel:
        return
    print(f"{'op':<16}{'provider':<18}{'shape':<24}{'m':>7}{'dtype':>6}  {metric} p50 (p20-p80)")
    for r in sel:
        print(f"{r['op']:<16}{r['provider']:<18}{r['shape']:<24}{r['m']:>7}{r['dtype']:>6}  "
              f"{r['p50']} ({r['p20']}-{r['p80']})")


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU (dense + Triton-interpreter providers): checks the script runs")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--shapes", nargs="*", default=None, help="shape ids from benchmarks/shapes.py (default all)")
    parser.add_argument("--tokens", nargs="*", type=int, default=None, help="M values (default shapes.TOKENS)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="folder for <op>_<dtype>_<device>.csv")


def device_for(args: argparse.Namespace) -> str:
    """cuda when present; --smoke without a GPU runs on the CPU through Triton's interpreter."""
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "cuda"
    if not args.smoke:
        raise SystemExit("no CUDA GPU: run with --smoke for the CPU check, or on a GPU machine")
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules are imported
    return "cpu"


def csv_path(args: argparse.Namespace, op: str, device: str) -> Path:
    """``<out-dir>/<op>_<dtype>_<device>.csv``: one file per run of one script."""
    return args.out_dir / f"{op}_{args.dtype}_{device}.csv"


def finish(args: argparse.Namespace, op: str, device: str, rows: list[dict[str, object]], metric: str) -> int:
    path = write_csv(csv_path(args, op, device), rows)
    print_table(rows, metric)
    print(f"wrote {path}")
    return 0


def main(doc: str | None, run: Callable[[argparse.Namespace], tuple[str, list[dict[str, object]]]], op: str,
         metric: str, argv: list[str] | None = None) -> int:
    """The shared ``main`` of every bench script: common flags → ``run(args)`` → CSV + table."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(ap)
    args = ap.parse_args(argv)
    device, rows = run(args)
    return finish(args, op, device, rows, metric)
