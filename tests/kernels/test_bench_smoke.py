"""The benchmark scripts run end to end with --smoke (CPU: contract twins, Triton interpreter): they cannot rot."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import plot
from sparse24.cli import main as cli_main

COLUMNS = "op,provider,shape,m,dtype,metric,p20,p50,p80,device,torch,triton,cusparselt,git_sha,date".split(",")
ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_bench_cli_smoke_writes_csvs_and_plots(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: one thread is several times faster on a shared CPU
    try:
        assert cli_main(["bench", "all", "--smoke", "--out-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # smoke runs compiled on a GPU machine
    files = {p.name for p in tmp_path.iterdir()}
    assert {f"{op}_bf16_{dev}.csv" for op in ("kernels", "gemm", "linear", "block", "generate")} <= files
    rows = _rows(tmp_path / f"gemm_bf16_{dev}.csv")
    assert list(rows[0]) == COLUMNS and all(r["device"] and r["git_sha"] and r["date"] for r in rows)
    if dev == "cpu":
        assert {r["provider"] for r in rows} == {"dense", "cusparselt_contract", "cusparselt_fp8_contract",
                                                 "dense_fp8_contract"}
    assert all(float(r["p20"]) <= float(r["p50"]) <= float(r["p80"]) for r in rows)
    ops = {r["op"] for r in _rows(tmp_path / f"kernels_bf16_{dev}.csv")}
    assert {"copy", "mask24", "transposable_mask", "mvue", "pack_cutlass", "fp8_cast", "soft_threshold"} <= ops
    linear = {r["provider"] for r in _rows(tmp_path / f"linear_bf16_{dev}.csv")}
    assert "nn.Linear" in linear and any(p.endswith("/step") for p in linear) and any("mvue" in p for p in linear)
    assert {r["provider"] for r in _rows(tmp_path / f"block_bf16_{dev}.csv")} == {"dense", "srste-t", "sste",
                                                                                 "sste-mvue"}
    gen = _rows(tmp_path / f"generate_bf16_{dev}.csv")
    want = {("dense", "prefill_tok_s"), ("sparse24-auto", "decode_tok_s"), ("sparse24-auto", "peak_MB")}
    assert {(r["provider"], r["metric"]) for r in gen} >= want
    assert all(float(r["p50"]) > 0 for r in gen if r["metric"] != "peak_MB")
    assert plot.main([str(tmp_path / f"gemm_bf16_{dev}.csv"), str(tmp_path / f"linear_bf16_{dev}.csv"),
                      "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "gemm_bf16_speedup.png").stat().st_size > 1000


def test_run_gpu_sh_smoke(tmp_path):
    """The GPU run script itself, every stage on the CPU (~15 s on two free cores): CI proves it runs."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # tiny shapes: one thread is faster
    res = subprocess.run(["bash", "benchmarks/run_gpu.sh", "--smoke", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    stages = _rows(tmp_path / "stages.csv")
    assert [s["stage"] for s in stages] == ["environment", "kernels", "gemm_bf16", "gemm_fp16", "linear", "block",
                                            "generate", "plot"]
    assert all(s["rc"] == "0" for s in stages), stages
    assert (tmp_path / "gemm_bf16_speedup.png").exists() and (tmp_path / "run_gpu.log").exists()


def test_crossover_rule():
    assert plot.crossover([(1, 0.5), (16, 1.1), (64, 0.9), (256, 1.2), (1024, 1.3)]) == 256
    assert plot.crossover([(1, 0.5), (16, 0.9)]) is None
