"""``sparse24 retrain``: AST (Adaptive Sparse Trainer, arXiv 2407.20584) retrains an LM into 2:4 with distillation from
its frozen dense self, on the shared :class:`~sparse24.train.loop.Trainer` (resume, telemetry, ETA); the method itself
(loss, student, hooks) is :mod:`.ast_trainer`.

By default it starts from the best one-shot model (``--init oneshot``): ``sparse24 prune --method``
:data:`ONESHOT_METHOD` runs on the fly (flags from ``--init-prune-args``) into ``<out>.retrain-work/init-<method>/``,
where a restarted run finds it again. ``--init FOLDER`` starts from a ``sparse24 prune`` output (its masks and
updated weights, so step 0 is exactly the one-shot model); ``--init magnitude`` from the dense model with magnitude
masks. The budget is ``--steps`` or ``--tokens``; the perplexity against retraining tokens goes to
``<out>/retrain_curve.csv/.png``. A killed run restarted with the same arguments resumes bit-identically from
``<out>.retrain-work/``; other arguments are refused, naming each difference.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sparse24.prune.cli import DEFAULT_METHOD as ONESHOT_METHOD  # what --init oneshot (the default) runs
from sparse24.prune.slorb import INITS
from sparse24.train.ast_trainer import ASTConfig, make_ast_trainer, make_student, masks_from_pruned
from torch import Tensor, nn

__all__ = ["ONESHOT_METHOD", "load_init", "oneshot_init", "add_arguments", "run", "retrain", "main", "DESCRIPTION"]

_PRUNE_OWNED = ("--model", "--method", "--out", "--overwrite", "--quick")  # set by retrain, not by --init-prune-args
_INIT_MARKER = "retrain_init.json"


def oneshot_init(model: str | Path, work: Path, prune_args: str = "", device: str = "auto", threads: int = 0) -> Path:
    """The one-shot start: ``sparse24 prune --method ONESHOT_METHOD`` of ``model`` into ``work/init-<method>/``.

    Reused when a previous call with the same flags finished there (a restarted retraining does not prune again);
    a prune that was killed resumes from its own ``.partial`` folder."""
    from sparse24.prune.cli import parse_job

    extra = shlex.split(prune_args)
    for flag in extra:
        if flag.split("=")[0] in _PRUNE_OWNED:
            raise ValueError(f"--init-prune-args may not set {flag.split('=')[0]}: retrain sets it (use --model, or "
                             "--init FOLDER with a folder you pruned yourself)")
    dest = work / f"init-{ONESHOT_METHOD}"
    argv = ["--method", ONESHOT_METHOD, "--model", str(model), "--out", str(dest), "--device", device,
            *(["--threads", str(threads)] if threads else []), *extra]
    marker = dest / _INIT_MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("argv") == argv:
        print(f"sparse24 retrain: one-shot start {dest} (reused)")
        return dest
    if dest.exists():
        shutil.rmtree(dest)  # our own scratch folder: a start made with other flags, or one never finished
    job = parse_job(argv)
    print(f"sparse24 retrain: one-shot start: sparse24 prune {shlex.join(argv)}")
    job.prune()
    from sparse24.fileio import atomic_write_json

    atomic_write_json(marker, {"argv": argv})
    return dest


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


DESCRIPTION = f"""Retrain a model into 2:4 with AST (arXiv 2407.20584): distillation from the frozen dense model (KL +
task loss), masks recomputed every --mask-every steps from a Wanda score |W|*||x|| (input norms of that step's
batches), ramped masked decay on the pruned weights (SR-STE), SLoRB low-rank terms. Each part can be switched off
(--no-kl, --mask-every 0 / --mask-score magnitude, --no-decay, --no-slorb).

Start (--init): 'oneshot' (default) prunes the model with `sparse24 prune --method {ONESHOT_METHOD}` first (kept in
<out>.retrain-work/ so a restart reuses it); a `sparse24 prune` output folder (its masks and updated weights, so step 0
is exactly the one-shot model); or 'magnitude' (dense weights, magnitude masks). Budget: --steps or --tokens. A killed
run restarted with the same arguments resumes bit-identically from <out>.retrain-work/; other arguments are refused."""

EPILOG = """examples:
  sparse24 retrain --tokens 500000 --out pruned/ast       # one-shot start (sparse24 prune's default), then AST
  sparse24 retrain --init-prune-args='--nsamples 32 --seqlen 512' --tokens 100000 --threads 2 --out pruned/ast-cpu
  sparse24 prune --method sparsegpt --out pruned/sgpt
  sparse24 retrain --init pruned/sgpt --tokens 500000 --eval-tokens 50000 --out pruned/sgpt-ast
  sparse24 retrain --init pruned/sgpt --no-slorb --steps 200 --out pruned/sgpt-ast-noslorb   # ablation
  sparse24 retrain --device cuda --dtype float32 --tokens 50000000 --out pruned/ast-gpu   # fp32 master, bf16 autocast
"""


def add_arguments(p: Any) -> None:
    """``sparse24 retrain`` flags."""
    import argparse

    p.description, p.epilog, p.formatter_class = DESCRIPTION, EPILOG, argparse.RawDescriptionHelpFormatter
    g = p.add_argument_group("what to retrain")
    g.add_argument("--model", default="smollm2-135m", help="the dense model (teacher; also the start with --init "
                   "magnitude): a local HF folder or smollm2-135m (default)")
    g.add_argument("--init", default="oneshot", help=f"start: 'oneshot' (default: `sparse24 prune --method "
                   f"{ONESHOT_METHOD}` on the fly), a `sparse24 prune` output folder (its masks and updated weights), "
                   "or 'magnitude' (dense weights, magnitude masks)")
    g.add_argument("--init-prune-args", default="", help="extra `sparse24 prune` flags for --init oneshot, one "
                   "string; write it with '=' (--init-prune-args='--nsamples 32 --seqlen 512') so it is not read as a "
                   "flag (default: prune's own defaults)")
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
    g.add_argument("--mask-every", type=int, default=10, help="recompute masks every N steps; 0 keeps the initial "
                   "mask (default 10)")
    g.add_argument("--mask-score", choices=("wanda", "magnitude"), default="wanda", help="score of a mask refresh: "
                   "wanda = |W|*||x|| with input norms from that step's batches (AST's GPT variant), magnitude = |W| "
                   "(default wanda)")
    g.add_argument("--no-decay", action="store_true", help="no masked decay on the pruned weights (--lambda-max 0)")
    g.add_argument("--no-kl", action="store_true", help="no distillation: task loss only (--alpha-kl 0)")
    g.add_argument("--no-slorb", action="store_true", help="no SLoRB terms (--slorb-group 0)")
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
    g.add_argument("--dtype", default="auto", help="weights: auto (float32 on CPU, checkpoint dtype on GPU), "
                   "float32, bfloat16, float16")
    g.add_argument("--precision", choices=("auto", "no", "bf16", "fp16"), default="auto", help="autocast of "
                   "the forward passes: auto = bf16 on CUDA, none on CPU (default auto)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
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
    """The AST settings of the flags; the ``--no-*`` switches win over the values they zero."""
    return ASTConfig(lambda_max=0.0 if args.no_decay else args.lambda_max, ramp_steps=int(round(args.ramp * steps)),
                     mask_refresh=args.mask_every, mask_score=args.mask_score, alpha_task=args.alpha_task,
                     alpha_kl=0.0 if args.no_kl else args.alpha_kl, alpha_hid=args.alpha_hid,
                     temperature=args.temperature, slorb_group=0 if args.no_slorb else args.slorb_group,
                     slorb_init=args.slorb_init, slorb_trainable_projection=not args.slorb_fixed_projection)


def _steps(args: Any) -> int:
    for flag in ("batch_size", "seq_len", "grad_accum", "eval_windows"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("eval_tokens", "eval_every", "ckpt_every", "eval_seq_len", "threads", "mask_every"):
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
    oneshot: bool = False  # init is the on-the-fly one-shot start


def _prepare(args: Any) -> _Job:
    """Check --out (before any work), resolve the model, device and dtype, tokenize the texts."""
    from sparse24.train.distributed import resolve_precision
    from transformers import AutoTokenizer

    from sparse24.assets import resolve_model
    from sparse24.fileio import check_output_path
    from sparse24.runtime import resolve_device, resolve_dtype
    from sparse24.texts import NAMED_TEXTS, read_text, tokenize_text

    model_dir = resolve_model(args.model)
    init = None if args.init in ("magnitude", "oneshot") else Path(args.init)
    if args.init_prune_args and args.init != "oneshot":
        raise ValueError("--init-prune-args only applies to --init oneshot; drop it")
    texts = [t for t in (args.data, args.eval_text) if t not in NAMED_TEXTS]
    out = check_output_path(args.out, [model_dir, init, *texts], overwrite=args.overwrite)
    device = resolve_device(args.device)
    resolve_precision(args.precision, cpu=not str(device).startswith("cuda"))  # bf16 on a CPU: refused before work
    dtype = resolve_dtype(args.dtype, device) or torch.float32
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenize_text(tok, read_text(args.data))  # [n]
    eval_ids = tokenize_text(tok, read_text(args.eval_text))  # [m]
    return _Job(out, out.with_name(out.name + ".retrain-work"), Path(model_dir), init, device, dtype, tok, ids,
                eval_ids, args.eval_seq_len or args.seq_len, oneshot=args.init == "oneshot")


def _trainer(args: Any, job: _Job, steps: int) -> tuple[Any, dict[str, Any]]:
    """Teacher, student (from --init), the shared Trainer with AST's loss and hooks; and the run record."""
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
              "init": (f"oneshot:{ONESHOT_METHOD} {args.init_prune_args}".strip() if job.oneshot
                       else str(job.init.resolve()) if job.init else "magnitude"),
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
                               accelerator=_accelerator(job.device, args.precision))
    return trainer, record


def _accelerator(device: str, precision: str) -> Any:
    """The accelerate ``Accelerator`` of ``--device``/``--precision`` (auto: bf16 autocast on CUDA)."""
    from sparse24.train.distributed import make_accelerator

    return make_accelerator(precision, cpu=not str(device).startswith("cuda"))


def _dense_params(trainer: Any) -> list[Tensor]:
    """The dense model's parameters (what SLoRB's extra parameters are a fraction of)."""
    return list(trainer.loss_fn.teacher.parameters())


def _print_point(trainer: Any, row: dict[str, Any]) -> None:
    """One line per point of the curve: tokens, perplexity, training tokens/s (median of the last 20 steps; a step
    that scores the curve is slower by the scoring)."""
    import statistics

    if row.get("eval_ppl") is not None and trainer.accelerator.is_main_process:
        tps = statistics.median(r["tokens_per_s"] for r in trainer.history[-20:])
        print(f"sparse24 retrain: step {row['step']}, {row['tokens']:,} tokens: perplexity {row['eval_ppl']:.3f} "
              f"({tps:,.0f} tokens/s)", flush=True)


def retrain(args: Any) -> dict[str, Any]:
    """The whole ``sparse24 retrain`` job: check --out, load, retrain (resumable), save with SLoRB, write the
    perplexity curve; returns the model, tokenizer and the record written into ``sparse24_config.json``'s ``extra``."""
    import os
    import time

    from sparse24.prune.export import check_all_24
    from sparse24.prune.slorb import describe, save_slorb_model
    from sparse24.train.curve import baselines, ppl_hook, score, write_curve
    from sparse24.train.pretrain import clear_run, start_point
    from sparse24.train.telemetry import read_jsonl

    from sparse24.fileio import atomic_write_json

    t_job = time.time()
    steps = _steps(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    job = _prepare(args)
    if job.oneshot:
        job.work.mkdir(parents=True, exist_ok=True)
        job.init = oneshot_init(job.model_dir, job.work, args.init_prune_args, job.device, args.threads)
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
    trainer.on_row.append(_print_point)
    t0 = time.time()
    history = trainer.fit(ckpt)
    if trainer.ast_norms is not None:
        trainer.ast_norms.remove()  # the returned model carries no training hooks
    model = trainer.unwrapped.eval()
    last = history[-1] if history else {}
    tps = sorted(r["tokens_per_s"] for r in history)
    extra = {"method": "ast", **record, "tokens_trained": trainer.tokens, "train_seconds_this_session":
             round(time.time() - t0, 1), "final": {k: last.get(k) for k in ("step", "loss", "val_loss", "eval_ppl")},
             "baselines_ppl": lines, "tokens_per_s": tps[len(tps) // 2] if tps else None,
             "slorb_params": describe(model), "model_params": sum(p.numel() for p in _dense_params(trainer)),
             "torch_threads": torch.get_num_threads(), "wall_seconds_this_session": round(time.time() - t_job, 1),
             "loadavg_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    save_slorb_model(model, out, compressed=args.compressed, overwrite=True, extra=extra)  # --out checked above
    job.tokenizer.save_pretrained(out)
    shutil.copy(work / "metrics.jsonl", out / "retrain_metrics.jsonl")
    start_name = ("magnitude start" if job.init is None else f"one-shot {ONESHOT_METHOD} start" if job.oneshot
                  else f"one-shot start (--init {job.init.name})")
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
