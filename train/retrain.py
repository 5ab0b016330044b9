"""``sparse24 retrain``: AST (Adaptive Sparse Trainer, arXiv 2407.20584) retrains an LM into 2:4 with distillation from
its frozen dense self, on the shared :class:`~sparse24.train.loop.Trainer` (resume, telemetry, ETA).

It starts from the dense model with magnitude masks (``--init magnitude``) or from a ``sparse24 prune`` output
(``--init FOLDER``: that model's masks and updated weights, so step 0 is exactly the one-shot model). The budget is
``--steps`` or ``--tokens``. A killed run restarted with the same arguments resumes bit-identically from
``<out>.retrain-work/``; other arguments are refused, naming each difference.

One optimizer step:

1. loss ``α_task·CE + α_kl·KL_T + α_hid·Σ_l mean((h_s−h_t)²)/mean(h_t²)`` against the frozen dense teacher, T = 2;
   the student forward is ``W⊙M`` (+ the SLoRB term, :mod:`sparse24.prune.slorb`), backward plain STE;
2. clip, then **before** ``optimizer.step()``: ``W.grad += λ(t)(1−M)⊙W`` on the pruned weights only, with the linear
   ramp ``λ(t) = λ_max·min(1, t/T_ramp)`` (``t`` = optimizer steps including this one). The formula lives in
   :func:`sparse24.apply_masked_decay` (layers carry ``SRSTEConfig(decay=λ_max, decay_placement="grad")``; the hook
   passes ``scale = λ(t)/λ_max``). The reference code's traps are avoided: the GPT-2 optimizer's bitwise NOT on int
   masks (an anti-decay on every weight) and the Llama callback that may fire after the step;
3. every ``mask_refresh`` (10) steps the masks are recomputed from the dense weights (2:4 magnitude).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sparse24.prune.slorb import INITS, add_slorb
from torch import Tensor, nn

from sparse24.api import apply_masked_decay, sparse_modules, sparsify
from sparse24.config import SRSTEConfig
from sparse24.masks import magnitude_mask_24

__all__ = ["ASTConfig", "lambda_at", "distill_kl", "hidden_state_loss", "DistillLoss", "make_student",
           "masks_from_pruned", "load_init", "make_ast_trainer", "ramped_decay_hook", "add_arguments", "run",
           "retrain"]


@dataclass(frozen=True)
class ASTConfig:
    """AST hyperparameters; defaults follow the Llama-2-7B recipe (α_task 1, α_kl 0.5, T 2, λ_max 6e-5, k 16)."""

    lambda_max: float = 6e-5
    ramp_steps: int = 0  # T_ramp; 0: λ_max from the first step
    mask_refresh: int = 10
    alpha_task: float = 1.0
    alpha_kl: float = 0.5
    alpha_hid: float = 0.0
    temperature: float = 2.0
    slorb_group: int = 16  # 0: no SLoRB
    slorb_init: str = "mean"
    slorb_trainable_projection: bool = True
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("lambda_max", "ramp_steps", "alpha_task", "alpha_kl", "alpha_hid", "slorb_group"):
            if getattr(self, name) < 0:
                raise ValueError(f"AST {name} must be >= 0, got {getattr(self, name)}")
        if self.mask_refresh < 1:
            raise ValueError(f"AST mask_refresh must be >= 1 (got {self.mask_refresh}); to keep the initial mask "
                             "use a period longer than the run")
        if self.temperature <= 0:
            raise ValueError(f"AST temperature must be > 0, got {self.temperature}")
        if self.slorb_init not in INITS:
            raise ValueError(f"AST slorb_init {self.slorb_init!r}: choose one of {INITS}")

    def sparse_config(self) -> SRSTEConfig:
        """The per-layer config: plain 2:4 magnitude masks refreshed every ``mask_refresh`` steps, decay on grads."""
        return SRSTEConfig(decay=self.lambda_max, decay_placement="grad", transposable=False,
                           mask_refresh=self.mask_refresh, backend=self.backend)


def lambda_at(t: int, lambda_max: float, ramp_steps: int) -> float:
    """``λ(t) = λ_max·min(1, t/T_ramp)`` (``λ_max`` when ``T_ramp = 0``)."""
    return lambda_max if ramp_steps <= 0 else lambda_max * min(1.0, t / ramp_steps)


# ---- loss ----------------------------------------------------------------------------------------------------------
def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T²/n_tokens · Σ KL(softmax(z_t/T) ‖ softmax(z_s/T))`` over tokens and vocabulary (float32 math)."""
    v = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.float().reshape(-1, v) / temperature, dim=-1)  # [n, V]
    log_t = F.log_softmax(teacher_logits.float().reshape(-1, v) / temperature, dim=-1)  # [n, V]
    return (log_t.exp() * (log_t - log_s)).sum() * temperature**2 / log_s.shape[0]


def hidden_state_loss(student: tuple[Tensor, ...], teacher: tuple[Tensor, ...]) -> Tensor:
    """``Σ_l mean((h_s−h_t)²)/mean(h_t²)`` over the decoder-layer outputs (HF ``hidden_states[1:]``)."""
    terms = [(s.float() - t.float()).square().mean() / t.float().square().mean().clamp(min=1e-12)
             for s, t in zip(student[1:], teacher[1:], strict=True)]
    return torch.stack(terms).sum()


class DistillLoss:
    """``loss_fn(model, batch)`` for the trainer; keeps per-step means of its parts for telemetry."""

    def __init__(self, teacher: nn.Module, cfg: ASTConfig) -> None:
        self.teacher, self.cfg = teacher.eval().requires_grad_(False), cfg
        self.sums: dict[str, float] = {}
        self.count = 0

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        cfg, hid = self.cfg, self.cfg.alpha_hid > 0
        ids = batch["input_ids"]
        s_out = model(input_ids=ids, output_hidden_states=hid, use_cache=False)
        logits = s_out.logits  # [B, T, V]
        parts = {"ce": F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))}
        if cfg.alpha_kl > 0 or hid:  # the teacher runs only when a term needs it
            with torch.no_grad():
                t_out = self.teacher(input_ids=ids, output_hidden_states=hid, use_cache=False)
        if cfg.alpha_kl > 0:
            parts["kl"] = distill_kl(logits, t_out.logits, cfg.temperature)
        if hid:
            parts["hid"] = hidden_state_loss(s_out.hidden_states, t_out.hidden_states)
        weights = {"ce": cfg.alpha_task, "kl": cfg.alpha_kl, "hid": cfg.alpha_hid}
        if model.training:
            for k, v in parts.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
            self.count += 1
        return sum(weights[k] * v for k, v in parts.items())

    def pop_parts(self) -> dict[str, float]:
        """Means of the parts since the last call (the micro-batches of one step)."""
        out = {f"loss_{k}": v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


# ---- model ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def masks_from_pruned(model: nn.Module, folder: str | Path) -> dict[str, Tensor]:
    """Initial masks from a one-shot pruned sparse24 folder (Wanda, SparseGPT, ...), for ``model``'s linears.

    The kept pattern is the non-zeros of the pruned weight; a group with fewer than 2 non-zeros (a kept weight that is
    exactly 0) is filled up by the dense weight's magnitude, so every group keeps exactly 2.
    """
    from sparse24.prune.model_io import ShardReader

    from sparse24.io import read_sparse24_config

    names = read_sparse24_config(folder)["modules"]
    reader = ShardReader(folder)
    masks = {}
    for name in names:
        dense = model.get_submodule(name).weight.detach()  # [out, in]
        pruned = reader.get(f"{name}.weight", dense.device)
        if pruned.shape != dense.shape:
            raise ValueError(f"--init {folder}: {name} has shape {tuple(pruned.shape)}, the model has "
                             f"{tuple(dense.shape)}; prune the same model")
        mag = dense.abs().double()
        score = (pruned != 0).double() * (2 * mag.max() + 1) + mag  # kept first, then by |W|
        masks[name] = magnitude_mask_24(score)
    return masks


def make_student(model: nn.Module, cfg: ASTConfig, init_masks: dict[str, Tensor] | None = None,
                 filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Make the dense ``model`` 2:4 in place (every linear but the head), set the initial masks, add SLoRB."""
    sparsify(model, cfg.sparse_config(), filter_fn)
    mods = dict(sparse_modules(model))
    if not mods:
        raise ValueError("AST: no linear layer became 2:4 (check --targets/--ignore)")
    for name, mask in (init_masks or {}).items():
        if name not in mods:
            raise ValueError(f"initial mask for {name}, which is not a 2:4 layer of the student")
        mods[name].mask.copy_(mask.to(mods[name].mask.device))
    if cfg.slorb_group:
        add_slorb(model, cfg.slorb_group, cfg.slorb_init, cfg.slorb_trainable_projection)
    return model


# ---- trainer -------------------------------------------------------------------------------------------------------
def ramped_decay_hook(cfg: ASTConfig) -> Callable[[Any], dict[str, float]]:
    """``before_optimizer_step`` hook: ``W.grad += λ(t)(1−M)⊙W`` with ``t`` = the step being taken (1-based)."""

    def hook(trainer: Any) -> dict[str, float]:
        lam = lambda_at(trainer.step + 1, cfg.lambda_max, cfg.ramp_steps)
        if cfg.lambda_max > 0:
            apply_masked_decay(trainer.model, scale=lam / cfg.lambda_max)
        return {"lambda": lam}

    return hook


def make_ast_trainer(student: nn.Module, teacher: nn.Module, cfg: ASTConfig, train_cfg: Any, train_tokens: Tensor,
                     val_tokens: Tensor | None = None, accelerator: Any = None,
                     optimizer: torch.optim.Optimizer | None = None) -> Any:
    """A :class:`~sparse24.train.loop.Trainer` running AST on random windows of ``train_tokens`` (1-D ids)."""
    from sparse24.train.data import batch_at, val_batches
    from sparse24.train.loop import Trainer

    tc = train_cfg
    val = val_batches(val_tokens, tc.batch_size, tc.seq_len, tc.eval_batches) if val_tokens is not None else None
    loss = DistillLoss(teacher, cfg)
    trainer = Trainer(student, tc, lambda i: batch_at(train_tokens, i, tc.batch_size, tc.seq_len, tc.seed), val,
                      loss_fn=loss, accelerator=accelerator, optimizer=optimizer)
    loss.teacher.to(trainer.accelerator.device)
    trainer.before_optimizer_step = [ramped_decay_hook(cfg)]  # replaces the constant-λ default: one decay, ramped
    trainer.after_step.append(lambda _t: loss.pop_parts())
    tc.extra = {**tc.extra, "ast": dataclasses.asdict(cfg)}
    return trainer


# ---- the retraining job -------------------------------------------------------------------------------------------
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
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="sparse24 retrain")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, RuntimeError, PermissionError) as e:
        print(f"sparse24 retrain: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
