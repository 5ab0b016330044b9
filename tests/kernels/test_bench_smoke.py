"""The benchmark scripts run end to end in --smoke mode (CPU, Triton interpreter), so they cannot rot."""

from __future__ import annotations

import csv

import torch

from benchmarks import plot
from sparse24.cli import main as cli_main

COLUMNS = "op,provider,shape,m,dtype,metric,p20,p50,p80,device,torch,triton,cusparselt,git_sha,date".split(",")


def test_bench_cli_smoke_writes_csvs_and_plots(tmp_path, capsys):
    assert cli_main(["bench", "all", "--smoke", "--out-dir", str(tmp_path)]) == 0
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # smoke runs compiled on a GPU machine
    files = {p.name for p in tmp_path.iterdir()}
    assert {f"kernels_{dev}.csv", f"gemm_{dev}.csv", f"linear_{dev}.csv"} <= files
    with (tmp_path / f"gemm_{dev}.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert {r["provider"] for r in rows} == {"dense", "triton"}
    assert all(float(r["p20"]) <= float(r["p50"]) <= float(r["p80"]) for r in rows)
    with (tmp_path / f"kernels_{dev}.csv").open() as f:
        ops = {r["op"] for r in csv.DictReader(f)}
    assert {"copy", "mask24", "transposable_mask", "mvue", "pack_cutlass", "fp8_cast"} <= ops
    assert plot.main([str(tmp_path / f"gemm_{dev}.csv"), str(tmp_path / f"linear_{dev}.csv"),
                      "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "gemm_bf16_speedup.png").stat().st_size > 1000


def test_crossover_rule():
    assert plot.crossover([(1, 0.5), (16, 1.1), (64, 0.9), (256, 1.2), (1024, 1.3)]) == 256
    assert plot.crossover([(1, 0.5), (16, 0.9)]) is None
