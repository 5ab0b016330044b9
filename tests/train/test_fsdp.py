"""FSDP2 (``fully_shard``: every weight sharded by output rows) on two CPU processes over gloo, launched as a user
would: ``accelerate launch --config_file train/accelerate/fsdp2.yaml``. One module fixture starts, at once, every
recipe on one process with the same seed and global batch (twice the micro-batches) and an FSDP2 run that the test
kills with SIGKILL; then one FSDP2 launch resumes the killed run (the first run of its processes) and trains every
recipe (two launches, not three: each costs seconds of start-up on two cores).

- without MVUE, FSDP2 and one process reach the same weights and S-STE β (float tolerance: gradients are summed in
  another order), exactly the same masks and flip rates, and the same exported HF folder;
- with MVUE every rank draws its own stream, yet the ranks' mask buffers agree and the run stays close;
- the killed-and-resumed run is bit-identical to the uninterrupted one (weights, masks, losses, flip rates).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sparse24.train.telemetry import read_jsonl

SCRIPT = Path(__file__).with_name("_fsdp_recipes.py")
CONFIG = Path(__file__).resolve().parents[2] / "train" / "accelerate" / "fsdp2.yaml"
RECIPES = ["dense", "srste_decay_ft", "sste", "ste"]  # deterministic: FSDP2 must match one process
MVUE = ["sste_mvue", "sste_mvue_fp8", "srste_mvue"]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate not installed")


def _launch(tmp: Path, out: Path, fsdp: bool, port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "SPARSE24_CACHE": str(tmp / f"cache-{out.name}"), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # a cache per launch: launches that overlap never build one cache together
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
                "--num_processes", "2", "--main_process_port", str(port)] if fsdp else [sys.executable]
    cmd = [*launcher, str(SCRIPT), str(out), "2" if fsdp else "4", *extra]  # same global batch
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait(proc: subprocess.Popen) -> None:
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    single = _launch(tmp, tmp / "single", False, 0)
    cut = _launch(tmp, tmp / "cut", True, 29542, "--only", "srste_mvue", "--slow-after", "3")
    deadline = time.time() + 240
    for line in cut.stdout:  # killed once step 3 is done: step-000002 is on disk, step-000004 is not
        if line.startswith("step=3") or time.time() > deadline:
            break
    os.killpg(cut.pid, signal.SIGKILL)
    cut.wait(timeout=60)
    killed = {"final": (tmp / "cut" / "srste_mvue" / "final").exists(),
              "ckpt": (tmp / "cut" / "srste_mvue" / "step-000002").is_dir()}
    _wait(_launch(tmp, tmp / "fsdp", True, 29541, "--cut", str(tmp / "cut")))  # resumes cut/, then every recipe
    _wait(single)
    return tmp, killed


def _close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{what}: {k}")
        else:
            assert torch.equal(a[k], b[k]), f"{what}: {k}"


@pytest.mark.parametrize("name", RECIPES)
def test_fsdp2_matches_one_process(runs, name):
    tmp, _ = runs
    a, b = tmp / "fsdp" / name, tmp / "single" / name
    assert json.loads((a / "world.json").read_text()) == {"world": 2, "type": "DistributedType.FSDP"}
    _close(load_file(a / "state.safetensors"), load_file(b / "state.safetensors"), "state")  # weights, β
    if name != "dense":
        m0, m1 = load_file(a / "masks-rank0.safetensors"), load_file(a / "masks-rank1.safetensors")
        mb = load_file(b / "masks-rank0.safetensors")
        assert len(m0) == 6 and all(torch.equal(m0[k], m1[k]) and torch.equal(m0[k], mb[k]) for k in m0)
    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3, 4]
    flips = [r.get("flip_rate") for r in ra]
    assert flips == [r.get("flip_rate") for r in rb]
    assert name == "dense" or max(f or 0 for f in flips) > 0  # the masks move: the comparison is not vacuous
    for x, y in zip(ra, rb):
        assert x["tokens"] == y["tokens"] and x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    if name != "dense":  # every optimizer step renews the key of a packed-W̃ cache (FSDP2 keeps weight versions)
        keys = {}
        for step, fqn, dense, *versions in json.loads((a / "cache-keys.json").read_text()):
            keys.setdefault(fqn, {}).setdefault(step, set()).add((dense, *versions))
        for fqn, per_step in keys.items():
            live = [v for s, v in sorted(per_step.items()) if not next(iter(v))[0]]  # sparse steps
            assert all(len(v) == 1 for v in live) and len({next(iter(v)) for v in live}) == len(live), fqn
    files = sorted(p.name for p in (a / "final").iterdir())
    assert files == sorted(p.name for p in (b / "final").iterdir())
    for f in files:
        if f.endswith(".safetensors"):
            _close(load_file(a / "final" / f), load_file(b / "final" / f), f)


@pytest.mark.parametrize("name", MVUE)
def test_fsdp2_mvue_ranks_draw_their_own_streams(runs, name):
    tmp, _ = runs
    a, b = tmp / "fsdp" / name, tmp / "single" / name
    m0, m1 = load_file(a / "masks-rank0.safetensors"), load_file(a / "masks-rank1.safetensors")
    assert all(torch.equal(m0[k], m1[k]) for k in m0)  # the replicated mask buffers agree across ranks
    s0, s1 = (json.loads((a / f"streams-rank{r}.json").read_text()) for r in (0, 1))
    assert len(s0) == 6 and len(set(s0.values()) | set(s1.values())) == 12  # 6 layers x 2 ranks, all distinct
    assert s0 == json.loads((b / "streams-rank0.json").read_text())  # rank 0 draws what one process draws
    wa, wb = load_file(a / "state.safetensors"), load_file(b / "state.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # other draws than one process ...
    la, lb = read_jsonl(a / "metrics.jsonl")[-1]["loss"], read_jsonl(b / "metrics.jsonl")[-1]["loss"]
    assert la == pytest.approx(lb, rel=0.02)  # ... of the same unbiased gradient


def test_fsdp2_kill9_resume_is_bit_identical(runs):
    tmp, killed = runs
    assert killed == {"final": False, "ckpt": True}
    ref, cut = tmp / "fsdp" / "srste_mvue", tmp / "cut" / "srste_mvue"
    for f in ("state.safetensors", "masks-rank0.safetensors", "masks-rank1.safetensors"):
        wa, wb = load_file(ref / f), load_file(cut / f)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f
    s0, s1 = (json.loads((cut / f"streams-rank{r}.json").read_text()) for r in (0, 1))
    assert len(set(s0.values()) | set(s1.values())) == 12  # the first run of a process draws per rank too
    ra, rb = read_jsonl(ref / "metrics.jsonl"), read_jsonl(cut / "metrics.jsonl")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    keys = ("loss", "grad_norm", "flip_rate", "flip_rate_init", "sad", "tokens", "dense")
    assert [[r.get(k) for k in keys] for r in ra] == [[r.get(k) for k in keys] for r in rb]
