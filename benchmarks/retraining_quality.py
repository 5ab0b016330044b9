"""Retraining quality: ``sparse24 retrain`` runs (AST and its ablations) against dense and their one-shot start.

Each run is a finished ``sparse24 retrain --out FOLDER``; this script only reads what the command recorded (the
perplexity curve ``retrain_curve.csv``: the dense and start lines are scored once on the same windows as every curve
point; ``sparse24_config.json``'s ``extra``: tokens, seconds, SLoRB parameters, settings, load) and writes
``benchmarks/results/retraining_quality.md`` (+ ``.json``, ``.csv`` with every curve, ``.png`` with them drawn
together). The first run is the headline; the others are ablation rows.

    sparse24 retrain --init out/sgpt-quick --tokens 25600 --lr 1e-4 --eval-seq-len 512 --eval-windows 16 \\
        --eval-tokens 5120 --threads 1 --out out/ast-main
    sparse24 retrain ... --no-slorb --out out/ast-noslorb
    python benchmarks/retraining_quality.py "AST=out/ast-main" "AST without SLoRB=out/ast-noslorb"

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
            "eval": ex["eval"], "points": points, "lines": lines,
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


def write(rows: list[dict[str, Any]], out: Path, notes: list[str]) -> None:
    import torch
    import transformers

    from sparse24.fileio import atomic_write_json, atomic_write_text

    head, ev = rows[0], rows[0]["eval"]

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
    lines = ["# Retraining quality: AST from the one-shot SparseGPT model, SmolLM2-135M on CPU", "",
             f"Written {datetime.date.today()} on {platform.machine()}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}. Perplexity on `{ev['text']}`, the first {ev['windows']} non-overlapping "
             f"windows of {ev['seq_len']} tokens (the same windows for every model and every curve point).", "",
             *table, "",
             "Gap closed = (ppl_start - ppl) / (ppl_start - ppl_dense); target >= 50 % within 30 min of CPU "
             f"retraining on 2 cores: **{'met' if met else 'not met'}** "
             f"({head['closed']:.1%} at {head['tokens']:,} tokens, {head['train_s']:.0f} s of training).", "",
             "Curve: `retraining_quality.csv` / `retraining_quality.png`.", "", "Settings:", *settings, "",
             *notes, "", f"Command: `python benchmarks/retraining_quality.py {shlex.join(sys.argv[1:])}`"]
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_json(out.with_suffix(".json"), rows)
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
    a = p.parse_args(argv)
    rows = []
    for spec in a.runs:
        label, sep, folder = spec.rpartition("=")
        if not sep or not (Path(folder) / "retrain_curve.csv").is_file():
            p.error(f"{spec!r}: give LABEL=FOLDER of a finished `sparse24 retrain --out FOLDER`")
        rows.append(summarize(label, Path(folder)))
    write(rows, a.out, [a.notes.read_text(encoding="utf-8").rstrip()] if a.notes else [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
