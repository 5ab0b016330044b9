"""Retraining quality: ``sparse24 retrain`` runs (AST and its ablations) against dense and their one-shot start.

Two parts. (1) What each run recorded (the perplexity curve ``retrain_curve.csv``, scored on the same windows as its
dense and start lines; ``sparse24_config.json``'s ``extra``: tokens, seconds, SLoRB parameters, settings, load).
(2) An evaluation pass over the finished runs and the two baselines (the dense model and the ``--init`` folder the
runs share): ``sparse24 eval`` in a child process per evaluation, perplexity at each ``--seqlens`` (its own
``--windows`` count) and zero-shot ``--tasks`` on the first ``--limit`` documents, with the standard error of every
accuracy. Each result is cached as ``<run>/evals/*.json`` (baselines: ``--work/dense``, ``--work/init-<name>``); a
rerun skips every evaluation whose file holds the same protocol. Writes ``benchmarks/results/retraining_quality.md``
(+ ``.json``, ``.csv`` with every curve, ``.png`` with them drawn together). The first run is the headline.

    sparse24 prune --method admm --quick --out out/admm-quick
    sparse24 retrain --init out/admm-quick --tokens 25600 --lr 1e-4 --eval-seq-len 512 --eval-windows 16 \\
        --eval-tokens 5120 --threads 1 --out out/ast-full
    sparse24 retrain ... --no-slorb --out out/ast-noslorb
    python benchmarks/retraining_quality.py "AST=out/ast-full" "AST without SLoRB=out/ast-noslorb" --threads 1

Gap closed = (ppl_start - ppl_retrained) / (ppl_start - ppl_dense); the issue's target is >= 50 % within 30 minutes
of CPU retraining on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _evals as E  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


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
    for r in rows:
        ax.plot([p[0] for p in r["points"]], [p[2] for p in r["points"]], marker="o", label=r["label"])
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


def evaluate(model: str, folder: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Every evaluation of one model (``sparse24 eval`` children), each cached in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ev: dict[str, Any] = {"model": model, "ppl": {}, "zeroshot": {}, "runs": {}}
    for seqlen, windows in zip(a.seqlens, a.windows):
        print(f"  ppl@{seqlen} of {model} (load {E.loadavg()})", flush=True)
        path = folder / f"ppl_{Path(a.text).stem}_{seqlen}.json"
        r = E.perplexity(model, a.text, seqlen, windows or None, a.threads, path)
        ev["runs"][f"ppl@{seqlen}"] = r.pop("run")
        r.pop("wall_s")
        ev["ppl"][str(seqlen)] = r
    for task in [t for t in a.tasks.split(",") if t]:  # one child per task: a rerun with more tasks runs only those
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

    entries = [(base["dense"]["label"], d, ["", "", "", ""], False),
               (base["start"]["label"], st, ["", "", "", "0"], False)]
    for r in rows:
        extra = r["slorb"]["extra_params"]
        entries.append((r["label"], r.get("ev"), [f"{r['tokens']:,}", f"{r['train_s']:.0f}",
                                                  f"{r['wall_s'] or 'not recorded'}",
                                                  f"{extra:,} ({extra / r['model_params']:.1%})"], True))
    for label, ev, cost, bold in entries:
        cells = [f"**{label}**" if bold else label] + [f"{ppl(ev, s):.2f}" for s in a.seqlens]
        cells += ["" if label == "dense" else f"{gap(ppl(st, s), ppl(d, s), ppl(ev, s)):.1%}" for s in a.seqlens]
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
        table.append(f"| **{r['label']}** | {r['final']:.2f} | {r['closed']:.1%} | {r['tokens']:,} | {r['steps']} | "
                     f"{r['train_s']:.0f} | {r['wall_s'] or 'not recorded'} | {r['tokens_per_s'] or 0:.0f} | "
                     f"{r['slorb']['extra_params']:,} ({pct(r)}) |")
    settings = [f"- {r['label']}: `{json.dumps(r['ast'])}`, lr {r['lr']}, torch threads "
                f"{r['threads'] or 'not recorded'}, load (1/5/15 min) at the end {r['load'] or 'not recorded'}, "
                f"curve still falling at the end: {r['falling']}" for r in rows]
    met = head["closed"] >= 0.5 and head["train_s"] <= 1800
    windows = "; ".join(f"{w or 'all'} windows x {s} tokens" for s, w in zip(a.seqlens, a.windows))
    evals = []
    if a.evaluate:
        zs = (f"Zero-shot: lm-eval, the first {a.limit or 'all'} documents per task; acc ± its standard error "
              "sqrt(acc (1 - acc) / (n - 1)) (lm-eval's mean_stderr), acc_norm in brackets. " if a.tasks else "")
        cost = "; ".join(f"{name} {k} {v.get('wall_s', '?')} s ({v.get('load_before', '?').split()[0]} -> "
                         f"{v.get('load_after', '?').split()[0]})"
                         for name, e in [("dense", base["dense"].get("ev")), ("start", base["start"].get("ev")),
                                         *[(r["label"], r.get("ev")) for r in rows]]
                         if e for k, v in e["runs"].items() if v)
        evals = [f"## Evaluation of the finished models (`sparse24 eval`, {a.threads} torch thread(s))", "",
                 f"Perplexity on `{a.text}`, non-overlapping windows, the first {windows} (the same windows for "
                 f"every model). {zs}Gap closed = (start - model) / (start - dense) at that seqlen. Extra params: "
                 "SLoRB's, as a share of the dense model's.", "", *eval_table(rows, base, a), "",
                 f"Evaluation cost (wall s of each `sparse24 eval` child; 1-min load before -> after): {cost}.", ""]
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
    atomic_write_json(out.with_suffix(".json"), {"protocol": protocol, "baselines": base, "runs": rows})
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
    p.add_argument("runs", nargs="+", help="LABEL=FOLDER of finished `sparse24 retrain` runs (the first is the "
                   "headline row)")
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
    g.add_argument("--threads", type=int, default=1, help="torch threads of each evaluation (default 1)")
    g.add_argument("--work", type=Path, default=Path("out/retraining_quality"), help="where the baselines' "
                   "evaluations are cached (default out/retraining_quality)")
    a = p.parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else list(argv)
    if len(a.windows) != len(a.seqlens):
        p.error("--windows needs one count per --seqlens value")
    rows = []
    for spec in a.runs:
        label, sep, folder = spec.rpartition("=")
        if not sep or not (Path(folder) / "retrain_curve.csv").is_file():
            p.error(f"{spec!r}: give LABEL=FOLDER of a finished `sparse24 retrain --out FOLDER`")
        rows.append(summarize(label, Path(folder)))
    base: dict[str, dict[str, Any]] = {k: {"label": v[0], "model": v[1]} for k, v in baseline_models(rows).items()}
    if a.evaluate:
        for key, b in base.items():
            if b["model"]:
                b["ev"] = evaluate(b["model"], a.work / (key if key == "dense" else f"init-{Path(b['model']).name}"), a)
        for r in rows:
            r["ev"] = evaluate(r["folder"], Path(r["folder"]) / "evals", a)
    write(rows, base, a, [a.notes.read_text(encoding="utf-8").rstrip()] if a.notes else [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
