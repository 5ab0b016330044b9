"""AST (Adaptive Sparse Trainer, arXiv 2407.20584): the loss, the student and the hooks that turn the shared
:class:`~sparse24.train.loop.Trainer` into AST retraining (the ``sparse24 retrain`` command is :mod:`.retrain`).

One optimizer step:

1. loss ``α_task·CE + α_kl·KL_T + α_hid·Σ_l mean((h_s−h_t)²)/mean(h_t²)`` against the frozen dense teacher, T = 2;
   the student forward is ``W⊙M`` (+ the SLoRB term, :mod:`sparse24.prune.slorb`), backward plain STE;
2. clip, then **before** ``optimizer.step()``: ``W.grad += λ(t)(1−M)⊙W`` on the pruned weights only, with the linear
   ramp ``λ(t) = λ_max·min(1, t/T_ramp)`` (``t`` = optimizer steps including this one). The formula lives in
   :func:`sparse24.apply_masked_decay` (layers carry ``SRSTEConfig(decay=λ_max, decay_placement="grad")``; the hook
   passes ``scale = λ(t)/λ_max``). The reference code's traps are avoided: the GPT-2 optimizer's bitwise NOT on int
   masks (an anti-decay on every weight) and the Llama callback that may fire after the step;
3. every ``mask_refresh`` (10) steps the masks are recomputed from the dense weights with a data-aware score, as AST's
   GPT variant: Wanda's ``|W_ij|·‖x_j‖₂`` with the input norms taken from the training micro-batches of that very
   step (:class:`ActivationNorms`; ``mask_score="magnitude"`` uses ``|W|`` alone, ``mask_refresh=0`` keeps the initial
   mask). The layers never refresh on their own: :func:`mask_refresh_hook` does it, so one score rules every refresh.
   Norms are collected only in refresh steps and used at once, so a checkpoint never holds half-collected statistics
   and a resumed run stays bit-identical.
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["ASTConfig", "MASK_SCORES", "lambda_at", "distill_kl", "hidden_state_loss", "DistillLoss", "make_student",
           "masks_from_pruned", "make_ast_trainer", "ramped_decay_hook", "wanda_mask_24", "ActivationNorms",
           "mask_refresh_hook"]

MASK_SCORES = ("wanda", "magnitude")
_NEVER = 2**62  # the layers' own refresh period: AST's hook refreshes instead


@dataclass(frozen=True)
class ASTConfig:
    """AST hyperparameters; defaults follow the Llama-2-7B recipe (α_task 1, α_kl 0.5, T 2, λ_max 6e-5, k 16)."""

    lambda_max: float = 6e-5
    ramp_steps: int = 0  # T_ramp; 0: λ_max from the first step
    mask_refresh: int = 10  # 0: the initial mask is kept
    mask_score: str = "wanda"
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
        if self.mask_refresh < 0:
            raise ValueError(f"AST mask_refresh must be >= 0 (got {self.mask_refresh}); 0 keeps the initial mask")
        if self.mask_score not in MASK_SCORES:
            raise ValueError(f"AST mask_score {self.mask_score!r}: choose one of {MASK_SCORES}")
        if self.temperature <= 0:
            raise ValueError(f"AST temperature must be > 0, got {self.temperature}")
        if self.slorb_init not in INITS:
            raise ValueError(f"AST slorb_init {self.slorb_init!r}: choose one of {INITS}")

    def sparse_config(self) -> SRSTEConfig:
        """The per-layer config: plain 2:4 (initially magnitude), decay on grads; the layers never refresh their
        masks themselves (:func:`mask_refresh_hook` does, with ``mask_score``)."""
        return SRSTEConfig(decay=self.lambda_max, decay_placement="grad", transposable=False,
                           mask_refresh=_NEVER, backend=self.backend)


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


# ---- adaptive masks ------------------------------------------------------------------------------------------------
def wanda_mask_24(weight: Tensor, col_norm: Tensor) -> Tensor:
    """2:4 mask of the Wanda score ``|W_ij|·‖x_j‖`` (``weight`` [out, in], ``col_norm`` [in], the input norms)."""
    if col_norm.shape != weight.shape[-1:]:
        raise ValueError(f"col_norm has shape {tuple(col_norm.shape)}, expected ({weight.shape[-1]},)")
    return magnitude_mask_24(weight.detach().abs().float() * col_norm.float()[None, :])  # [out, in]


class ActivationNorms:
    """Per-layer ``Σ x_j²`` and token counts of the 2:4 layers' inputs, gathered by forward pre-hooks in training
    mode while ``active()`` says so (the refresh steps); :meth:`pop` returns ``‖x_j‖₂ = sqrt(mean x_j²)`` and clears."""

    def __init__(self, model: nn.Module, active: Callable[[], bool]) -> None:
        self.active = active
        self.sums: dict[str, Tensor] = {}  # name -> [in] float32
        self.counts: dict[str, int] = {}
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in sparse_modules(model)]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not module.training or not self.active():
                return
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()  # [tokens, in]
            sq = x.square().sum(0)  # [in]
            self.sums[name] = self.sums[name] + sq if name in self.sums else sq
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]

        return hook

    def pop(self) -> dict[str, Tensor]:
        out = {n: (s / max(self.counts[n], 1)).sqrt() for n, s in self.sums.items()}  # name -> [in]
        self.sums, self.counts = {}, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def mask_refresh_hook(cfg: ASTConfig, norms: ActivationNorms | None) -> Callable[[Any], dict[str, float]]:
    """``after_step`` hook: every ``cfg.mask_refresh`` steps, new masks from the dense weights (Wanda score with
    ``norms`` from this step's micro-batches, or ``|W|``); returns the flip statistics of the trainer's tracker."""

    @torch.no_grad()
    def hook(trainer: Any) -> dict[str, float]:
        if not cfg.mask_refresh or trainer.step % cfg.mask_refresh:
            return {}
        col = norms.pop() if norms is not None else {}
        refreshed = {}
        for name, m in sparse_modules(trainer.unwrapped):
            if bool(m.dense_mode):
                continue
            if cfg.mask_score == "wanda":
                if name not in col:
                    raise RuntimeError(f"AST: no activations of {name} were seen in step {trainer.step}")
                mask = wanda_mask_24(m.weight, col[name].to(m.weight.device))
            else:
                mask = magnitude_mask_24(m.weight.detach())
            m.mask.copy_(mask)
            refreshed[name] = m.mask
        return trainer.tracker.update(refreshed) if refreshed else {}

    return hook


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
    norms = None
    if cfg.mask_refresh and cfg.mask_score == "wanda":
        norms = ActivationNorms(student, lambda: (trainer.step + 1) % cfg.mask_refresh == 0)
    trainer.after_step.insert(0, mask_refresh_hook(cfg, norms))  # before any hook that scores the model
    trainer.ast_norms = norms
    trainer.after_step.append(lambda _t: loss.pop_parts())
    tc.extra = {**tc.extra, "ast": dataclasses.asdict(cfg)}
    return trainer
