"""One training loop for every recipe (and for AST retraining): pluggable loss, hooks, accelerate, resume.

Order of one optimizer step (as arXiv 2404.01847 places the masked decay):

1. ``grad_accum`` micro-batches: ``loss_fn(model, batch) / grad_accum`` → backward (DDP syncs on the last one);
2. clip the global grad norm (``clip``);
3. ``before_optimizer_step`` hooks: by default SR-STE masked decay on the gradients, ``W.grad += λ(1−M)⊙W``;
4. ``optimizer.step()``; ``after_optimizer_step`` hooks: by default decoupled decay for ``decay_placement="weight"``;
5. scheduler step; :func:`sparse24.update_masks` (refresh due masks, flip rates vs previous / initial mask);
6. dense fine-tune switch once ``step == dense_from``; ``after_step`` hooks (telemetry extras, λ ramps, ...);
7. telemetry row (JSONL; ``on_row`` callbacks see it), validation every ``eval_every`` steps, an atomic checkpoint
   every ``ckpt_every`` steps.

A hook is ``fn(trainer) -> dict | None``; a returned dict is merged into that step's telemetry row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparse24.api import apply_masked_decay, set_dense_finetune, sparse_modules, update_masks
from sparse24.sharding import full_tensor, shard_rows
from sparse24.tracking import FlipTracker

__all__ = ["TrainConfig", "Trainer", "causal_lm_loss", "cosine_schedule"]

ETA_AFTER = 3  # steps timed (after the first) before the expected total time is printed
Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
Hook = Callable[["Trainer"], "dict | None"]


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy; ``labels`` are already shifted (``[B, T]``)."""
    logits = model(input_ids=batch["input_ids"]).logits  # [B, T, V]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))


def cosine_schedule(steps: int, warmup: int, lr: float, min_lr: float) -> Callable[[int], float]:
    """Multiplier of ``lr`` at optimizer step ``s``: linear warm-up, then cosine down to ``min_lr``."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        t = min(1.0, (s - warmup) / max(1, steps - warmup))
        return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))) / lr

    return factor


@dataclass
class TrainConfig:
    """Sizes and optimizer settings of one run (the recipe supplies the method and optimizer defaults)."""

    steps: int
    batch_size: int = 8  # per process and micro-batch
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup: float = 0.01  # fraction of steps
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    clip: float = 1.0
    dense_finetune: float = 0.0  # fraction of steps at the end trained dense
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 8
    ckpt_every: int = 0  # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    out_dir: Path | None = None
    seed: int = 0
    progress: bool = True
    precision: str = "auto"  # accelerate mixed precision: auto = bf16 autocast on CUDA, none on the CPU
    extra: dict = field(default_factory=dict)  # recorded in checkpoints (recipe, model, data)

    @property
    def dense_from(self) -> int | None:
        """Optimizer steps done when the dense fine-tune starts (None: never)."""
        n = int(round(self.steps * self.dense_finetune))
        return self.steps - n if n > 0 else None


def _param_groups(model: nn.Module, wd: float) -> list[dict]:
    """AdamW weight decay on matrices (dim ≥ 2) only, as in nanoGPT and the 2:4 reference code."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _decay_on_grads(trainer: Trainer) -> None:
    apply_masked_decay(trainer.model)  # layers with decay_placement="grad"


def _decay_on_weights(trainer: Trainer) -> None:
    apply_masked_decay(trainer.model, lr=trainer.lr)  # layers with decay_placement="weight"


class Trainer:
    """Owns model, optimizer, scheduler, flip tracker and the step counter; :meth:`fit` runs to ``cfg.steps``."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, get_batch: Callable[[int], Batch],
                 val_batches: list[Batch] | None = None, loss_fn: LossFn = causal_lm_loss,
                 accelerator: Any = None, optimizer: torch.optim.Optimizer | None = None) -> None:
        from sparse24.train.distributed import check_shards, make_accelerator, seed_mvue_streams

        self.cfg, self.get_batch, self.loss_fn = cfg, get_batch, loss_fn
        self.accelerator = accelerator or make_accelerator(cfg.precision)
        opt = optimizer or torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                             betas=tuple(cfg.betas), eps=1e-8)
        self.model, self.optimizer = self.accelerator.prepare(model, opt)  # FSDP2: weights sharded by rows
        check_shards(self.model)
        seed_mvue_streams(self.unwrapped, cfg.seed, self.accelerator.process_index)
        factor = cosine_schedule(cfg.steps, int(round(cfg.warmup * cfg.steps)), cfg.lr, cfg.min_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.val_batches = [{k: v.to(self.accelerator.device) for k, v in b.items()} for b in val_batches or []]
        self.tracker = FlipTracker()
        # initial masks (under FSDP2 each rank tracks its own rows)
        self.tracker.update({n: shard_rows(m.mask, m.weight) for n, m in sparse_modules(self.unwrapped)})
        self.step, self.tokens = 0, 0
        self.before_optimizer_step: list[Hook] = [_decay_on_grads]
        self.after_optimizer_step: list[Hook] = [_decay_on_weights]
        self.after_step: list[Hook] = []
        self.on_row: list[Callable[[Trainer, dict], None]] = []  # see each finished telemetry row (printing, plots)
        self.history: list[dict] = []
        self.log = None  # telemetry writer (main process), set by fit()

    # ---- state -----------------------------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # ---- one step --------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        """One optimizer step (``grad_accum`` micro-batches); returns its telemetry row."""
        cfg, acc = self.cfg, self.accelerator
        self.model.train()
        t0, total = time.perf_counter(), torch.zeros((), device=acc.device)
        for micro in range(cfg.grad_accum):
            index = (self.step * cfg.grad_accum + micro) * acc.num_processes + acc.process_index
            batch = {k: v.to(acc.device) for k, v in self.get_batch(index).items()}
            sync = micro == cfg.grad_accum - 1
            with (acc.no_sync(self.model) if not sync and acc.num_processes > 1 else nullcontext()):
                loss = self.loss_fn(self.model, batch) / cfg.grad_accum
                acc.backward(loss)
            total += loss.detach()
            self.tokens += batch["input_ids"].numel() * acc.num_processes
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.clip) if cfg.clip > 0 else None
        row: dict[str, Any] = {}
        for hook in self.before_optimizer_step:
            row.update(hook(self) or {})
        lr = self.lr
        self.optimizer.step()
        for hook in self.after_optimizer_step:
            row.update(hook(self) or {})
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        flips = update_masks(self.unwrapped, self.tracker)
        if cfg.dense_from is not None and self.step == cfg.dense_from:
            set_dense_finetune(self.model, True)
        for hook in self.after_step:
            row.update(hook(self) or {})
        loss_val = acc.reduce(total, "mean").item() if acc.num_processes > 1 else total.item()
        dt = time.perf_counter() - t0
        step_tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum * acc.num_processes
        return {"step": self.step, "loss": loss_val, "lr": lr,
                "grad_norm": None if grad_norm is None else float(full_tensor(grad_norm)), "tokens": self.tokens,
                "tokens_per_s": step_tokens / dt, "dense": self._dense(), **flips, **row}

    def _dense(self) -> bool:
        """True once every 2:4 layer runs dense (the dense fine-tune); False for a model without 2:4 layers."""
        mods = [m for _, m in sparse_modules(self.model)]
        return bool(mods) and all(bool(m.dense_mode) for m in mods)

    def evaluate(self) -> float | None:
        """Mean validation loss (the same windows every time)."""
        return self.evaluate_with_se()[0]

    def evaluate_with_se(self) -> tuple[float | None, float | None]:
        """(mean validation loss, its standard error over the validation batches; None with one batch)."""
        if not self.val_batches:
            return None, None
        self.model.eval()
        with torch.no_grad():
            losses = torch.stack([self.loss_fn(self.model, b).float() for b in self.val_batches])  # [n_batches]
        self.model.train()
        se = float(losses.std() / len(losses) ** 0.5) if len(losses) > 1 else None
        return float(losses.mean()), se

    # ---- the run ---------------------------------------------------------------------------------------------
    def fit(self, resume: str | Path | Any = None) -> list[dict]:
        """Train to ``cfg.steps``, continuing from a checkpoint when ``resume`` is ``"auto"`` (the newest readable
        ``step-*`` of ``cfg.out_dir``), a folder, or a :class:`~sparse24.train.checkpoint.Checkpoint` already read;
        a checkpoint of a run with other settings (``cfg.extra``) is refused."""
        from sparse24.train.checkpoint import apply_checkpoint, find_resume
        from sparse24.train.telemetry import JsonlLog
        from tqdm.auto import tqdm

        cfg, main = self.cfg, self.accelerator.is_main_process
        ckpt = find_resume(resume, cfg.out_dir, cfg.extra)
        if ckpt is not None:
            apply_checkpoint(self, ckpt)
            del ckpt  # the tensors were copied into the model and optimizer
        if cfg.out_dir is not None and main:
            self.log = JsonlLog(Path(cfg.out_dir) / "metrics.jsonl", truncate_after=self.step)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and main), desc="train",
                   dynamic_ncols=True)
        t_start, t_first, first_step = time.perf_counter(), None, self.step
        try:
            while self.step < cfg.steps:
                row = self.train_step()
                if self.step == first_step + 1:
                    t_first = time.perf_counter()  # the first step pays one-time costs: time the next ones
                elif self.step == first_step + 1 + ETA_AFTER and main and self.step < cfg.steps:
                    self._print_eta((time.perf_counter() - t_first) / ETA_AFTER, time.perf_counter() - t_start, bar)
                self._finish_step(row, bar)
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
                self.log = None
        return self.history

    def _finish_step(self, row: dict[str, Any], bar: Any) -> None:
        """Validation when due, the telemetry row (history, JSONL, ``on_row``), the bar, a checkpoint when due."""
        from sparse24.train.checkpoint import prune_checkpoints, save_checkpoint

        cfg = self.cfg
        if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.steps:
            row["val_loss"], row["val_loss_se"] = self.evaluate_with_se()
        self.history.append(row)
        if self.log is not None:
            self.log.write(row)
        for fn in self.on_row:
            fn(self, row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}",
                        flip=f"{row.get('flip_rate', float('nan')):.4f}")
        if cfg.out_dir is not None and cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
            save_checkpoint(self, Path(cfg.out_dir) / f"step-{self.step:06d}")
            if self.accelerator.is_main_process:
                prune_checkpoints(Path(cfg.out_dir), cfg.keep_checkpoints)

    def _print_eta(self, per_step: float, elapsed: float, bar: Any) -> None:
        """One line: the measured time per step and the expected time of this session and what is left of it."""
        left = (self.cfg.steps - self.step) * per_step
        bar.write(f"sparse24: {per_step:.2f} s/step on this machine: expected total {_duration(elapsed + left)}, "
                  f"about {_duration(left)} left for the remaining {self.cfg.steps - self.step} steps (validation "
                  "and checkpoints extra)")


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"

