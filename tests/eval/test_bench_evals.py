"""``benchmarks/_evals.py``: the quality benchmarks' ``sparse24 eval`` children, their cache and the accuracy
standard errors, against lm-eval's own formula and the real ``sparse24 eval`` writer (run in-process here)."""

from __future__ import annotations

import json
import random

import pytest

from benchmarks import _evals as E
from sparse24.cli import main


def _in_process(calls: list):
    def run(cmd, log):  # the same argv as the child would get, run here (seconds instead of a process start)
        assert cmd[1:4] == ["-m", "sparse24", "eval"]
        calls.append(cmd)
        assert main(cmd[3:]) == 0
        log.write_text("")
        return {"wall_s": 0.0, "peak_rss_mb": 0}

    return run


def test_acc_stderr_is_lm_evals_mean_stderr():
    from lm_eval.api.metrics import mean_stderr

    for _ in range(20):
        n = random.randint(2, 300)
        docs = [random.random() < random.random() for _ in range(n)]  # 0/1 per document
        assert E.acc_stderr(sum(docs) / n, n) == pytest.approx(mean_stderr([float(d) for d in docs]), rel=1e-9)
    assert E.acc_stderr(1.0, 1) != E.acc_stderr(1.0, 1)  # one document: no standard error (nan)


def test_zeroshot_runs_once_per_protocol_and_adds_standard_errors(tiny_model_dir, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(E, "run_child", _in_process(calls))
    path = tmp_path / "zs.json"
    got = E.zeroshot(str(tiny_model_dir), "arc_easy,winogrande", 3, 1, path)
    written = json.loads(path.read_text())["zeroshot"]
    assert len(calls) == 1 and "--limit" in calls[0] and calls[0][calls[0].index("--limit") + 1] == "3"
    for task in ("arc_easy", "winogrande"):
        r = got["tasks"][task]
        assert r["n"] == 3 and r["acc"] == written[task]["acc"]
        k = round(r["acc"] * 3)
        assert r["acc"] == pytest.approx(k / 3)  # a share of 0/1 documents, so the formula applies
        assert r["acc_stderr"] == pytest.approx(((k / 3) * (1 - k / 3) / 2) ** 0.5)
    assert "acc_norm_stderr" in got["tasks"]["arc_easy"] and "acc_norm" not in got["tasks"]["winogrande"]
    assert E.zeroshot(str(tiny_model_dir), "winogrande,arc_easy", 3, 1, path)["tasks"] == got["tasks"]
    assert len(calls) == 1  # cached: same tasks and limit
    E.zeroshot(str(tiny_model_dir), "arc_easy", 4, 1, path)
    assert len(calls) == 2  # another limit runs again


def test_perplexity_cache_follows_the_protocol(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse24.perplexity import perplexity
    from sparse24.texts import shipped_text, tokenize_text

    calls: list = []
    monkeypatch.setattr(E, "run_child", _in_process(calls))
    path, text = tmp_path / "ppl.json", tmp_path / "t.txt"
    text.write_text(shipped_text()[:20000])
    got = E.perplexity(str(tiny_model_dir), str(text), 16, 3, 1, path)
    ids = tokenize_text(AutoTokenizer.from_pretrained(tiny_model_dir), text.read_text())
    ref = perplexity(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ids, 16, max_windows=3)["ppl"]
    assert got["ppl"] == pytest.approx(ref, rel=1e-6) and got["windows"] == 3 and got["run"]["wall_s"] == 0.0
    assert E.perplexity(str(tiny_model_dir), str(text), 16, 3, 1, path)["ppl"] == got["ppl"] and len(calls) == 1
    E.perplexity(str(tiny_model_dir), str(text), 16, 4, 1, path)
    E.perplexity(str(tiny_model_dir), str(text), 8, 4, 1, path)
    assert len(calls) == 3  # other windows, other seqlen: evaluated again


def test_run_child_reports_its_own_cpu_time_and_passes_env(tmp_path):
    import sys

    busy = ("import os, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            "print(os.environ['S24_PROBE'])")
    log = tmp_path / "c.log"
    got = E.run_child([sys.executable, "-c", busy], log, env={"S24_PROBE": "seen"})
    assert 0.3 <= got["cpu_s"] <= got["wall_s"] + 0.1 and got["peak_rss_mb"] > 0
    assert log.read_text().strip() == "seen"
    with pytest.raises(RuntimeError, match="rc 3"):
        E.run_child([sys.executable, "-c", "raise SystemExit(3)"], log)


def test_pruning_table_targets_follow_the_rows():
    """The gap lines of pruning_quality.py: ratios and the share of the default -> dense gap, from fresh numbers."""
    import argparse

    from benchmarks import pruning_quality as Q

    rnd = random.Random()
    ppl = {n: rnd.uniform(lo, hi) for n, lo, hi in (("dense", 15, 20), ("admm", 50, 70), ("armor-5%", 30, 50),
                                                     ("lowrank-5%", 30, 50), ("sparsegpt", 70, 90),
                                                     ("llmc-sparsegpt", 70, 90))}
    rows = {n: {"ppl@512": {"ppl": p}, "prune_s": rnd.uniform(10, 99), "peak_rss_mb": rnd.uniform(900, 2000)}
            for n, p in ppl.items()}
    rows["armor-5%"]["armor_params"] = {"overhead": 0.036, "armor_params": 4.8e6}  # the old rows' key
    rows["lowrank-5%"]["extra_params"] = {"overhead": 0.0499, "extra_params": 6.7e6}
    lines = "\n".join(Q.gap_lines(rows, argparse.Namespace(seqlens=[512])))
    low = 100 * (ppl["admm"] - ppl["lowrank-5%"]) / (ppl["admm"] - ppl["dense"])
    assert f"- lowrank-5% (+4.99 % params), seqlen 512: (admm {ppl['admm']:.2f} − lowrank-5% " in lines
    assert f"**{low:.1f} %** of the gap" in lines
    assert f"**{100 * (ppl['admm'] / ppl['llmc-sparsegpt'] - 1):+.1f} %**" in lines
    gap = 100 * (ppl["admm"] - ppl["armor-5%"]) / (ppl["admm"] - ppl["dense"])
    assert f"**{gap:.1f} %** of the gap" in lines and "+3.60 % params" in lines
    t = rows["sparsegpt"]["prune_s"] / rows["llmc-sparsegpt"]["prune_s"]
    assert f"prune s **{t:.2f}x**" in lines


def test_cached_results_of_a_rewritten_model_are_stale(tiny_model_dir, tmp_path, monkeypatch):
    """A model folder written after its evaluation (a re-pruned row) is evaluated again, perplexity and zero-shot."""
    import os
    import shutil

    calls: list = []
    monkeypatch.setattr(E, "run_child", _in_process(calls))
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    text = tmp_path / "t.txt"
    text.write_text((tiny_model_dir / "calib.txt").read_text()[:20000])
    E.perplexity(str(model), str(text), 16, 2, 1, tmp_path / "ppl.json")
    E.zeroshot(str(model), "arc_easy", 2, 1, tmp_path / "zs.json")
    E.perplexity(str(model), str(text), 16, 2, 1, tmp_path / "ppl.json")
    E.zeroshot(str(model), "arc_easy", 2, 1, tmp_path / "zs.json")
    assert len(calls) == 2  # both cached
    later = (tmp_path / "zs.json").stat().st_mtime + 5
    os.utime(model / "config.json", (later, later))  # the folder was written again
    E.perplexity(str(model), str(text), 16, 2, 1, tmp_path / "ppl.json")
    E.zeroshot(str(model), "arc_easy", 2, 1, tmp_path / "zs.json")
    assert len(calls) == 4
