"""``sparse24 eval`` in a child process, for the quality benchmarks (pruning, retraining).

Each evaluation runs in its own process so its wall time and peak RSS (``os.wait4`` of that child alone) are its
own; its results JSON (numbers + protocol, written atomically by ``sparse24 eval``) doubles as the cache: a rerun
whose file holds the same protocol skips the evaluation (see :func:`cached`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_child(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a child to completion: its wall seconds, CPU seconds (user + system) and peak RSS in MB. Its output goes
    to ``log``; ``env`` is added to this process's environment."""
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return {"wall_s": round(time.time() - t0, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def loadavg() -> str:
    """The 1/5/15-minute load average, recorded with every timed number (shared cores)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def cached(path: Path, model: str | None = None, **want: Any) -> dict[str, Any] | None:
    """The ``sparse24 eval`` results in ``path`` when its recorded protocol has every ``want`` value and no file of the
    ``model`` folder (if it is one) is newer than them (a re-pruned model is evaluated again), else None."""
    if not path.is_file():
        return None
    folder = Path(model) if model else None
    if folder is not None and folder.is_dir():
        newest = max((f.stat().st_mtime for f in folder.iterdir() if f.is_file()), default=0.0)
        if newest > path.stat().st_mtime:
            return None
    res = json.loads(path.read_text(encoding="utf-8"))
    proto = res.get("protocol", {})
    return res if all(proto.get(k) == v for k, v in want.items()) else None


def _timed_eval(cmd: list[str], path: Path) -> dict[str, Any]:
    """Run one ``sparse24 eval`` child writing ``path``; its wall time, peak RSS and the load around it are kept in
    ``<path>.run.json`` so a cached result still reports them."""
    from sparse24.fileio import atomic_write_json

    before = loadavg()
    run = {**run_child(cmd, path.with_suffix(".log")), "load_before": before, "load_after": loadavg()}
    atomic_write_json(path.with_suffix(".run.json"), run)
    return run


def _run_record(path: Path) -> dict[str, Any]:
    side = path.with_suffix(".run.json")
    return json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}


def perplexity(model: str, text: str, seqlen: int, windows: int | None, threads: int, path: Path) -> dict[str, Any]:
    """``sparse24 eval MODEL --ppl TEXT --seqlen N --max-windows W`` into ``path`` (reused when its protocol matches):
    ``{"ppl", "windows", "seqlen", ..., "wall_s", "run"}`` (``run``: the child's wall time, RSS and load)."""
    want = {"texts": [text], "seqlen": seqlen, "max_windows": windows or None}
    res, wall = cached(path, model, **want), None
    if res is None:
        cmd = [sys.executable, "-m", "sparse24", "eval", model, "--ppl", text, "--seqlen", str(seqlen),
               "--threads", str(threads), "--out", str(path), "--no-progress", "--batch-size", "1"]
        cmd += ["--max-windows", str(windows)] if windows else []
        wall = _timed_eval(cmd, path)["wall_s"]
        res = cached(path, **want)
        if res is None:
            raise RuntimeError(f"sparse24 eval wrote {path} with another protocol than {want}")
    return {**res["perplexity"][text], "wall_s": wall, "run": _run_record(path)}


def zeroshot(model: str, tasks: str, limit: int | None, threads: int, path: Path) -> dict[str, Any]:
    """``sparse24 eval MODEL --ppl none --tasks TASKS --limit N`` into ``path`` (reused when its protocol matches):
    ``{"tasks": {task: {"acc", "acc_norm", "n", "acc_stderr", "acc_norm_stderr"}}, "wall_s", "run"}``."""
    names = [t for t in tasks.split(",") if t]
    res, wall = cached(path, model, texts=[], limit=limit or None), None
    if res is not None and sorted(res["protocol"]["tasks"]) != sorted(names):
        res = None
    if res is None:
        cmd = [sys.executable, "-m", "sparse24", "eval", model, "--ppl", "none", "--tasks", tasks,
               "--threads", str(threads), "--out", str(path), "--no-progress"]
        cmd += ["--limit", str(limit)] if limit else []
        wall = _timed_eval(cmd, path)["wall_s"]
        res = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for task in names:
        r = dict(res["zeroshot"][task])
        for metric in ("acc", "acc_norm"):
            if metric in r:
                r[f"{metric}_stderr"] = acc_stderr(r[metric], r["n"])
        out[task] = r
    return {"tasks": out, "wall_s": wall, "run": _run_record(path)}


def acc_stderr(acc: float, n: int) -> float:
    """Standard error of an accuracy over ``n`` documents scored 0 or 1: the sample standard deviation over
    sqrt(n), i.e. sqrt(acc (1 - acc) / (n - 1)) (lm-eval's ``mean_stderr``, which ``sparse24 eval`` does not
    record because it runs lm-eval without bootstrap)."""
    if n < 2:
        return float("nan")
    return math.sqrt(acc * (1 - acc) / (n - 1))
