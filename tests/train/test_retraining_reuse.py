"""``benchmarks/retraining_quality.py --reuse``: rows of an earlier report (written by the real writer from real
tiny ``sparse24 retrain`` runs) join a new report as recorded when the evaluation protocol matches, are evaluated
again or refused when it does not, and a new run's start must score what the reused start scored."""

from __future__ import annotations

import datetime
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from sparse24.cli import main as cli_main
from sparse24.texts import shipped_text


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "retraining_quality.py"
    spec = importlib.util.spec_from_file_location("retraining_quality_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny model; its magnitude prune, the same prune again in another folder, a Wanda prune (another start); two
    short retrain runs from the first start, one from the re-created start, one from the Wanda start."""
    from sparse24.train.data import train_bpe
    from sparse24.train.retrain import main as retrain_main
    from transformers import PreTrainedTokenizerFast

    from sparse24.demo import tiny_llama

    root = tmp_path_factory.mktemp("reuse")
    text = shipped_text()
    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe(text.split("\n\n"), 300))
    tiny_llama(2, 64, len(tok), seed=3).save_pretrained(root / "m")
    tok.save_pretrained(root / "m")
    (root / "text.txt").write_text(text)
    for name, method in (("p", "magnitude"), ("p2", "magnitude"), ("pw", "wanda")):
        argv = ["prune", "--model", str(root / "m"), "--method", method, "--out", str(root / name), "--no-progress"]
        if method == "wanda":
            argv += ["--calib", str(root / "text.txt"), "--nsamples", "4", "--seqlen", "16"]
        assert cli_main(argv) == 0
    for name, init, extra in (("a", "p", []), ("b", "p", ["--no-kl"]), ("c", "p2", ["--no-decay"]),
                              ("d", "pw", [])):
        assert retrain_main(["--model", str(root / "m"), "--data", str(root / "text.txt"), "--seq-len", "16",
                             "--batch-size", "2", "--no-slorb", "--eval-text", str(root / "text.txt"),
                             "--eval-windows", "2", "--eval-seq-len", "24", "--eval-tokens", "32", "--steps", "2",
                             "--init", str(root / init), "--out", str(root / name), "--no-progress", *extra]) == 0
    return root


def _report(bench, root: Path, out: str, *args: str, windows: str = "2") -> list[str]:
    return [*args, "--out", str(root / out / "q.md"), "--text", str(root / "text.txt"), "--seqlens", "24",
            "--windows", windows, "--tasks", "", "--work", str(root / out / "w")]


@pytest.fixture
def counted(monkeypatch):
    """Run each ``sparse24 eval`` child in process (the same argv) and record which models were evaluated."""
    models: list[str] = []

    def run(cmd, log):
        assert cmd[1:4] == ["-m", "sparse24", "eval"]
        models.append(Path(cmd[4]).name)
        assert cli_main(cmd[3:]) == 0
        log.write_text("")
        return {"wall_s": 0.0, "peak_rss_mb": 0}

    def use(bench):
        monkeypatch.setattr(bench.E, "run_child", run)
        return models

    return use


def _first_report(bench, runs: Path, counted, out: str) -> tuple[Path, dict]:
    """A report of run ``a`` from a copy of its folder, then the copy deleted (the committed-results situation)."""
    shutil.copytree(runs / "a", runs / f"{out}-a", ignore=shutil.ignore_patterns("evals"))  # no cached evals
    models = counted(bench)
    assert bench.main(_report(bench, runs, out, f"AST={runs / f'{out}-a'}")) == 0
    assert sorted(models) == sorted(["m", "p", f"{out}-a"])  # dense, start, run
    models.clear()
    shutil.rmtree(runs / f"{out}-a")
    return runs / out / "q.json", json.loads((runs / out / "q.json").read_text())


def test_matching_protocol_reuses_rows_and_checks_a_recreated_start(runs, counted):
    bench = _bench()
    path, first = _first_report(bench, runs, counted, "r1")
    today = str(datetime.date.today())
    assert first["written"] == today
    models = counted(bench)
    # a new run from the same prune re-created in another folder (p2): only it and its start's ppl are evaluated
    assert bench.main(_report(bench, runs, "r2", "--reuse", str(path), f"no decay={runs / 'c'}")) == 0
    assert sorted(models) == ["c", "p2"]
    second = json.loads((runs / "r2" / "q.json").read_text())
    (old,) = first["runs"]
    reused, new = second["runs"]
    assert reused["reused"] == today and {k: v for k, v in reused.items() if k != "reused"} == {
        k: v for k, v in old.items() if k != "ev"} | {"ev": _marked(old["ev"], today)}
    assert second["baselines"]["dense"]["ev"]["ppl"] == first["baselines"]["dense"]["ev"]["ppl"]
    start = second["baselines"]["start"]
    assert start["model"] == str(runs / "p2") and start["same_as"] == {"model": str(runs / "p"), "reused": today}
    assert start["ev"]["ppl"]["24"]["ppl"] == pytest.approx(first["baselines"]["start"]["ev"]["ppl"]["24"]["ppl"],
                                                             rel=1e-12)
    md = (runs / "r2" / "q.md").read_text()
    assert f"| **AST (reused: results of {today})** |" in md and "| **no decay** |" in md
    s, d = (second["baselines"][k]["ev"]["ppl"]["24"]["ppl"] for k in ("start", "dense"))
    got = new["ev"]["ppl"]["24"]["ppl"]
    assert f"| {(s - got) / (s - d):.1%} |" in md.split("## Perplexity curve")[0]  # gap vs the reused baselines
    assert len([r for r in (runs / "r2" / "q.csv").read_text().splitlines() if r.startswith(("AST,", "no decay,"))]) \
        == len(old["points"]) + len(new["points"])  # both curves
    # chained: the second report reused alone evaluates nothing and keeps the first date on the old row
    models.clear()
    assert bench.main(_report(bench, runs, "r3", "--reuse", str(runs / "r2" / "q.json"))) == 0
    third = json.loads((runs / "r3" / "q.json").read_text())
    assert models == [] and [r["reused"] for r in third["runs"]] == [today, today]
    assert third["runs"][0]["ev"] == reused["ev"]
    # a run given again under a reused label replaces it (evaluated as today; its start p is checked against p2)
    models.clear()
    assert bench.main(_report(bench, runs, "r4", "--reuse", str(runs / "r2" / "q.json"), f"AST={runs / 'a'}")) == 0
    labels = [r["label"] for r in json.loads((runs / "r4" / "q.json").read_text())["runs"]]
    assert sorted(models) == ["a", "p"] and labels == ["no decay", "AST"]


def _marked(ev: dict, date: str) -> dict:
    return {**ev, "runs": {k: {**v, "reused": date} for k, v in ev["runs"].items()}}


def test_mismatched_protocol_reevaluates_or_refuses(runs, counted, capsys):
    bench = _bench()
    path, _ = _first_report(bench, runs, counted, "m1")
    models = counted(bench)
    with pytest.raises(SystemExit, match=r"not reused, its evaluation protocol differs \(windows \[2\] there, \[3\] "
                                         r"now\).*is gone, so it cannot be evaluated again"):
        bench.main(_report(bench, runs, "m2", "--reuse", str(path), f"KL off={runs / 'b'}", windows="3"))
    assert models == [] and not (runs / "m2" / "q.md").exists()
    # the same mismatch with the run folder present: evaluated again from it, nothing marked reused
    shutil.copytree(runs / "a", runs / "m1-a", ignore=shutil.ignore_patterns("evals"))
    assert bench.main(_report(bench, runs, "m3", "--reuse", str(path), f"KL off={runs / 'b'}", windows="3")) == 0
    assert "not reused, its evaluation protocol differs" in capsys.readouterr().out
    assert sorted(models) == ["b", "m", "m1-a", "p"]
    saved = json.loads((runs / "m3" / "q.json").read_text())
    assert [r["label"] for r in saved["runs"]] == ["AST", "KL off"] and not any(r.get("reused") for r in saved["runs"])
    assert saved["runs"][0]["ev"]["ppl"]["24"]["windows"] == 3 and "(reused:" not in (runs / "m3" / "q.md").read_text()


def test_another_start_is_refused(runs, counted):
    bench = _bench()
    path, _ = _first_report(bench, runs, counted, "s1")
    with pytest.raises(SystemExit, match="not the same start"):
        bench.main(_report(bench, runs, "s2", "--reuse", str(path), f"wanda start={runs / 'd'}"))
    with pytest.raises(SystemExit, match="not a results JSON"):
        bench.main(_report(bench, runs, "s3", "--reuse", str(runs / "a" / "sparse24_config.json")))


def test_report_date_of_a_json_from_before_the_written_field(runs, counted):
    bench = _bench()
    path, saved = _first_report(bench, runs, counted, "d1")
    del saved["written"]
    assert bench.report_date(path, saved) == str(datetime.date.today())  # the .md's 'Written' line
    assert bench.report_date(runs / "nowhere.json", saved) == "an undated report"


def test_ppl_only_rows_skip_zero_shot(runs, counted, monkeypatch):
    bench = _bench()
    counted(bench)
    zs: list[str] = []

    def zeroshot(model, tasks, limit, threads, path):  # lm-eval itself is tested in tests/eval; here: who is asked
        zs.append(Path(model).name)
        return {"tasks": {t: {"acc": 0.5, "n": limit, "acc_stderr": 0.5} for t in tasks.split(",")}, "run": {}}

    monkeypatch.setattr(bench.E, "zeroshot", zeroshot)
    argv = [f"AST={runs / 'a'}", f"KL off={runs / 'b'}", "--out", str(runs / "z" / "q.md"), "--text",
            str(runs / "text.txt"), "--seqlens", "24", "--windows", "2", "--tasks", "winogrande", "--limit", "2",
            "--work", str(runs / "z" / "w"), "--ppl-only", "KL off"]
    with pytest.raises(SystemExit):  # a label that is no run given here
        bench.main([*argv[:-1], "KL of"])
    assert bench.main(argv) == 0
    assert sorted(zs) == ["a", "m", "p"]  # dense, start, AST: not "KL off" (perplexity only)
    saved = json.loads((runs / "z" / "q.json").read_text())
    assert [sorted(r["ev"]["zeroshot"]) for r in saved["runs"]] == [["winogrande"], []]
    b_row = next(line for line in (runs / "z" / "q.md").read_text().splitlines() if line.startswith("| **KL off**"))
    assert b_row.split(" | ")[3] == "-"  # model | ppl | gap | winogrande
