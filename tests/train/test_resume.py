"""A run killed with SIGKILL and resumed with ``--resume auto`` logs exactly the losses of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sparse24.train.telemetry import read_jsonl

SCRIPT = Path(__file__).with_name("_train_script.py")
STEPS = 20
KEYS = ("step", "loss", "lr", "grad_norm", "tokens", "dense", "flip_rate", "flip_rate_init", "sad", "val_loss")


def _env(tmp_path):
    return {**os.environ, "SPARSE24_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": ""}


def _rows(out):
    return [{k: r.get(k) for k in KEYS} for r in read_jsonl(out / "metrics.jsonl")]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    env = _env(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    # one process trains the uninterrupted run into full/ first, then the run that is killed (a process start less)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(killed), str(STEPS), "--slow-after", "9",
                             "--reference", str(full)], env=env)
    deadline = time.time() + 120
    while not (killed / "step-000008").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.6)  # a step or so past the checkpoint: the log holds rows the resume must drop
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert (killed / "step-000008").exists() and not (killed / f"step-{STEPS:06d}").exists()
    assert len(read_jsonl(killed / "metrics.jsonl")) < STEPS
    res = subprocess.run([sys.executable, str(SCRIPT), str(killed), str(STEPS)], env=env, check=True, timeout=180,
                         capture_output=True, text=True)
    first = int(res.stdout.split("first_step=")[1].split()[0])
    assert first >= 9 and (first - 1) % 4 == 0  # continued after a checkpoint, not from scratch
    a, b = _rows(full), _rows(killed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert a == b  # bit-exact: floats compared with ==
    assert any(r["flip_rate"] for r in a) and a[-1]["dense"] and not a[0]["dense"]


def test_resume_rejects_non_checkpoint(tmp_path):
    from sparse24.train.checkpoint import resolve_resume

    with pytest.raises(FileNotFoundError, match="--resume"):
        resolve_resume(tmp_path, tmp_path)
    assert resolve_resume("auto", tmp_path / "nothing") is None
