"""AST on SmolLM2-135M with a CPU-sized budget, against dense, magnitude and SparseGPT one-shot 2:4.

Perplexity uses the pruning table's protocol (``benchmarks/pruning_quality.py``): :func:`sparse24.eval.perplexity` on
the BoolQ passages, non-overlapping windows, the first 8 windows of 2048 tokens and the first 32 of 512. SparseGPT uses
the table's calibration (32 windows x 512 tokens of the ``calib`` text, seed 0); ``--sparsegpt`` reuses a folder
pruned that way (e.g. ``out/pruning_quality/sparsegpt``). AST retrains on random windows of the same ``calib`` text,
never the evaluation text; a killed run restarted with the same arguments resumes AST from its last checkpoint.
Writes ``benchmarks/results/ast_quality.md`` (and ``.json``).

    python benchmarks/ast_quality.py --threads 2                 # the default budget (see --help)
    python benchmarks/ast_quality.py --steps 2 --seqlens 64 --windows 2 --out /tmp/smoke.md   # smoke run

Target (issue "ARMOR and AST"): AST closes >= 60 % of the gap between SparseGPT's and the dense perplexity,
``closed = (ppl_sgpt - ppl_ast) / (ppl_sgpt - ppl_dense)``, at each seqlen.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=120, help="AST optimizer steps (default 120)")
    p.add_argument("--seqlen", type=int, default=128, help="AST training window (default 128)")
    p.add_argument("--batch-size", type=int, default=4, help="AST windows per step (default 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="AST peak lr (default 1e-4)")
    p.add_argument("--seqlens", type=int, nargs="+", default=[2048, 512], help="perplexity windows (default 2048 512)")
    p.add_argument("--windows", type=int, nargs="+", default=[8, 32], help="windows scored per seqlen (default 8 32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("out/bench-ast"), help="folder for the pruned models")
    p.add_argument("--sparsegpt", type=Path, help="reuse this SparseGPT folder (32 x 512 calib) instead of pruning")
    p.add_argument("--no-magnitude", action="store_true", help="skip the magnitude one-shot row (saves its evals)")
    p.add_argument("--out", type=Path, default=RESULTS / "ast_quality.md")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `sparse24 prune --method ast` "
                   "options, e.g. --extra --slorb-group 0 (must come last)")
    a = p.parse_args()
    if len(a.windows) != len(a.seqlens):
        p.error("--windows needs one count per --seqlens value")
    return a


def prune_args(argv: list[str]) -> argparse.Namespace:
    """Arguments exactly as ``sparse24 prune`` parses them."""
    from sparse24.prune import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(argv)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from sparse24 import MagnitudeConfig, sparsify
    from sparse24.eval.data import read_text, token_windows
    from sparse24.eval.loading import load_for_eval
    from sparse24.eval.perplexity import perplexity
    from sparse24.prune.ast import run_ast
    from sparse24.prune.cli import prune_checkpoint
    from sparse24.prune.model_io import resolve_model

    a = parse()
    torch.set_num_threads(a.threads)
    common = ["--overwrite", "--no-progress", "--seed", "0"]
    t0 = time.time()
    folder = a.sparsegpt
    if folder is None:
        folder = a.work / "sparsegpt"
        prune_checkpoint(prune_args(["--method", "sparsegpt", "--nsamples", "32", "--seqlen", "512",
                                     "--out", str(folder), *common]))
    sgpt_model, tok, _ = load_for_eval(folder)
    seconds = {"sparsegpt": time.time() - t0}
    eval_ids = token_windows(tok, read_text("boolq"))

    def ppl(model) -> dict:
        return {s: perplexity(model, eval_ids, s, max_windows=w, text_name="boolq")
                for s, w in zip(a.seqlens, a.windows)}

    dense = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"), dtype=torch.float32).eval()
    rows = {"dense": ppl(dense), "sparsegpt": ppl(sgpt_model)}
    del sgpt_model
    if not a.no_magnitude:  # AST's initial mask, before any training
        rows["magnitude"] = ppl(sparsify(copy.deepcopy(dense), MagnitudeConfig()))
    del dense
    shutil.rmtree(a.work / "ast", ignore_errors=True)  # a finished run; a killed one resumes from ast.ast-work/
    ast_args = prune_args(["--method", "ast", "--steps", str(a.steps), "--seqlen", str(a.seqlen), "--batch-size",
                           str(a.batch_size), "--lr", str(a.lr), "--out", str(a.work / "ast"), "--no-progress",
                           "--seed", "0", *a.extra])
    t0 = time.time()
    ast = run_ast(ast_args)
    seconds["ast"] = time.time() - t0
    rows["ast"] = ppl(ast["model"])
    write(a, rows, ast["extra"], ast_args, seconds, str(folder))


def write(a: argparse.Namespace, rows: dict, ex: dict, ast_args: argparse.Namespace, seconds: dict,
          sgpt_folder: str) -> None:
    import torch
    import transformers

    closed = {}
    for s in a.seqlens:
        d, g, x = (rows[k][s]["ppl"] for k in ("dense", "sparsegpt", "ast"))
        closed[s] = (g - x) / (g - d) if g != d else float("nan")
    sgpt_note = f"reused {sgpt_folder}" if a.sparsegpt else f"32 x 512 calib tokens, {seconds['sparsegpt']:.0f} s"
    notes = {"dense": "SmolLM2-135M-Instruct (Q4_1 dequantised)",
             "magnitude": "AST's initial mask, before retraining", "sparsegpt": sgpt_note,
             "ast": f"{ast_args.steps} steps x {ast_args.batch_size} x {ast_args.seqlen} = {ex['tokens_trained']} "
                    f"tokens of `calib`, {seconds['ast']:.0f} s"}
    names = {"dense": "dense", "magnitude": "magnitude 2:4 one-shot", "sparsegpt": "SparseGPT 2:4 one-shot",
             "ast": "**AST 2:4**"}
    ppl = "; ".join(f"{rows['dense'][s]['windows']} windows x {s} tokens" for s in a.seqlens)
    lines = [
        "# AST on SmolLM2-135M (CPU budget)", "",
        f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}, {a.threads} torch threads; 1-min load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end (other jobs make the seconds longer).", "",
        f"Perplexity on BoolQ passages (`boolq`), non-overlapping windows: {ppl} (same windows for every model).", "",
        "| model | " + " | ".join(f"ppl@{s}" for s in a.seqlens) + " | notes |",
        "|---|" + "---:|" * len(a.seqlens) + "---|",
        *(f"| {names[k]} | " + " | ".join(f"{rows[k][s]['ppl']:.2f}" for s in a.seqlens) + f" | {notes[k]} |"
          for k in ("dense", "magnitude", "sparsegpt", "ast") if k in rows), "",
        "Gap closed vs SparseGPT, (ppl_sgpt - ppl_ast) / (ppl_sgpt - ppl_dense), target >= 60 %: "
        + "; ".join(f"seqlen {s}: **{c:.1%}** ({'met' if c >= 0.6 else 'not met'})" for s, c in closed.items()), "",
        f"AST settings: `{json.dumps(ex['ast'])}`; lr {ast_args.lr} (cosine to lr/10, warm-up {ast_args.warmup:.0%}), "
        f"AdamW betas (0.9, 0.95), no weight decay, clip 1.0; SLoRB extra parameters "
        f"{ex['slorb_params']['extra_params']:,} in {ex['slorb_params']['layers']} linears.",
        f"Final training loss {ex['final']['loss']}, held-out calib distillation loss {ex['final']['val_loss']}.", "",
        f"Command: `python benchmarks/ast_quality.py {shlex.join(sys.argv[1:])}`",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "closed": closed, "seconds": seconds,
                                                      "ast": ex}, indent=2, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
