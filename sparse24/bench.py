"""``sparse24 bench``: run the benchmarks of ``benchmarks/`` (source checkout): kernels, GEMMs, SparseLinear per
method, a training step, and inference (prefill/decode).

    sparse24 bench kernels --smoke          # CPU check through Triton's interpreter (seconds)
    sparse24 bench gemm --shapes llama3-8b-mlp-up --tokens 16 4096
    sparse24 bench generate                 # GPU: prefill/decode tokens/s and peak memory, dense vs 2:4
    sparse24 bench all                      # everything; CSVs in benchmarks/results/ (or --out-dir)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SUITES = ("kernels", "gemm", "linear", "block", "generate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=(*SUITES, "all"), help="which benchmark to run")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (Triton interpreter)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--shapes", nargs="*", default=None, help="shape ids from benchmarks/shapes.py")
    parser.add_argument("--tokens", nargs="*", type=int, default=None, help="M values (tokens per GEMM)")
    parser.add_argument("--out-dir", type=Path, default=None, help="CSV folder (default benchmarks/results)")


def _benchmarks_root() -> Path:
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "_harness.py").exists():
        raise FileNotFoundError(
            "the benchmarks/ folder is not next to this install; run `sparse24 bench` from a source checkout "
            "(pip install -e .)"
        )
    return root


def run(args: argparse.Namespace) -> int:
    import torch

    if args.smoke and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    root = str(_benchmarks_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    import importlib

    argv = ["--dtype", args.dtype] + (["--smoke"] if args.smoke else [])
    if args.shapes:
        argv += ["--shapes", *args.shapes]
    if args.tokens:
        argv += ["--tokens", *map(str, args.tokens)]
    if args.out_dir:
        argv += ["--out-dir", str(args.out_dir)]
    for suite in SUITES if args.suite == "all" else (args.suite,):
        rc = importlib.import_module(f"benchmarks.bench_{suite}").main(argv)
        if rc:
            return rc
    return 0
