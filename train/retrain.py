"""``sparse24 retrain``: AST (Adaptive Sparse Trainer, arXiv 2407.20584) retrains an LM into 2:4 with distillation from
its frozen dense self, on the shared :class:`~sparse24.train.loop.Trainer` (resume, telemetry, ETA); the method itself
(loss, student, hooks) is :mod:`.ast_trainer`.

It starts from the dense model with magnitude masks (``--init magnitude``) or from a ``sparse24 prune`` output
(``--init FOLDER``: that model's masks and updated weights, so step 0 is exactly the one-shot model). The budget is
``--steps`` or ``--tokens``; the perplexity against retraining tokens goes to ``<out>/retrain_curve.csv/.png``. A
killed run restarted with the same arguments resumes bit-identically from ``<out>.retrain-work/``; other arguments are
refused, naming each difference.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sparse24.prune.slorb import INITS
from sparse24.train.ast_trainer import ASTConfig, make_ast_trainer, make_student, masks_from_pruned
from torch import Tensor, nn

__all__ = ["load_init", "add_arguments", "run", "retrain", "main", "DESCRIPTION"]


@torch.no_grad()
def load_init(folder: str | Path, teacher: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, dict[str, Tensor]]:
    """The student (weights of the pruned ``folder``) and its masks (the pruned pattern; see :func:`masks_from_pruned`).

    Every pruned weight must be zero outside its mask: then ``W⊙M`` is exactly the one-shot model (step 0 = init)."""
    from transformers import AutoModelForCausalLM

    from sparse24.io import CONFIG_NAME

    if not (Path(folder) / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"--init {folder}: not a `sparse24 prune` output ({CONFIG_NAME} missing); pass a "
                                "folder written by sparse24 prune, or --init magnitude")
    masks = masks_from_pruned(teacher, folder)
    student = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    for name, mask in masks.items():
        w = student.get_submodule(name).weight
        if bool((w[~mask] != 0).any()):
            raise ValueError(f"--init {folder}: {name} is not 2:4 (non-zero weights outside its 2 of 4); use a "
                             "folder whose weights are 2:4 (magnitude, wanda, sparsegpt), not ARMOR or a dense one")
    return student, masks


DESCRIPTION = """Retrain a model into 2:4 with AST (arXiv 2407.20584): distillation from the frozen dense model (KL +
task loss), masks recomputed every --mask-every steps, ramped masked decay on the pruned weights, SLoRB low-rank terms.

Start from the dense model with magnitude masks (--init magnitude) or from a `sparse24 prune` output (--init FOLDER:
its masks and updated weights, so step 0 is exactly the one-shot model). Budget: --steps or --tokens. A killed run
restarted with the same arguments resumes bit-identically from <out>.retrain-work/; other arguments are refused."""

EPILOG = """examples:
  sparse24 prune --method sparsegpt --out pruned/sgpt
  sparse24 retrain --init pruned/sgpt --tokens 500000 --out pruned/sgpt-ast
  sparse24 retrain --init magnitude --steps 200 --slorb-group 0 --out pruned/mag-ast    # without SLoRB
"""


def add_arguments(p: Any) -> None:
    """``sparse24 retrain`` flags."""
    import argparse

    p.description, p.epilog, p.formatter_class = DESCRIPTION, EPILOG, argparse.RawDescriptionHelpFormatter
    g = p.add_argument_group("what to retrain")
    g.add_argument("--model", default="smollm2-135m", help="the dense model (teacher; also the start with --init "
                   "magnitude): a local HF folder or smollm2-135m (default)")
    g.add_argument("--init", default="magnitude", help="start: 'magnitude' (dense weights, magnitude masks) or a "
                   "`sparse24 prune` output folder (its masks and updated weights; default magnitude)")
    g.add_argument("--targets", nargs="+", default=None, help="module-name patterns to make 2:4 (default: the "
                   "--init folder's pruned modules, or every decoder linear)")
    g.add_argument("--ignore", nargs="*", default=[], help="patterns to keep dense (wins over --targets)")
    g.add_argument("--data", default="calib", help="training text: 'calib', 'boolq', 'lambada' or a .txt / .jsonl "
                   "file (default calib; 2 %% is held out for the validation loss)")
    g = p.add_argument_group("budget and optimisation")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (default 200 unless --tokens)")
    g.add_argument("--tokens", type=int, default=None, help="token budget instead of --steps: steps = tokens / "
                   "(batch-size x seq-len x grad-accum), rounded up")
    g.add_argument("--seq-len", type=int, default=128, help="tokens per training window (default 128)")
    g.add_argument("--batch-size", type=int, default=4, help="windows per micro-batch (default 4)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--lr", type=float, default=5e-5, help="peak AdamW lr, cosine to lr/10 (default 5e-5)")
    g.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the steps (default 0.05)")
    g.add_argument("--seed", type=int, default=0, help="seed of the training windows (default 0)")
    g = p.add_argument_group("AST (each part can be switched off)")
    g.add_argument("--lambda-max", type=float, default=6e-5, help="λ_max of the masked decay, 0 = off (default 6e-5)")
    g.add_argument("--ramp", type=float, default=0.25, help="λ ramps linearly over this fraction of the steps "
                   "(default 0.25, as 10k of 40k steps in the GPT-2 recipe)")
    g.add_argument("--mask-every", type=int, default=10, help="recompute masks every N steps (default 10)")
    g.add_argument("--alpha-task", type=float, default=1.0, help="weight of the CE loss (default 1)")
    g.add_argument("--alpha-kl", type=float, default=0.5, help="weight of the KL to the teacher, 0 = off "
                   "(default 0.5)")
    g.add_argument("--alpha-hid", type=float, default=0.0, help="weight of the hidden-state loss (default 0)")
    g.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    g.add_argument("--slorb-group", type=int, default=16, help="SLoRB group size k; 0 turns SLoRB off (default 16)")
    g.add_argument("--slorb-init", choices=INITS, default="mean", help="SLoRB S initialisation (default mean)")
    g.add_argument("--slorb-fixed-projection", action="store_true", help="keep P the fixed group sum")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, required=True, help="output folder (2:4 model + slorb.safetensors)")
    g.add_argument("--overwrite", action="store_true", help="replace --out and discard a partial run")
    g.add_argument("--compressed", action="store_true", help="also write sparse24_compressed.safetensors")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    g.add_argument("--dtype", default="auto", help="auto (float32 on CPU, checkpoint dtype on GPU), float32, "
                   "bfloat16, float16")
    g.add_argument("--eval-every", type=int, default=0, help="validation loss every N steps (0: at the end)")
    g = p.add_argument_group("quality curve (perplexity against retraining tokens: <out>/retrain_curve.csv/.png)")
    g.add_argument("--eval-text", default="boolq", help="perplexity text: boolq (default), lambada, calib or a "
                   ".txt / .jsonl file")
    g.add_argument("--eval-seq-len", type=int, default=0, help="perplexity window (default: --seq-len)")
    g.add_argument("--eval-windows", type=int, default=16, help="windows scored each time (default 16)")
    g.add_argument("--eval-tokens", type=int, default=0, help="score every N training tokens (default 0: at the "
                   "start and the end only); the dense model and the start are scored once")
    g.add_argument("--ckpt-every", type=int, default=50, help="checkpoint every N steps into <out>.retrain-work/ "
                   "(default 50); a restarted run resumes from the newest one")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: Any, steps: int) -> ASTConfig:
    return ASTConfig(lambda_max=args.lambda_max, ramp_steps=int(round(args.ramp * steps)),
                     mask_refresh=args.mask_every, alpha_task=args.alpha_task, alpha_kl=args.alpha_kl,
                     alpha_hid=args.alpha_hid, temperature=args.temperature, slorb_group=args.slorb_group,
                     slorb_init=args.slorb_init, slorb_trainable_projection=not args.slorb_fixed_projection)


def _steps(args: Any) -> int:
    for flag in ("batch_size", "seq_len", "grad_accum", "eval_windows"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("eval_tokens", "eval_every", "ckpt_every", "eval_seq_len"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0")
    if args.steps is not None and args.tokens is not None:
        raise ValueError("give --steps or --tokens, not both")
    if args.tokens is not None:
        if args.tokens < 1:
            raise ValueError("--tokens must be >= 1")
        return -(-args.tokens // (args.batch_size * args.seq_len * args.grad_accum))
    steps = 200 if args.steps is None else args.steps
    if steps < 1:
        raise ValueError("--steps must be >= 1")
    return steps


@dataclass
class _Job:
    """What ``sparse24 retrain`` resolved before any model is loaded."""

    out: Path
    work: Path
    model_dir: Path
    init: Path | None
    device: str
    dtype: torch.dtype
    tokenizer: Any
    ids: Tensor  # [n] training tokens
    eval_ids: Tensor  # [m] perplexity tokens
    eval_len: int


def _prepare(args: Any) -> _Job:
    """Check --out (before any work), resolve the model, device and dtype, tokenize the texts."""
    from transformers import AutoTokenizer

    from sparse24.assets import resolve_model
    from sparse24.fileio import check_output_path
    from sparse24.runtime import resolve_device, resolve_dtype
    from sparse24.texts import NAMED_TEXTS, read_text, tokenize_text

    model_dir = resolve_model(args.model)
    init = None if args.init == "magnitude" else Path(args.init)
    texts = [t for t in (args.data, args.eval_text) if t not in NAMED_TEXTS]
    out = check_output_path(args.out, [model_dir, init, *texts], overwrite=args.overwrite)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device) or torch.float32
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenize_text(tok, read_text(args.data))  # [n]
    eval_ids = tokenize_text(tok, read_text(args.eval_text))  # [m]
    return _Job(out, out.with_name(out.name + ".retrain-work"), Path(model_dir), init, device, dtype, tok, ids,
                eval_ids, args.eval_seq_len or args.seq_len)


def _trainer(args: Any, job: _Job, steps: int) -> tuple[Any, dict[str, Any]]:
    """Teacher, student (from --init), the shared Trainer with AST's loss and hooks; and the run record."""
    from accelerate import Accelerator
    from sparse24.prune.driver import matches
    from sparse24.train.loop import TrainConfig
    from sparse24.train.pretrain import model_fingerprint
    from transformers import AutoModelForCausalLM

    n_val = max(2 * args.seq_len * args.batch_size + 1, len(job.ids) // 50)
    if len(job.ids) < n_val + 2 * args.seq_len:
        raise ValueError(f"--data {args.data} has {len(job.ids)} tokens: too few for --seq-len {args.seq_len}")
    cfg = config_from_args(args, steps)
    tc = TrainConfig(steps=steps, batch_size=args.batch_size, seq_len=args.seq_len, grad_accum=args.grad_accum,
                     lr=args.lr, min_lr=args.lr / 10, warmup=args.warmup, weight_decay=0.0, clip=1.0, eval_batches=2,
                     eval_every=args.eval_every, ckpt_every=args.ckpt_every, keep_checkpoints=2, seed=args.seed,
                     progress=not args.no_progress, out_dir=job.work)
    record = {"model_dir": str(job.model_dir.resolve()), "model_sha": model_fingerprint(job.model_dir),
              "init": str(job.init.resolve()) if job.init else "magnitude",
              "init_sha": model_fingerprint(job.init) if job.init else None, "data": args.data,
              "data_tokens": len(job.ids), "targets": args.targets, "ignore": args.ignore, "dtype": str(job.dtype),
              "eval": {"text": args.eval_text, "tokens": len(job.eval_ids), "seq_len": job.eval_len,
                       "windows": args.eval_windows, "every_tokens": args.eval_tokens},
              "ast": dataclasses.asdict(cfg), "train": {k: v for k, v in dataclasses.asdict(tc).items()
                                                        if k != "extra"}}
    tc.extra = dict(record)  # checkpoints record it; a restart with other settings is refused
    teacher = AutoModelForCausalLM.from_pretrained(job.model_dir, dtype=job.dtype)
    if job.init is None:
        student, masks = AutoModelForCausalLM.from_pretrained(job.model_dir, dtype=job.dtype), None
    else:
        student, masks = load_init(job.init, teacher, job.dtype)
    targets = args.targets if args.targets is not None else (sorted(masks) if masks else ["*"])
    make_student(student, cfg, masks, lambda m, fqn: isinstance(m, nn.Linear) and matches(fqn, targets, args.ignore))
    trainer = make_ast_trainer(student, teacher, cfg, tc, job.ids[:-n_val], job.ids[-n_val:],
                               accelerator=Accelerator(cpu=job.device == "cpu"))
    return trainer, record


def retrain(args: Any) -> dict[str, Any]:
    """The whole ``sparse24 retrain`` job: check --out, load, retrain (resumable), save with SLoRB, write the
    perplexity curve; returns the model, tokenizer and the record written into ``sparse24_config.json``'s ``extra``."""
    import time

    from sparse24.prune.export import check_all_24
    from sparse24.prune.slorb import describe, save_slorb_model
    from sparse24.train.curve import baselines, ppl_hook, score, write_curve
    from sparse24.train.pretrain import clear_run, start_point
    from sparse24.train.telemetry import read_jsonl

    from sparse24.fileio import atomic_write_json

    steps = _steps(args)
    job = _prepare(args)
    trainer, record = _trainer(args, job, steps)
    work, out = job.work, job.out
    ckpt = start_point(work, "auto", trainer.cfg.extra, overwrite=args.overwrite)  # refuses other settings
    if args.overwrite:
        clear_run(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "run.json", trainer.cfg.extra)
    lines = baselines(work, ckpt is None, lambda: {
        "dense": score(trainer.loss_fn.teacher, job.eval_ids, job.eval_len, args.eval_windows),
        "start": score(trainer.unwrapped, job.eval_ids, job.eval_len, args.eval_windows)})
    trainer.after_step.append(ppl_hook(job.eval_ids, job.eval_len, args.eval_windows, args.eval_tokens))
    t0 = time.time()
    history = trainer.fit(ckpt)
    model = trainer.unwrapped.eval()
    last = history[-1] if history else {}
    tps = sorted(r["tokens_per_s"] for r in history)
    extra = {"method": "ast", **record, "tokens_trained": trainer.tokens, "train_seconds_this_session":
             round(time.time() - t0, 1), "final": {k: last.get(k) for k in ("step", "loss", "val_loss", "eval_ppl")},
             "baselines_ppl": lines, "tokens_per_s": tps[len(tps) // 2] if tps else None,
             "slorb_params": describe(model)}
    save_slorb_model(model, out, compressed=args.compressed, overwrite=True, extra=extra)  # --out checked above
    job.tokenizer.save_pretrained(out)
    shutil.copy(work / "metrics.jsonl", out / "retrain_metrics.jsonl")
    start_name = "one-shot start (--init " + ("magnitude" if job.init is None else job.init.name) + ")"
    curve = write_curve(read_jsonl(out / "retrain_metrics.jsonl"), lines["start"],
                        {"dense": lines["dense"], start_name: lines["start"]}, out / "retrain_curve",
                        f"AST retraining: perplexity on {Path(args.eval_text).name} ({args.eval_windows} windows "
                        f"x {job.eval_len} tokens)")
    shutil.rmtree(work, ignore_errors=True)
    ok, total = check_all_24(model)
    print(f"sparse24 retrain: {trainer.step} steps, {trainer.tokens:,} tokens ({extra['tokens_per_s'] or 0:,.0f} "
          f"tokens/s), final loss {last.get('loss', float('nan')):.4f}, validation loss "
          f"{last.get('val_loss') or float('nan'):.4f}; {ok}/{total} weights exactly 2:4")
    print(f"perplexity on {args.eval_text}: dense {lines['dense']:.2f}, start {lines['start']:.2f}, retrained "
          f"{last.get('eval_ppl', float('nan')):.2f}; curve: {curve[0]} and {curve[1]}")
    print(f"saved to {out} (load with sparse24.prune.slorb.load_slorb_model); metrics: {out / 'retrain_metrics.jsonl'}")
    return {"model": model, "tokenizer": job.tokenizer, "model_dir": job.model_dir, "extra": extra, "ok": ok,
            "total": total}


def run(args: Any) -> int:
    """``sparse24 retrain``: 0 when every retrained weight is exactly 2:4."""
    from sparse24.runtime import quiet_third_party

    quiet_third_party()
    result = retrain(args)
    return 0 if result["ok"] == result["total"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m sparse24.train.retrain`` (the same as ``sparse24 retrain``)."""
    import sys

    from sparse24.cli import main as cli_main

    return cli_main(["retrain", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
