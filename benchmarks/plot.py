"""Speedup vs M plots from the benchmark CSVs, one PNG per (op, dtype), one panel per shape.

    python benchmarks/plot.py benchmarks/results/gemm_cuda.csv benchmarks/results/linear_cuda.csv

Speedup = baseline p50 time / provider p50 time (baseline: ``dense`` for gemm, ``nn.Linear`` for linear). The
crossover M (the smallest measured M from which a provider stays >= 1x) is marked with a dashed line, because it is
the number the ``auto`` backend's ``SPARSE24_MIN_TOKENS`` should be set to.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

BASELINES = ("dense", "nn.Linear")


def load(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r["metric"] == "ms"]


def speedups(rows: list[dict[str, str]]) -> dict[tuple[str, str, str], dict[str, list[tuple[int, float]]]]:
    """{(op, dtype, shape): {provider: [(m, speedup), ...]}} against the baseline at the same M."""
    base: dict[tuple, float] = {}
    for r in rows:
        if r["provider"] in BASELINES:
            base[(r["op"], r["dtype"], r["shape"], int(r["m"]))] = float(r["p50"])
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["op"], r["dtype"], r["shape"], int(r["m"]))
        if r["provider"] in BASELINES or key not in base:
            continue
        out[key[:3]][r["provider"]].append((key[3], base[key] / float(r["p50"])))
    return out


def crossover(points: list[tuple[int, float]]) -> int | None:
    """Smallest M from which the speedup stays >= 1 for every larger measured M (None if never)."""
    pts = sorted(points)
    for i, (m, _) in enumerate(pts):
        if all(s >= 1.0 for _, s in pts[i:]):
            return m
    return None


def plot(data, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_fig: dict = defaultdict(dict)
    for (op, dtype, shape), provs in data.items():
        by_fig[(op, dtype)][shape] = provs
    written = []
    for (op, dtype), panels in sorted(by_fig.items()):
        n = len(panels)
        cols = min(3, n)
        fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5 * cols, 3.6 * math.ceil(n / cols)),
                                 squeeze=False)
        for ax, (shape, provs) in zip(axes.flat, sorted(panels.items())):
            for provider, pts in sorted(provs.items()):
                pts = sorted(pts)
                line, = ax.plot([m for m, _ in pts], [s for _, s in pts], marker="o", label=provider)
                cm = crossover(pts)
                if cm is not None:
                    ax.axvline(cm, color=line.get_color(), linestyle="--", linewidth=0.8)
            ax.axhline(1.0, color="black", linewidth=0.6)
            ax.set_xscale("log", base=2)
            ax.set_title(shape, fontsize=9)
            ax.set_xlabel("M (tokens)")
            ax.set_ylabel("speedup vs dense")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"{op} {dtype}: speedup vs M (dashed: crossover M)")
        fig.tight_layout()
        path = out_dir / f"{op}_{dtype}_speedup.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", type=Path, help="CSV files written by bench_gemm.py / bench_linear.py")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the PNGs go (default: next to the first CSV)")
    args = ap.parse_args(argv)
    rows = [r for p in args.csv for r in load(p)]
    data = speedups(rows)
    if not data:
        print("nothing to plot: no provider rows with a matching baseline row")
        return 1
    out_dir = args.out_dir or args.csv[0].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for (op, dtype, shape), provs in sorted(data.items()):
        for provider, pts in sorted(provs.items()):
            print(f"{op:<16}{dtype:<6}{shape:<24}{provider:<18} crossover M = {crossover(pts)}")
    for path in plot(data, out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
