"""``pretrain(...)``: data + model + recipe + :class:`~sparse24.train.loop.Trainer` + final save, as one function.

The ``sparse24 train`` command and ``benchmarks/pretrain_quality.py`` both call it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from sparse24.train.data import batch_at, load_data, val_batches
from sparse24.train.loop import TrainConfig, Trainer
from sparse24.train.model import build_model
from sparse24.train.recipe import Recipe, load_recipe

from sparse24.api import sparse_modules, sparsify

__all__ = ["pretrain", "make_trainer", "whole_model", "model_fingerprint", "has_run", "clear_run", "start_point",
           "summary"]


def _tokens_sha(tokens: Any) -> str:
    """Content hash of the train and validation streams: a resumed run must see the same tokens."""
    h = hashlib.sha256()
    for t in (tokens.train, tokens.val):
        h.update(t.numpy().astype("int64").tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: str | Path) -> str | None:
    """Content fingerprint of a model folder's config and weights (None for a size preset)."""
    from sparse24.train.model import PRESETS

    from sparse24.fileio import file_fingerprint

    if str(model) in PRESETS:
        return None
    files = sorted(f for f in Path(model).iterdir() if f.suffix in (".json", ".safetensors", ".bin"))
    return hashlib.sha256(";".join(f"{f.name}:{file_fingerprint(f)}" for f in files).encode()).hexdigest()[:16]


def make_trainer(recipe: Recipe | str, model: str = "llama-tiny", data: str = "shipped", tokenizer: str = "byte",
                 vocab_size: int = 8192, backend: str | None = None, accelerator: Any = None,
                 **train_kw: Any) -> tuple[Trainer, Any]:
    """Build everything for a run; ``train_kw`` are :class:`TrainConfig` fields (``steps`` required).

    ``trainer.cfg.extra`` describes the run (recipe, model and its content hash, data and a hash of its tokens,
    sizes, seed); checkpoints record it and resuming refuses a run that differs."""
    recipe = load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
    if backend:
        recipe = recipe.replace(config={**recipe.config, "backend": backend}) if recipe.method != "dense" else recipe
    tokens = load_data(data, tokenizer, vocab_size)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    opt = {k: getattr(recipe, k) for k in ("lr", "min_lr", "warmup", "betas", "weight_decay", "clip",
                                            "dense_finetune")}
    cfg = TrainConfig(**{**opt, **{k: v for k, v in train_kw.items() if k in fields and v is not None}})
    cfg.extra = {"recipe": recipe.to_dict(), "model": model, "model_sha": model_fingerprint(model),
                 "data": {**tokens.info, "tokens_sha": _tokens_sha(tokens)},
                 "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}}

    def build() -> Any:
        net = build_model(model, tokens.vocab_size, max_len=max(cfg.seq_len, 128), seed=cfg.seed, seq_len=cfg.seq_len)
        spec = recipe.sparsify_spec()
        if spec is not None:
            sparsify(net, spec)
            if not any(True for _ in sparse_modules(net)):
                raise ValueError(f"recipe {recipe.name!r} (layers={recipe.layers}) made no layer 2:4 in model {model}")
        return net

    train = tokens.train
    trainer = Trainer(build(), cfg, lambda i: batch_at(train, i, cfg.batch_size, cfg.seq_len, cfg.seed),
                      val_batches(tokens.val, cfg.batch_size, cfg.seq_len, cfg.eval_batches), accelerator=accelerator)
    trainer.build_model = build  # a fresh unsharded copy of the architecture (FSDP2 export)
    return trainer, tokens


def whole_model(trainer: Trainer) -> Any:
    """The trained model with whole (unsharded) weights: the model itself, or under FSDP2 a fresh copy holding the
    gathered state on the main process (None on the others). Collective under FSDP2: every rank calls it."""
    from sparse24.train.distributed import full_state_dict

    from sparse24.sharding import is_sharded

    model = trainer.unwrapped
    if not any(is_sharded(p) for p in model.parameters()):
        return model
    full = full_state_dict(model, keep=trainer.accelerator.is_main_process)
    if not trainer.accelerator.is_main_process:
        return None
    plain = trainer.build_model()
    plain.load_state_dict({k: v.detach().cpu() for k, v in full.items()})
    return plain


RUN_FILES = ("run.json", "metrics.jsonl", "final")


def has_run(out: str | Path) -> list[str]:
    """What of a previous run ``out`` holds (``final/``, ``metrics.jsonl``, ``run.json``, checkpoints)."""
    from sparse24.train.checkpoint import checkpoints

    out = Path(out)
    found = [n for n in RUN_FILES if (out / n).exists()]
    n = len(checkpoints(out))
    return found + ([f"{n} checkpoint(s)"] if n else [])


def clear_run(out: str | Path) -> None:
    """Delete a previous run's files from ``out`` (checkpoints, metrics, final model, run.json); nothing else."""
    import re

    out = Path(out)
    for p in list(out.iterdir()) if out.is_dir() else []:
        if p.name in RUN_FILES or re.fullmatch(r"step-\d{6,}", p.name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def refuse_fresh_over_run(out: str | Path) -> None:
    """A fresh start must not overwrite a previous run without ``--overwrite``."""
    found = has_run(out)
    if found:
        raise FileExistsError(f"{out} holds a previous run ({', '.join(found)}); starting afresh would overwrite it. "
                              "Pass --resume auto to continue it, --overwrite to discard it, or choose another --out")


def start_point(out: str | Path, resume: Any, extra: dict[str, Any], overwrite: bool = False) -> Any:
    """The checkpoint a run into ``out`` continues from (or None), checked before anything is written.

    Refuses: a fresh start over a previous run (unless ``overwrite``); a checkpoint, or a checkpoint-less run folder,
    whose recorded settings differ from ``extra`` (each difference named); a finished run without checkpoints.
    """
    from sparse24.train.checkpoint import RunMismatch, _wants_fresh, find_resume, run_differences

    out = Path(out)
    if overwrite:
        if not _wants_fresh(resume) and str(resume) != "auto":
            raise ValueError("--overwrite starts the run over; it cannot be combined with --resume FOLDER")
        return None
    if _wants_fresh(resume):
        refuse_fresh_over_run(out)
        return None
    ckpt = find_resume(resume, out, extra)
    if ckpt is None and has_run(out):
        old = out / "run.json"
        diffs = run_differences(json.loads(old.read_text(encoding="utf-8")), extra) if old.is_file() else []
        if diffs:
            raise RunMismatch(f"{out} holds a run with other settings:\n  " + "\n  ".join(diffs) + "\nrerun "
                              "with the same arguments to resume it, pass --overwrite to start over, or choose "
                              "another --out")
        if (out / "final").exists():
            raise FileExistsError(f"{out} holds a finished run (final/) and no checkpoint to continue from; pass "
                                  "--overwrite to train it again, or choose another --out")
    return ckpt


def summary(out: str | Path) -> dict[str, Any]:
    """Final train loss (last step, and mean of the last up to 20 steps), last validation loss (and its standard
    error), steps, tokens of a run folder."""
    from sparse24.train.telemetry import read_jsonl

    rows = read_jsonl(Path(out) / "metrics.jsonl") if (Path(out) / "metrics.jsonl").is_file() else []
    if not rows:
        return {}
    val = [r for r in rows if r.get("val_loss") is not None]
    tail = [r["loss"] for r in rows[-20:] if r.get("loss") is not None]
    return {"step": rows[-1]["step"], "tokens": rows[-1].get("tokens"), "loss": rows[-1].get("loss"),
            "loss_last20": sum(tail) / len(tail) if tail else None, "loss_window": len(tail),
            "val_loss": val[-1]["val_loss"] if val else None,
            "val_loss_se": val[-1].get("val_loss_se") if val else None, "val_step": val[-1]["step"] if val else None}


def pretrain(recipe: Recipe | str, out: str | Path, resume: str | None = "auto", save: bool = True,
             overwrite: bool = False, **kw: Any) -> list[dict]:
    """Train with ``recipe`` into ``out`` (checkpoints, ``metrics.jsonl``, ``final/``); returns this session's rows.

    ``resume="auto"`` continues the newest checkpoint of ``out`` when its run had the same settings (else refuses);
    ``"no"`` refuses a folder holding a previous run unless ``overwrite`` (which discards it)."""
    from sparse24.fileio import atomic_write_json, check_output_path

    out = Path(out)
    inputs = [p for p in (kw.get("model"), kw.get("data"), kw.get("tokenizer")) if p and Path(p).exists()]
    check_output_path(out, inputs, allow_existing=True)
    if not overwrite and str(resume) in ("no", "none", "", "None", "False"):
        refuse_fresh_over_run(out)  # before any data is tokenized or any model built
    trainer, tokens = make_trainer(recipe, out_dir=out, **kw)
    acc = trainer.accelerator
    ckpt = start_point(out, resume, trainer.cfg.extra, overwrite)  # refuses before anything is written
    acc.wait_for_everyone()
    if acc.is_main_process:
        if overwrite:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "run.json", trainer.cfg.extra)
    acc.wait_for_everyone()
    done_before = ckpt is not None and ckpt.meta["step"] >= trainer.cfg.steps and (out / "final").is_dir()
    if done_before and acc.is_main_process:
        print(f"sparse24 train: {out} holds this run finished (step {ckpt.meta['step']}); nothing to train")
    history = trainer.fit(ckpt)
    if save and not done_before:
        from sparse24.train.export import save_final

        acc.wait_for_everyone()
        final_model = whole_model(trainer)
        if acc.is_main_process:
            last = {k: v for k, v in summary(out).items() if k in ("step", "loss", "val_loss")}
            kind = save_final(final_model, out / "final", {**trainer.cfg.extra, "final": last},
                              tokens.tokenizer)
            print(f"sparse24 train: saved {out / 'final'} ({kind})")
    return history
