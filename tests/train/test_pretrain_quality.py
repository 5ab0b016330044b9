"""benchmarks/pretrain_quality.py: the λ rule, the claim reading, and a smoke run of the whole table (resume, report
from the committed metrics alone)."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
from sparse24.train.corpus import TRAIN_SOURCES
from sparse24.train.seeds import Spread
from sparse24.train.sweep import pick_decay

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pretrain_quality.py"


@pytest.fixture(scope="module")
def pq():
    spec = importlib.util.spec_from_file_location("pretrain_quality", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_pick_decay_is_the_smallest_lambda_that_halves_the_flip_rate():
    lams = sorted(random.sample([1e-5, 3e-5, 6e-5, 1e-4, 2e-4, 6e-4, 2e-3], 5))
    base = random.uniform(0.01, 0.1)
    rows = [{"decay": 0.0, "flip_rate": base}] + [{"decay": lam, "flip_rate": base * random.uniform(0.1, 1.2)}
                                                  for lam in lams]
    random.shuffle(rows)
    lam, rule = pick_decay(rows)
    ok = [r["decay"] for r in rows if r["decay"] > 0 and r["flip_rate"] <= base / 2]  # brute force
    assert lam == (min(ok) if ok else max(lams))
    assert "½" in rule
    with pytest.raises(ValueError, match="λ = 0"):
        pick_decay([r for r in rows if r["decay"] > 0])


def test_verdict_reads_the_interval_against_the_margin(pq):
    m = random.uniform(-0.05, 0.05)
    assert pq.verdict(Spread(m - 0.3, 0.1, 0.2, 3), m) == "**supported**"
    assert pq.verdict(Spread(m + 0.3, 0.1, 0.2, 3), m) == "**not supported**"
    assert pq.verdict(Spread(m + 0.1, 0.1, 0.2, 3), m) == "inconclusive at this scale"
    assert pq.verdict(Spread(m, 0.0, 0.0, 3), m).startswith("inconclusive")  # equal is not lower
    assert "1 seed" in pq.verdict(Spread(m - 1, None, None, 1), m)


def test_smoke_table_resumes_and_rebuilds_from_committed_metrics(pq, tmp_path):
    runs, res = tmp_path / "runs", tmp_path / "results"
    argv = ["--scale", "smoke", "--recipes", "dense", "sste", "srste_decay_ft", "srste_nodecay_ft", "--lambdas", "0",
            "2e-4", "--runs", str(runs), "--results", str(res)]
    assert pq.main(argv) == 0
    data = json.loads((res / "pretrain_quality.json").read_text())
    rec = data["recipes"]
    assert set(rec) == {"dense", "sste", "srste_decay_ft", "srste_nodecay_ft"}
    assert all(r["seeds"] == [0, 1] for r in rec.values())
    # the mean and the paired gap are those of the per-seed numbers the runs wrote
    for name, r in rec.items():
        vals = [json.loads(line) for line in (runs / "smoke" / name / "seed1" / "metrics.jsonl").open()]
        assert r["final_val"]["1"] == vals[-1]["val_loss"]
        assert r["mean"] == pytest.approx(sum(r["final_val"].values()) / 2)
    d, s = rec["dense"]["final_val"], rec["sste"]["final_val"]
    assert rec["sste"]["gap_vs_dense_rel"]["mean"] == pytest.approx(sum((s[k] - d[k]) / d[k] for k in d) / 2)
    # the swept recipe used the picked λ; its variant kept λ = 0
    picked = data["meta"]["decay"]
    run = json.loads((runs / "smoke" / "srste_decay_ft" / "seed0" / "run.json").read_text())
    cfg = run["recipe"]["config"]
    assert cfg["decay"] == picked
    # the smoke corpus is a slice of every source of the olmo corpus, through the evaluation-overlap guard
    assert run["data"]["source"] == pq.SCALES["smoke"].data
    assert set(run["data"]["documents"]) == {*TRAIN_SOURCES, "dropped_overlap"}
    assert all(run["data"]["documents"][s] > 0 for s in TRAIN_SOURCES)
    cfg0 = json.loads((runs / "smoke" / "srste_nodecay_ft" / "seed0" / "run.json").read_text())["recipe"]["config"]
    assert cfg0["decay"] == 0.0
    # the step before the dense fine-tune was evaluated in every run
    probe = pq.probe_step(pq.SCALES["smoke"])
    rows = [json.loads(line) for line in (runs / "smoke" / "dense" / "seed0" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if r.get("val_loss_probe") is not None] == [probe]
    md = (res / "pretrain_quality.md").read_text()
    for png in ("loss", "train", "flips", "final"):
        assert (res / f"pretrain_quality_{png}.png").stat().st_size > 0
    # a second call finds every run done and trains nothing (same numbers); the report rebuilds without the runs
    stamp = (runs / "smoke" / "dense" / "seed0" / "done.json").read_text()
    assert pq.main(argv) == 0
    assert (runs / "smoke" / "dense" / "seed0" / "done.json").read_text() == stamp
    assert json.loads((res / "pretrain_quality.json").read_text())["recipes"]["sste"]["final_val"] == s
    shutil.rmtree(runs)
    assert pq.main(argv + ["--report-only"]) == 0
    again = (res / "pretrain_quality.md").read_text()
    assert again.split("## The papers'")[1] == md.split("## The papers'")[1]


def test_cuda_mode_refuses_without_a_gpu_and_names_the_fix(pq, tmp_path, monkeypatch):
    monkeypatch.setattr(pq.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        pq.main(["--device", "cuda", "--bf16", "--runs", str(tmp_path / "r"), "--results", str(tmp_path / "o")])
    plan = pq.make_plan(pq.parse(["--device", "cuda", "--bf16"]))
    # GPT-2 small width, bf16, and the tokens a run trains
    assert (plan.model, plan.precision, plan.device) == ("gpt2-124m", "bf16", "cuda")
    assert plan.tokens == plan.steps * plan.batch_size * plan.seq_len >= 5_000_000
    assert not (tmp_path / "r").exists()
