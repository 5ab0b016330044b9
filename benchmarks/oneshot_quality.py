"""One-shot 2:4 pruners that need no extra parameters, side by side: dense / SparseGPT / SparseGPT+refit / ADMM.

Each method is pruned by ``sparse24 prune --method M`` (32 x 512 calibration windows by default, the ``--quick``
protocol) in its own child process with pinned ``--threads``, one after the other; then ``sparse24 eval`` scores the
same perplexity windows as ``benchmarks/llmcompressor_compare.sh`` (boolq, the first 32 x 512 and 8 x 2048 tokens).
The load average is recorded before and after every timed step, because the CPU may be shared. A finished row is kept
in ``--work/<method>.row.json``, so an interrupted run continues where it stopped.
Writes ``benchmarks/results/oneshot_quality.{md,json}``.

    python benchmarks/oneshot_quality.py --threads 1 --methods dense sparsegpt sparsegpt-refit admm
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LLMC_SPARSEGPT = {"ppl@2048": 78.21, "ppl@512": 79.89}  # llmcompressor_compare.md, same model / calib / windows


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def _run(cmd: list[str], log: Path) -> dict:
    """Run a child to completion; its wall seconds, peak RSS (MB) and the load average before/after."""
    load0, t0 = _load(), time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}:\n{log.read_text()[-3000:]}")
    return {"wall_s": round(time.time() - t0, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "load_before": load0, "load_after": _load()}


def row(spec: str, args: argparse.Namespace) -> dict:
    """``spec`` is a method name, or ``method:label`` for a second row of one method (e.g. after a default changed;
    the row records the pruner's settings)."""
    method, _, label = spec.partition(":")
    name = f"{method}-{label}" if label else method
    path = args.work / f"{name}.row.json"
    res: dict = json.loads(path.read_text()) if path.exists() else {"method": method, "row": name}
    if all(f"ppl@{s}" in res for s in args.seqlens):
        return res
    out = args.work / name
    if method != "dense" and "prune" not in res:
        cmd = [sys.executable, "-m", "sparse24", "prune", "--method", method, "--out", str(out), "--overwrite",
               "--nsamples", str(args.nsamples), "--seqlen", str(args.calib_seqlen), "--threads", str(args.threads),
               "--no-progress"]
        for stale in args.work.glob(f"{name}.ppl*.json"):
            stale.unlink()
        res["prune"] = _run(cmd, args.work / f"{name}.prune.log")
        record = json.loads((out / "sparse24_config.json").read_text())["extra"]
        res.update(prune_s=record["prune_seconds"], check_24=record["check_24"], settings=record["settings"])
        res["layer_out_err_mean"] = sum(r.get("out_err", 0.0) for r in record["report"]) / len(record["report"])
        path.write_text(json.dumps(res, indent=2))
    model = "smollm2-135m" if method == "dense" else str(out)
    for seqlen, windows in zip(args.seqlens, args.windows):
        js = args.work / f"{name}.ppl{seqlen}.json"
        if f"ppl@{seqlen}" in res:
            continue
        cmd = [sys.executable, "-m", "sparse24", "eval", model, "--ppl", args.text, "--seqlen", str(seqlen),
               "--max-windows", str(windows), "--batch-size", "1", "--threads", str(args.threads), "--no-progress",
               "--out", str(js)]
        if not js.exists():  # an eval finished before an interruption is kept
            res[f"eval{seqlen}"] = _run(cmd, args.work / f"{name}.ppl{seqlen}.log")
        res[f"ppl@{seqlen}"] = json.loads(js.read_text())["perplexity"][args.text]["ppl"]
        res["extra_params"] = 0
        path.write_text(json.dumps(res, indent=2))
    return res


def report(rows: list[dict], args: argparse.Namespace) -> None:
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "threads": args.threads, "nsamples": args.nsamples, "calib_seqlen": args.calib_seqlen,
            "text": args.text, "seqlens": args.seqlens, "windows": args.windows, "cpus": os.cpu_count(),
            "llmcompressor_sparsegpt": LLMC_SPARSEGPT}
    (RESULTS / "oneshot_quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    sg = next((r for r in rows if r.get("row", r["method"]) == "sparsegpt"), None)
    seqlens = sorted({int(k[4:]) for r in rows for k in r if k.startswith("ppl@")})
    llmc = [s for s in seqlens if f"ppl@{s}" in LLMC_SPARSEGPT]
    head = (["method"] + [f"ppl@{s}" for s in seqlens] + ["vs sparse24 SparseGPT @512"]
            + [f"vs llm-compressor @{s}" for s in llmc] + [
            "prune s (cpu s)", "load before → after", "peak RSS MB", "extra params", "2:4", "settings"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r.get("prune")
        vs_sg = f"{100 * (r['ppl@512'] / sg['ppl@512'] - 1):+.1f} %" if sg and r["method"] != "dense" else ""
        vs_llmc = [f"{100 * (r[f'ppl@{s}'] / LLMC_SPARSEGPT[f'ppl@{s}'] - 1):+.1f} %"
                   if r["method"] != "dense" and f"ppl@{s}" in r else "" for s in llmc]
        cells = [r.get("row", r["method"])] + [f"{r[f'ppl@{s}']:.2f}" if f"ppl@{s}" in r else "—" for s in seqlens] + [
            vs_sg, *vs_llmc, f"{r['prune_s']} ({p['cpu_s']})" if p else "", f"{p['load_before']} → {p['load_after']}"
            if p else "", str(p["peak_rss_mb"]) if p else "", "0" if p else "", r.get("check_24", ""),
            ", ".join(f"{k}={v}" for k, v in r.get("settings", {}).items() if k != "compute_dtype")]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join([
        "# One-shot 2:4 without extra parameters: SparseGPT vs its refits (SmolLM2-135M-Instruct)", "",
        f"Generated {meta['date']} by `python benchmarks/oneshot_quality.py --threads {args.threads}` on a "
        f"{os.cpu_count()}-core CPU shared with other jobs (load averages in the table; compare times only within "
        "one table). Calibration: "
        f"{args.nsamples} x {args.calib_seqlen} tokens of `calib` (seed 0), layer-sequential through the pruned "
        "layers. "
        f"Perplexity: `{args.text}`, the first " + ", ".join(f"{w} x {s}" for s, w in zip(args.seqlens, args.windows))
        + " tokens (the windows of `llmcompressor_compare.md`, whose llm-compressor SparseGPT row is "
        f"{LLMC_SPARSEGPT['ppl@2048']} @2048 / {LLMC_SPARSEGPT['ppl@512']} @512). `prune s` is the layer loop alone; "
        "cpu s is the whole prune process's CPU time.", "", *lines, "",
        *([args.notes.read_text()] if args.notes else []),
    ])
    (RESULTS / "oneshot_quality.md").write_text(text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--seqlens", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--windows", type=int, nargs="+", default=[32, 8])
    p.add_argument("--text", default="boolq")
    p.add_argument("--methods", nargs="+", default=["dense", "sparsegpt", "sparsegpt-refit", "admm"])
    p.add_argument("--work", type=Path, default=Path("out/oneshot_quality"))
    p.add_argument("--report-only", action="store_true", help="rewrite the tables from the finished rows")
    p.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the results")
    args = p.parse_args()
    if len(args.seqlens) != len(args.windows):
        raise SystemExit("--seqlens and --windows need the same number of values")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in args.methods:
        if args.report_only and not (args.work / f"{m.replace(':', '-')}.row.json").exists():
            continue
        rows.append(row(m, args))
        print(json.dumps(rows[-1]), flush=True)
    report(rows, args)


if __name__ == "__main__":
    main()
