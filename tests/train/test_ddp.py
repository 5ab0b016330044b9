"""Two CPU processes under ``accelerate launch`` (torchrun + gloo): same masks and weights on both ranks, the loss
goes down, and the checkpoint holds both ranks' RNG states.

accelerate 1.x sends ``--cpu --num_processes 2`` to ``mpirun`` (needs an MPI hostfile); ``--multi_gpu`` on a machine
without a GPU starts the same two gloo processes through torchrun, so that is what runs here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sparse24.train.telemetry import read_jsonl

SCRIPT = Path(__file__).with_name("_train_script.py")


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate not installed")
def test_two_process_cpu_run(tmp_path):
    script = Path(sys.executable).parent / "accelerate"  # this interpreter's launcher (the module if no script)
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    env = {**os.environ, "SPARSE24_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "ddp"
    cmd = [*launcher, *(["launch"] if script.exists() else []),
           "--num_processes", "2", "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29533", str(SCRIPT), str(out), "8", "--dump-masks"]
    subprocess.run(cmd, env=env, check=True, timeout=240)
    m0, m1 = load_file(out / "masks-rank0.safetensors"), load_file(out / "masks-rank1.safetensors")
    assert m0.keys() == m1.keys() and len(m0) == 6
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    p0, p1 = load_file(out / "params-rank0.safetensors"), load_file(out / "params-rank1.safetensors")
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["tokens"] == 8 * 2 * 2 * 4 * 32  # steps x processes x grad_accum x batch x seq
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])
    from sparse24.train.checkpoint import read_checkpoint

    ckpt = read_checkpoint(out / "step-000008")
    assert ckpt.meta["world_size"] == 2 and len(ckpt.meta["rng"]) == 2
    assert {f"rank{r}/torch_rng" for r in (0, 1)} <= set(ckpt.tensors)  # both ranks' RNG states
