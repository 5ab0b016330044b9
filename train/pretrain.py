"""``pretrain(...)``: data + model + recipe + :class:`~sparse24.train.loop.Trainer` + final save, as one function.

The ``sparse24 train`` command and ``benchmarks/pretrain_quality.py`` both call it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sparse24.train.data import batch_at, load_data, val_batches
from sparse24.train.loop import TrainConfig, Trainer
from sparse24.train.model import build_model
from sparse24.train.recipe import Recipe, load_recipe

from sparse24.api import sparse_modules, sparsify

__all__ = ["pretrain", "make_trainer"]


def make_trainer(recipe: Recipe | str, model: str = "llama-tiny", data: str = "shipped", tokenizer: str = "byte",
                 vocab_size: int = 8192, backend: str | None = None, accelerator: Any = None,
                 **train_kw: Any) -> tuple[Trainer, Any]:
    """Build everything for a run; ``train_kw`` are :class:`TrainConfig` fields (``steps`` required)."""
    recipe = load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
    if backend:
        recipe = recipe.replace(config={**recipe.config, "backend": backend}) if recipe.method != "dense" else recipe
    tokens = load_data(data, tokenizer, vocab_size)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    opt = {k: getattr(recipe, k) for k in ("lr", "min_lr", "warmup", "betas", "weight_decay", "clip",
                                            "dense_finetune")}
    cfg = TrainConfig(**{**opt, **{k: v for k, v in train_kw.items() if k in fields and v is not None}})
    cfg.extra = {"recipe": recipe.to_dict(), "model": model, "data": tokens.info,
                 "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}}
    net = build_model(model, tokens.vocab_size, max_len=max(cfg.seq_len, 128), seed=cfg.seed)
    spec = recipe.sparsify_spec()
    if spec is not None:
        sparsify(net, spec)
        if not any(True for _ in sparse_modules(net)):
            raise ValueError(f"recipe {recipe.name!r} (layers={recipe.layers}) made no layer 2:4 in model {model}")
    train = tokens.train
    trainer = Trainer(net, cfg, lambda i: batch_at(train, i, cfg.batch_size, cfg.seq_len, cfg.seed),
                      val_batches(tokens.val, cfg.batch_size, cfg.seq_len, cfg.eval_batches), accelerator=accelerator)
    return trainer, tokens


def pretrain(recipe: Recipe | str, out: str | Path, resume: str | None = "auto", save: bool = True,
             **kw: Any) -> list[dict]:
    """Train with ``recipe`` into ``out`` (checkpoints, ``metrics.jsonl``, ``final/``); returns the step rows."""
    trainer, tokens = make_trainer(recipe, out_dir=Path(out), **kw)
    acc = trainer.accelerator
    if acc.is_main_process:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "run.json").write_text(json.dumps(trainer.cfg.extra, indent=2, default=str))
    history = trainer.fit(resume)
    if save:
        from sparse24.train.export import save_final

        acc.wait_for_everyone()
        if acc.is_main_process:
            last = {k: v for k, v in (history[-1] if history else {}).items() if k in ("step", "loss", "val_loss")}
            kind = save_final(trainer.unwrapped, Path(out) / "final", {**trainer.cfg.extra, "final": last},
                              tokens.tokenizer)
            print(f"sparse24 train: saved {Path(out) / 'final'} ({kind})")
    return history
