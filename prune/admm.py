"""ADMM 2:4 mask search + exact refit (the ``admm`` pruner; Boža 2024 arXiv 2401.02938, ALPS arXiv 2406.07831).

Per linear, minimise the calibration output error ``Σ_rows (w − ŵ)ᵀ H (w − ŵ)`` over 2:4-sparse ``Ŵ`` by ADMM on the
split ``Ŵ = Z``, ``Z`` 2:4:

    Ŵ ← (W H + ρ (Z − U)) (H + ρI)⁻¹        (all rows at once; H + ρI through one eigendecomposition of H)
    Z ← Π_2:4(Ŵ + U)                          (keep the 2 largest |·| of every 4)
    U ← U + Ŵ − Z

with the penalty ``ρ`` rising geometrically from ``rho_start`` to ``rho_end`` over ``iters`` steps (defaults 0.1 → 10 in
40 steps: on SmolLM2's layers 15/30/60 steps give 93/97/100 % of the 60-step gain over the refit), so the mask is
chosen while the weights can still move (small ρ) and freezes as ρ grows. The work is done in the input-normalised
basis (columns scaled by ``√H_jj``, so ``H`` has a unit diagonal and ``|Ŵ|`` there is Wanda's score), float32 for the
iterations. Then the kept weights of the final mask are re-fitted exactly (:func:`sparse24.prune.refit.refit_rows`).

Per row the result is the best (lowest undamped calibration error) of three candidates: this ADMM mask + refit,
SparseGPT's mask + refit, and SparseGPT itself (its own damping 0.01) — so it is never worse than ``sparsegpt`` on
the calibration objective (the mixed one below when the dense target is on). ``percdamp`` (default 0.01, as
SparseGPT) damps the ADMM and the refit: the ridge ``λ‖w − ŵ‖²`` towards the dense weights. 0.05 had a 1.7 % lower
held-out layer error on SmolLM2-135M layers 2/15/28 but a 1.3 % higher end-to-end perplexity (63.66 vs 62.84 at
512), so the default stays 0.01.
Linears that share one input (q/k/v, gate/up: the driver hands them the same statistics object) share one
eigendecomposition. No extra parameters, no retraining.

**Dense target** (``dense_target`` = mix ``α``, default 0.2). SparseGPT's objective asks the pruned layer to reproduce
what the *dense* weights compute on the already-pruned inputs ``X``; the errors of the earlier layers are then
carried along. With ``α > 0`` the driver also runs the dense model's layers on the dense activations ``X_d`` and the
target becomes ``(1 − α) W X + α W X_d``, so each layer compensates part of what upstream pruning changed:
``W H`` becomes ``W T`` with ``T = (1 − α) H + α crossᵀ`` (``cross = 2/N Σ x x_dᵀ``) in the ADMM step and the refit,
and the three candidates are compared on that objective. Only part: at ``α = 1`` the refit chases the dense outputs
with large weights and the model breaks (quick protocol, SmolLM2-135M, perplexity at 512: 61.98 / 57.07 / 53.93 /
54.39 / 60.06 / 238.8 / 1347 at α = 0 / 0.1 / 0.2 / 0.3 / 0.5 / 0.75 / 1; 0.2 is the default, below the cliff).
Without ``cross`` (statistics built by hand) ``X_d = X`` is assumed: the plain objective, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sparse24.prune.args import flag
from sparse24.prune.base import LayerStats, Pruner, PruneResult, register_pruner
from sparse24.prune.refit import REFIT, check_hessian_stats, damped_hessian, fit_error, layer_error, refit_rows
from sparse24.prune.sparsegpt import check_obs_args, prepare_hessian, sparsegpt_24
from torch import Tensor

__all__ = ["AdmmPruner", "admm_mask_24", "project_24", "Factorised"]


def project_24(v: Tensor) -> Tensor:
    """Bool mask keeping the 2 largest ``|v|`` of every aligned group of 4 along the last dim (ties: any 2)."""
    a = v.abs().reshape(-1, 4)  # [G, 4]
    keep = torch.zeros(a.shape, dtype=torch.bool, device=v.device)
    keep.scatter_(1, a.topk(2, dim=1).indices, True)
    return keep.reshape(v.shape)


class Factorised:
    """Damped Hessian of one input, its scale ``√H_jj``, the normalised ``H``'s eigendecomposition, SparseGPT's U;
    with ``cross`` and ``mix > 0`` also the target matrix ``T = (1 − mix) H + mix crossᵀ`` (see :meth:`rhs`)."""

    def __init__(self, hessian: Tensor, percdamp: float, sparsegpt_percdamp: float = 0.01,
                 cross: Tensor | None = None, mix: float = 0.0) -> None:
        self.h, self.dead = damped_hessian(hessian, percdamp)  # [in, in] float64, [in] bool
        self.damp = percdamp * float(torch.diagonal(self.h).mean()) / (1 + percdamp)  # λ of damped_hessian
        self.t = None if cross is None or mix == 0 else \
            (1 - mix) * hessian.double() + mix * cross.double().t()  # [in, in]
        self.scale = torch.diagonal(self.h).sqrt()  # [in]
        hn = self.h / self.scale.unsqueeze(1) / self.scale.unsqueeze(0)  # [in, in] unit diagonal
        lam, q = torch.linalg.eigh(hn)
        self.hn, self.lam, self.q = hn.float(), lam.float(), q.float()  # [in, in], [in], [in, in]
        self.sparsegpt = prepare_hessian(hessian, sparsegpt_percdamp)  # SparseGPT's own U, for the fallback

    def rhs(self, weight: Tensor, w: Tensor) -> Tensor | None:
        """``W T + λ W`` ``[out, in]`` float64 (``weight`` the original, ``w`` with dead columns zeroed), or None
        for the plain target ``T = H`` (then every caller uses ``W h``, bit for bit the original method)."""
        if self.t is None:
            return None
        return weight.detach().double() @ self.t + self.damp * w


def admm_mask_24(weight: Tensor, f: Factorised, iters: int, rho_start: float, rho_end: float,
                 rhs: Tensor | None = None) -> Tensor:
    """The 2:4 keep-mask ``[out, in]`` that the ADMM iteration settles on (see the module docstring); ``rhs`` replaces
    ``W H`` (:meth:`Factorised.rhs`)."""
    wn = (weight.detach().double() * f.scale).float()  # [out, in] normalised basis
    base = wn @ f.hn if rhs is None else (rhs / f.scale).float()  # [out, in]  W H
    keep = project_24(wn)
    z, u = wn * keep, torch.zeros_like(wn)
    growth = (rho_end / rho_start) ** (1.0 / max(iters - 1, 1))
    rho = rho_start
    for _ in range(iters):
        x = (((base + rho * (z - u)) @ f.q) / (f.lam + rho)) @ f.q.t()  # [out, in]
        keep = project_24(x + u)
        z = (x + u) * keep
        u += x - z
        rho *= growth
    return keep


@dataclass(frozen=True)
class AdmmArgs:
    """ADMM's hyperparameters (``--method admm``)."""

    iters: int = flag(40, "ADMM steps of the 2:4 mask search per linear (80 buys ~0.6 %% lower layer error at 2x the "
                      "time)", name="--admm-iters")
    rho_start: float = flag(0.1, "ADMM penalty at the first step (relative to the normalised Hessian)",
                            name="--admm-rho-start")
    rho_end: float = flag(10.0, "ADMM penalty at the last step (grown geometrically from --admm-rho-start)",
                          name="--admm-rho-end")
    percdamp: float = flag(0.01, "damping of the ADMM and refit Hessian, a fraction of mean diag(H)",
                           name="--admm-percdamp")
    blocksize: int = flag(128, "column block of the SparseGPT candidate ADMM is compared against",
                          name="--admm-blocksize")
    dense_target: float = flag(0.2, "how much of the target is the dense model's layer output rather than this "
                               "layer's own output on the pruned inputs (error compensation): 0 = SparseGPT's "
                               "objective, 1 = the dense outputs only; quick-protocol perplexity 61.98 / 57.07 / "
                               "53.93 / 54.39 / 60.06 / 238.8 at 0 / 0.1 / 0.2 / 0.3 / 0.5 / 0.75",
                               name="--admm-dense-target")

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise ValueError(f"--admm-iters {self.iters}: must be >= 1 (40 is the default)")
        if not 0 < self.rho_start <= self.rho_end:
            raise ValueError(f"--admm-rho-start {self.rho_start}, --admm-rho-end {self.rho_end}: need "
                             "0 < rho_start <= rho_end")
        check_obs_args(self)
        if not 0.0 <= self.dense_target <= 1.0:
            raise ValueError(f"--admm-dense-target {self.dense_target}: must be in [0, 1]")


@register_pruner
class AdmmPruner(Pruner):
    name = "admm"
    stats = "hessian"
    sequential = True
    summary = ("ADMM 2:4 mask search + exact refit on a target mixing in the dense model's outputs; never worse than "
               "SparseGPT per row on it (default)")
    Args = AdmmArgs
    rows_independent = True  # every step is row-wise given H: q/k/v and gate/up run stacked
    # its own math is ~85 % of a layer, so bf16 forwards would save ~10 % of the time for a measured +0.7 % perplexity
    # (quick protocol: 63.17 vs 62.75); --forward-dtype bfloat16 still asks for them
    bf16_forwards = False

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "compute_dtype": "float32 ADMM and refit, float64 Hessian and errors"}

    @property
    def dense_target(self) -> bool:  # type: ignore[override]
        return self.args.dense_target > 0

    def _factorised(self, stats: LayerStats) -> Factorised:
        # without ``cross`` (statistics built by hand, no dense stream) the dense model's inputs are taken to be these
        # inputs (nothing pruned upstream): cross = H, and the mix is the plain objective, bit for bit
        hessian = check_hessian_stats(stats, self.name)
        return self.per_input(stats, lambda: Factorised(hessian, self.args.percdamp, cross=stats.cross,
                                                        mix=self.args.dense_target))

    def fit_target(self, weight: Tensor, stats: LayerStats | None) -> Tensor:
        """With a dense target, ``W' = (W T + λW)(H + λI)⁻¹``: the plain objective of ``W'`` on the damped ``H`` is
        the mixed objective (``W' (H + λI) = W T + λW``, what ADMM and the refit fit); else ``weight``."""
        f = self._factorised(stats) if self.dense_target else None
        if f is None or f.t is None:
            return weight
        w = weight.detach().double().clone()
        w[:, f.dead] = 0.0
        return torch.linalg.solve(f.h, f.rhs(weight, w).t()).t().to(weight.dtype)  # [out, in] (h symmetric)

    def prune(self, weight: Tensor, stats: LayerStats | None) -> PruneResult:
        hessian = check_hessian_stats(stats, self.name)
        f = self._factorised(stats)
        w = weight.detach().double().clone()  # [out, in]
        w[:, f.dead] = 0.0
        rhs = f.rhs(weight, w)  # [out, in] or None (plain target)
        sg, sg_mask = sparsegpt_24(weight, None, self.args.blocksize, prepared=f.sparsegpt)  # SparseGPT's defaults
        mask = admm_mask_24(w, f, self.args.iters, self.args.rho_start, self.args.rho_end, rhs)
        candidates = [(sg.double(), sg_mask), (refit_rows(w, sg_mask, f.h, start=sg, rhs=rhs, **REFIT), sg_mask),
                      (refit_rows(w, mask, f.h, rhs=rhs, **REFIT), mask)]
        if rhs is None:
            errs = torch.stack([layer_error(weight, c * m, hessian) for c, m in candidates])  # [3, out]
        else:  # the undamped objective of the mixed target
            plain = rhs - f.damp * w  # [out, in]  W T
            errs = torch.stack([fit_error(c * m, hessian, plain) for c, m in candidates])  # [3, out]
        best = errs.argmin(0)  # [out] ties: the earlier candidate (SparseGPT first)
        new = torch.zeros_like(w)
        keep = torch.zeros_like(sg_mask)
        for i, (c, m) in enumerate(candidates):
            rows = best == i
            new[rows], keep[rows] = (c * m)[rows], m[rows]
        return PruneResult(new.to(weight.dtype), keep)
