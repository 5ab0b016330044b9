"""Retraining quality: ``sparse24 retrain`` runs (AST and its ablations) against dense and their one-shot start.

Two parts. (1) What each run recorded (the perplexity curve ``retrain_curve.csv``, scored on the same windows as its
dense and start lines; ``sparse24_config.json``'s ``extra``: tokens, seconds, SLoRB parameters, settings, load).
(2) An evaluation pass over the finished runs and the two baselines (the dense model and the ``--init`` folder the
runs share): ``sparse24 eval`` in a child process per evaluation, perplexity at each ``--seqlens`` (its own
``--windows`` count) and zero-shot ``--tasks`` on the first ``--limit`` documents, with the standard error of every
accuracy. Each result is cached as ``<run>/evals/*.json`` (baselines: ``--work/dense``, ``--work/init-<name>``); a
rerun skips every evaluation whose file holds the same protocol. Writes ``benchmarks/results/retraining_quality.md``
(+ ``.json``, ``.csv`` with every curve, ``.png`` with them drawn together). The first run is the headline.

``--reuse`` an earlier results JSON (its run folders may be gone): its runs and baselines join the table as they were
recorded (curve, numbers, settings, evaluations), marked with that report's date, when its evaluation protocol is
this one; new runs must start from the same model (checked by perplexity, see :func:`merge_baselines`).

    sparse24 prune --method admm --quick --out out/admm-quick
    sparse24 retrain --init out/admm-quick --tokens 25600 --lr 1e-4 --eval-seq-len 512 --eval-windows 16 \\
        --eval-tokens 5120 --threads 1 --out out/ast-full
    sparse24 retrain ... --no-slorb --out out/ast-noslorb     # ablations: the same flags, one part off at a time
    sparse24 retrain ... --no-kl --no-slorb --out out/ast-nokl-noslorb   # (--no-decay, --mask-score magnitude)
    python benchmarks/retraining_quality.py "AST=out/ast-full" "no SLoRB=out/ast-noslorb" --threads 1
    python benchmarks/retraining_quality.py --reuse benchmarks/results/retraining_quality.json \\
        "no SLoRB=out/ast-noslorb" --ppl-only "no SLoRB"   # the committed rows + a new one, perplexity only

Gap closed = (ppl_start - ppl_retrained) / (ppl_start - ppl_dense); the issue's target is >= 50 % within 30 minutes
of CPU retraining on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _evals as E  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REUSE_KEYS = ("evaluate", "text", "seqlens", "windows", "tasks", "limit")  # the evaluation protocol a reuse must match
SAME = 1e-6  # relative: one model scored twice on the same windows agrees to float rounding; two models do not


def read_curve(folder: Path) -> tuple[list[tuple[int, int, float]], dict[str, float]]:
    """(tokens, step, perplexity) points and the named horizontal lines of ``retrain_curve.csv``."""
    with (folder / "retrain_curve.csv").open(encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    points = [(int(t), int(s), float(p)) for t, s, p in rows if not t.startswith("#")]
    lines = {t[2:]: float(p) for t, _, p in rows if t.startswith("#")}
    return points, lines


def summarize(label: str, folder: Path) -> dict[str, Any]:
    """One table row from a finished ``sparse24 retrain`` folder."""
    from sparse24.io import read_sparse24_config

    ex = read_sparse24_config(folder)["extra"]
    points, lines = read_curve(folder)
    dense, start, final = ex["baselines_ppl"]["dense"], ex["baselines_ppl"]["start"], points[-1][2]
    slorb = ex.get("slorb_params") or {"extra_params": 0, "layers": 0}
    params = ex.get("model_params") or _params(folder / "model.safetensors")
    return {"label": label, "folder": str(folder), "dense": dense, "start": start, "final": final,
            "closed": (start - final) / (start - dense) if start != dense else float("nan"),
            "tokens": ex["tokens_trained"], "steps": ex["final"]["step"], "train_s": ex["train_seconds_this_session"],
            "wall_s": ex.get("wall_seconds_this_session"), "tokens_per_s": ex.get("tokens_per_s"),
            "slorb": slorb, "model_params": params, "threads": ex.get("torch_threads"),
            "load": ex.get("loadavg_end"), "ast": ex["ast"], "lr": ex["train"]["lr"], "init": ex["init"],
            "eval": ex["eval"], "points": points, "lines": lines, "model_dir": ex["model_dir"],
            "falling": len(points) >= 3 and points[-1][2] < points[-2][2]}


def _params(path: Path) -> int:
    """Parameters stored in a safetensors file (shapes from its header; runs recorded before ``model_params``)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    """Every run's curve, with the dense and start lines of the first run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, r in enumerate(rows):  # other markers and dashes, so curves that coincide stay visible
        label = r["label"] + (f" (reused, {r['reused']})" if r.get("reused") else "")
        ax.plot([p[0] for p in r["points"]], [p[2] for p in r["points"]], marker="os^vDP"[i % 6], ms=7 - i % 4,
                ls="-" if i % 2 == 0 else "--", label=label)
    ax.axhline(rows[0]["dense"], color="k", ls="--", lw=1, label=f"dense {rows[0]['dense']:.2f}")
    ax.axhline(rows[0]["start"], color="gray", ls=":", lw=1, label=f"one-shot start {rows[0]['start']:.2f}")
    ev = rows[0]["eval"]
    ax.set(xlabel="retraining tokens", ylabel=f"perplexity ({ev['text']}, {ev['windows']} x {ev['seq_len']})",
           yscale="log", title="2:4 retraining of SmolLM2-135M on CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def evaluate(model: str, folder: Path, a: argparse.Namespace, tasks: str) -> dict[str, Any]:
    """Every evaluation of one model (``sparse24 eval`` children), each cached in ``folder``: perplexity at every
    ``--seqlens``, zero-shot ``tasks`` (comma-separated, '' for none)."""
    folder.mkdir(parents=True, exist_ok=True)
    ev: dict[str, Any] = {"model": model, "ppl": {}, "zeroshot": {}, "runs": {}}
    for seqlen, windows in zip(a.seqlens, a.windows):
        print(f"  ppl@{seqlen} of {model} (load {E.loadavg()})", flush=True)
        path = folder / f"ppl_{Path(a.text).stem}_{seqlen}.json"
        r = E.perplexity(model, a.text, seqlen, windows or None, a.threads, path)
        ev["runs"][f"ppl@{seqlen}"] = r.pop("run")
        r.pop("wall_s")
        ev["ppl"][str(seqlen)] = r
    for task in [t for t in tasks.split(",") if t]:  # one child per task: a rerun with more tasks runs only those
        print(f"  zero-shot {task} of {model} (load {E.loadavg()})", flush=True)
        r = E.zeroshot(model, task, a.limit or None, a.threads, folder / f"zeroshot_{task}.json")
        ev["zeroshot"][task], ev["runs"][task] = r["tasks"][task], r["run"]
    return ev


def baseline_models(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    """``{"dense": (label, folder), "start": (label, folder or None)}`` shared by every run; the start is None when
    it was pruned on the fly (``--init oneshot`` does not keep it)."""
    from sparse24.io import read_sparse24_config

    keys = {(r["model_dir"], r["init"]) for r in rows}
    if len(keys) > 1:
        raise SystemExit(f"the runs have different dense models or starts ({sorted(keys)}): one table compares runs "
                         "from one start; make one report per start (--out)")
    model_dir, init = keys.pop()
    start = None
    if Path(init).is_dir():
        rec = read_sparse24_config(init).get("extra", {})
        start = (f"one-shot start (`{Path(init).name}`: {rec.get('method', '?')}, "
                 f"{rec.get('prune_seconds', '?')} s to prune)", init)
    return {"dense": ("dense", model_dir), "start": start or (f"one-shot start ({init}, not kept)", None)}


def check_comparable(rows: list[dict[str, Any]]) -> None:
    """Refuse rows that cannot share one table: curves recorded on other windows, or starting from another dense or
    start perplexity than the headline's (another model; the same folder re-created scores the same)."""
    h = rows[0]
    for r in rows[1:]:
        if any(r["eval"].get(k) != h["eval"].get(k) for k in ("text", "seq_len", "windows")):
            raise SystemExit(f"{r['label']!r} recorded its curve on {r['eval']}, {h['label']!r} on {h['eval']}: one "
                             "table holds curves on the same windows (retrain with the same --eval-* flags)")
        for k in ("dense", "start"):
            if not math.isclose(r[k], h[k], rel_tol=SAME):
                raise SystemExit(f"{r['label']!r} starts its curve from {k} perplexity {r[k]:.8g}, {h['label']!r} "
                                 f"from {h[k]:.8g}: not the same {k} model, so not one table (make one report per "
                                 "start with --out, or retrain from the headline's start)")


def protocol_diff(old: dict[str, Any], a: argparse.Namespace) -> list[str]:
    """How a recorded evaluation protocol differs from this pass's (empty: a match; nothing to match without one)."""
    if not a.evaluate:
        return []
    return [f"{k} {old.get(k)!r} there, {getattr(a, k)!r} now" for k in REUSE_KEYS if old.get(k) != getattr(a, k)]


def report_date(path: Path, saved: dict[str, Any]) -> str:
    """When a results JSON was written: its ``written``; files from before that field, the .md's 'Written' line."""
    if saved.get("written"):
        return str(saved["written"])
    md = path.with_suffix(".md")
    m = re.search(r"^Written (\d{4}-\d{2}-\d{2})", md.read_text(encoding="utf-8"), re.M) if md.is_file() else None
    return m.group(1) if m else "an undated report"


def _mark(entry: dict[str, Any], date: str) -> None:
    entry.setdefault("reused", date)  # a row reused twice keeps the date it was evaluated
    for run in (entry.get("ev") or {}).get("runs", {}).values():
        if run:
            run.setdefault("reused", date)


def load_reuse(path: Path, a: argparse.Namespace,
               fresh: set[str]) -> tuple[list[dict[str, Any]], dict[str, Any], list[tuple[str, Path]]]:
    """From an earlier results JSON: the runs (not labelled in ``fresh``) and baselines taken as recorded, and the
    (label, folder) of its runs to evaluate again instead when its protocol differs. Refuses a file this script did
    not write, and a mismatch whose run folder is gone (it can be neither reused nor evaluated again)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"--reuse {path}: cannot read it ({e}); give a .json written by this script") from None
    if not isinstance(saved, dict) or not {"protocol", "baselines", "runs"} <= saved.keys():
        raise SystemExit(f"--reuse {path}: not a results JSON of benchmarks/retraining_quality.py (no protocol, "
                         "baselines and runs)")
    runs = [r for r in saved["runs"] if r["label"] not in fresh]
    diff = protocol_diff(saved["protocol"], a)
    if diff:
        why = f"--reuse {path}: not reused, its evaluation protocol differs ({'; '.join(diff)})"
        gone = [r for r in runs if not (Path(r["folder"]) / "retrain_curve.csv").is_file()]
        if gone:
            raise SystemExit(f"{why}; the folder of {gone[0]['label']!r} ({gone[0]['folder']}) is gone, so it cannot "
                             "be evaluated again: rerun with that file's protocol, or drop --reuse")
        print(f"{why}: its {len(runs)} run(s) are evaluated again as today", flush=True)
        return [], {}, [(r["label"], Path(r["folder"])) for r in runs]
    date = report_date(path, saved)
    for entry in [*runs, *saved["baselines"].values()]:
        _mark(entry, date)
    print(f"--reuse {path}: {len(runs)} run(s) and the baselines taken as recorded on {date} (same evaluation "
          "protocol, not evaluated again)", flush=True)
    return runs, saved["baselines"], []


def _start_cache(a: argparse.Namespace, model: str) -> Path:
    return a.work / f"init-{Path(model).name}"


def merge_baselines(fresh: list[dict[str, Any]], reused: dict[str, Any],
                    a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The dense and start rows. With reused ones and new runs, the new runs must share their dense model; their start
    may be another folder (the same prune re-created): it is the same start when it scores the reused start's
    perplexity at every seqlen (evaluated now, ppl only), and then keeps the reused zero-shot; else this refuses."""
    if not fresh:
        return reused
    base: dict[str, dict[str, Any]] = {k: {"label": v[0], "model": v[1]} for k, v in baseline_models(fresh).items()}
    if not reused:
        return base
    if base["dense"]["model"] != reused["dense"]["model"]:
        raise SystemExit(f"the new runs' dense model {base['dense']['model']} is not the reused one "
                         f"({reused['dense']['model']}): one table compares runs of one model; drop --reuse")
    base["dense"] = reused["dense"]
    old, new = reused["start"], base["start"]
    if new["model"] == old["model"]:
        base["start"] = old
    elif a.evaluate:
        if not new["model"]:
            raise SystemExit("the new runs' start was pruned on the fly and not kept, so it cannot be checked against "
                             "the reused start: retrain with --init FOLDER")
        ev = evaluate(new["model"], _start_cache(a, new["model"]), a, "")
        for s in a.seqlens:
            got, want = ev["ppl"][str(s)]["ppl"], old["ev"]["ppl"][str(s)]["ppl"]
            if not math.isclose(got, want, rel_tol=SAME):
                raise SystemExit(f"the new runs' start {new['model']} scores ppl@{s} {got:.8g}, the reused start "
                                 f"{old['model']} {want:.8g}: not the same start, so the reused rows cannot share this "
                                 "table (retrain from the start that report used, or drop --reuse)")
        zs_runs = {k: v for k, v in old["ev"]["runs"].items() if not k.startswith("ppl@")}
        new["ev"] = {**ev, "zeroshot": old["ev"]["zeroshot"], "runs": {**ev["runs"], **zs_runs}}
        new["same_as"] = {"model": old["model"], "reused": old["reused"]}
    return base


def shown(entry: dict[str, Any]) -> str:
    """A row's label with where its numbers come from when not all from this pass."""
    if entry.get("reused"):
        return f"{entry['label']} (reused: results of {entry['reused']})"
    if entry.get("same_as"):
        return f"{entry['label']} (ppl today = the reused start's; zero-shot reused: {entry['same_as']['reused']})"
    return entry["label"]


def gap(start: float, dense: float, value: float) -> float:
    """Share of the start -> dense perplexity gap closed."""
    return (start - value) / (start - dense) if start != dense else float("nan")


def _zs_cell(z: dict[str, Any] | None) -> str:
    if not z:
        return "-"
    cell = f"{z['acc']:.3f} ± {z['acc_stderr']:.3f}"
    return cell + (f" ({z['acc_norm']:.3f})" if "acc_norm" in z else "")


def eval_table(rows: list[dict[str, Any]], base: dict[str, dict[str, Any]], a: argparse.Namespace) -> list[str]:
    """The evaluation table: baselines and runs, perplexity + gap closed at each seqlen, zero-shot, cost."""
    tasks = [t for t in a.tasks.split(",") if t]
    head = (["model"] + [f"ppl@{s}" for s in a.seqlens] + [f"gap closed @{s}" for s in a.seqlens]
            + [f"{t} acc ± SE (norm)" for t in tasks] + ["tokens", "train s", "wall s", "extra params"])
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    d, st = base["dense"].get("ev"), base["start"].get("ev")

    def ppl(ev: dict[str, Any] | None, s: int) -> float:
        return ev["ppl"][str(s)]["ppl"] if ev else float("nan")

    entries = [(shown(base["dense"]), d, ["", "", "", ""], False, True),
               (shown(base["start"]), st, ["", "", "", "0"], False, False)]
    for r in rows:
        extra = r["slorb"]["extra_params"]
        entries.append((shown(r), r.get("ev"), [f"{r['tokens']:,}", f"{r['train_s']:.0f}",
                                                f"{r['wall_s'] or 'not recorded'}",
                                                f"{extra:,} ({extra / r['model_params']:.1%})"], True, False))
    for label, ev, cost, bold, dense in entries:
        cells = [f"**{label}**" if bold else label] + [f"{ppl(ev, s):.2f}" for s in a.seqlens]
        cells += ["" if dense else f"{gap(ppl(st, s), ppl(d, s), ppl(ev, s)):.1%}" for s in a.seqlens]
        cells += [_zs_cell((ev or {}).get("zeroshot", {}).get(t)) for t in tasks] + cost
        out.append("| " + " | ".join(cells) + " |")
    return out


def write(rows: list[dict[str, Any]], base: dict[str, dict[str, Any]], a: argparse.Namespace,
          notes: list[str]) -> None:
    import torch
    import transformers

    from sparse24.fileio import atomic_write_json, atomic_write_text

    head, ev = rows[0], rows[0]["eval"]
    out = a.out

    def pct(r: dict[str, Any]) -> str:
        return f"{r['slorb']['extra_params'] / r['model_params']:.1%}"

    table = ["| model | ppl | gap closed | tokens | steps | train s | wall s | tokens/s | SLoRB extra params |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| dense | {head['dense']:.2f} | | | | | | | |",
             f"| one-shot start (`{Path(head['init'].split()[0]).name}`) | {head['start']:.2f} | 0 % | | | | | | |"]
    for r in rows:
        table.append(f"| **{shown(r)}** | {r['final']:.2f} | {r['closed']:.1%} | {r['tokens']:,} | {r['steps']} | "
                     f"{r['train_s']:.0f} | {r['wall_s'] or 'not recorded'} | {r['tokens_per_s'] or 0:.0f} | "
                     f"{r['slorb']['extra_params']:,} ({pct(r)}) |")
    settings = [f"- {shown(r)}: `{json.dumps(r['ast'])}`, lr {r['lr']}, torch threads "
                f"{r['threads'] or 'not recorded'}, load (1/5/15 min) at the end {r['load'] or 'not recorded'}, "
                f"curve still falling at the end: {r['falling']}" for r in rows]
    met = head["closed"] >= 0.5 and head["train_s"] <= 1800
    windows = "; ".join(f"{w or 'all'} windows x {s} tokens" for s, w in zip(a.seqlens, a.windows))
    evals = []
    if a.evaluate:
        zs = (f"Zero-shot: lm-eval, the first {a.limit or 'all'} documents per task; acc ± its standard error "
              "sqrt(acc (1 - acc) / (n - 1)) (lm-eval's mean_stderr), acc_norm in brackets. " if a.tasks else "")
        cost = "; ".join(f"{name} {k} {v.get('wall_s', '?')} s ({v.get('load_before', '?').split()[0]} -> "
                         f"{v.get('load_after', '?').split()[0]}{', ' + v['reused'] if v.get('reused') else ''})"
                         for name, e in [("dense", base["dense"].get("ev")), ("start", base["start"].get("ev")),
                                         *[(r["label"], r.get("ev")) for r in rows]]
                         if e for k, v in e["runs"].items() if v)
        dates = sorted({e["reused"] for e in [*rows, *base.values()] if e.get("reused")})
        src = (f" Rows marked reused are taken as recorded from `{a.reuse.name}` (results of {', '.join(dates)}, "
               "the same evaluation protocol), not evaluated again." if dates else "")
        if a.ppl_only and a.tasks:
            src += f" Perplexity only (--ppl-only; '-': zero-shot not evaluated): {', '.join(a.ppl_only)}."
        evals = [f"## Evaluation of the finished models (`sparse24 eval`, {a.threads} torch thread(s))", "",
                 f"Perplexity on `{a.text}`, non-overlapping windows, the first {windows} (the same windows for "
                 f"every model). {zs}Gap closed = (start - model) / (start - dense) at that seqlen. Extra params: "
                 f"SLoRB's, as a share of the dense model's.{src}", "", *eval_table(rows, base, a), "",
                 "Evaluation cost (wall s of each `sparse24 eval` child; 1-min load before -> after; the date of a "
                 f"reused one): {cost}.", ""]
    lines = ["# Retraining quality: AST from a one-shot 2:4 model, SmolLM2-135M on CPU", "",
             f"Written {datetime.date.today()} on {platform.machine()}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}. Start: {base['start']['label']}.", "", *evals,
             f"## Perplexity curve (recorded by each run: `{ev['text']}`, the first {ev['windows']} windows of "
             f"{ev['seq_len']} tokens, the same for every point)", "", *table, "",
             "Gap closed = (ppl_start - ppl) / (ppl_start - ppl_dense); target >= 50 % within 30 min of CPU "
             f"retraining on 2 cores: **{'met' if met else 'not met'}** on the curve's windows "
             f"({head['closed']:.1%} at {head['tokens']:,} tokens, {head['train_s']:.0f} s of training).", "",
             "Curve: `retraining_quality.csv` / `retraining_quality.png`.", "", "Settings:", *settings, "",
             *notes, "", f"Command: `python benchmarks/retraining_quality.py {shlex.join(a.argv)}`"]
    atomic_write_text(out, "\n".join(lines) + "\n")
    protocol = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k not in ("runs", "argv")}
    atomic_write_json(out.with_suffix(".json"), {"protocol": protocol, "written": str(datetime.date.today()),
                                                 "baselines": base, "runs": rows})
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # labels may hold commas
    w.writerow(["run", "tokens", "step", "perplexity"])
    w.writerows([r["label"], t, s, p] for r in rows for t, s, p in r["points"])
    w.writerows([["# dense", "", "", head["dense"]], ["# one-shot start", "", "", head["start"]]])
    atomic_write_text(out.with_suffix(".csv"), buf.getvalue())
    plot(rows, out.with_suffix(".png"))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="LABEL=FOLDER of finished `sparse24 retrain` runs (the first is the "
                   "headline row; after the --reuse ones)")
    p.add_argument("--reuse", type=Path, help="an earlier results JSON of this script: its runs (first, in its "
                   "order) and baselines are taken as recorded, not evaluated again, when its evaluation protocol "
                   "(text, seqlens, windows, tasks, limit) is this one; else its runs are evaluated again from their "
                   "folders (refused when a folder is gone). A run given again by LABEL replaces the reused one. New "
                   "runs must start from the same model: a start in another folder is scored (ppl only) and must "
                   "equal the reused start's perplexity")
    p.add_argument("--out", type=Path, default=RESULTS / "retraining_quality.md")
    p.add_argument("--notes", type=Path, help="a hand-written markdown file appended to the report (the reading)")
    g = p.add_argument_group("evaluation pass (sparse24 eval children; results cached, a rerun skips finished ones)")
    g.add_argument("--no-eval", dest="evaluate", action="store_false", help="only the recorded curves (no evaluation)")
    g.add_argument("--text", default="boolq", help="perplexity text (default boolq)")
    g.add_argument("--seqlens", type=int, nargs="+", default=[512, 2048], help="perplexity windows (default 512 2048)")
    g.add_argument("--windows", type=int, nargs="+", default=[32, 4], help="windows scored per seqlen, 0: all "
                   "(default 32 4: 16k and 8k tokens; on 1 thread of 2 cores at load ~5, ~4.5 and ~2.5 min a model)")
    g.add_argument("--tasks", default="arc_easy,piqa,winogrande,hellaswag", help="zero-shot tasks, '' for none")
    g.add_argument("--limit", type=int, default=100, help="documents per task, 0: all (default 100)")
    g.add_argument("--ppl-only", nargs="+", default=[], metavar="LABEL", help="runs evaluated in this pass "
                   "without zero-shot (their cells show '-'); reused rows keep theirs")
    g.add_argument("--threads", type=int, default=1, help="torch threads of each evaluation (default 1)")
    g.add_argument("--work", type=Path, default=Path("out/retraining_quality"), help="where the baselines' "
                   "evaluations are cached (default out/retraining_quality)")
    a = p.parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else list(argv)
    if len(a.windows) != len(a.seqlens):
        p.error("--windows needs one count per --seqlens value")
    specs = []
    for spec in a.runs:
        label, sep, folder = spec.rpartition("=")
        if not sep or not (Path(folder) / "retrain_curve.csv").is_file():
            p.error(f"{spec!r}: give LABEL=FOLDER of a finished `sparse24 retrain --out FOLDER`")
        specs.append((label, Path(folder)))
    if not specs and not a.reuse:
        p.error("give LABEL=FOLDER runs, or --reuse an earlier results JSON")
    unknown = set(a.ppl_only) - {label for label, _ in specs}
    if unknown:
        p.error(f"--ppl-only {sorted(unknown)}: not the LABEL of a run given here")
    reused, reused_base, again = load_reuse(a.reuse, a, {lb for lb, _ in specs}) if a.reuse else ([], {}, [])
    fresh = [summarize(label, folder) for label, folder in again + specs]
    rows = reused + fresh
    check_comparable(rows)
    base = merge_baselines(fresh, reused_base, a)
    if a.evaluate:
        for key, b in base.items():
            if b["model"] and "ev" not in b:
                b["ev"] = evaluate(b["model"], a.work / "dense" if key == "dense" else _start_cache(a, b["model"]), a,
                                   a.tasks)
        for r in fresh:
            r["ev"] = evaluate(r["folder"], Path(r["folder"]) / "evals", a, "" if r["label"] in a.ppl_only else a.tasks)
    write(rows, base, a, [a.notes.read_text(encoding="utf-8").rstrip()] if a.notes else [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
