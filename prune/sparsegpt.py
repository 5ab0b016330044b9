"""SparseGPT 2:4 (Frantar & Alistarh, arXiv 2301.00774): OBS pruning with weight updates, column by column.

With ``H = 2/N Σ x xᵀ`` (float64 here) and ``U`` the upper Cholesky factor of ``H⁻¹`` (``UᵀU = H⁻¹``), columns are
visited in blocks of ``blocksize``; at every column ``i ≡ 0 (mod 4)`` each row prunes the 2 entries of ``i..i+3`` with
the smallest ``w² / U_jj²`` (using the weights as updated so far; ties: the earlier index is pruned, i.e. the
:func:`sparse24.masks.magnitude_mask_24` rule). Every column's error ``(w − q) / U_ii`` is pushed onto the later
columns of the block, and the block's errors onto all later columns after it.

Dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their weights are zeroed; damping adds ``percdamp · mean(diag H)``;
if the Cholesky factorisation still fails the damping is multiplied by 10 (up to ``max_retries`` times).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sparse24.prune.args import flag
from sparse24.prune.base import LayerStats, Pruner, PruneResult, register_pruner
from torch import Tensor

from sparse24.masks import magnitude_mask_24

__all__ = ["SparseGPTArgs", "SparseGPTPruner", "sparsegpt_24", "inverse_cholesky"]


def inverse_cholesky(h: Tensor, percdamp: float = 0.01, max_retries: int = 5) -> tuple[Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` with ``λ = percdamp·mean(diag H)``, raising λ on failure.

    Returns ``(U, λ)``. ``h`` must already have its dead diagonal entries set to 1.
    """
    mean_diag = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    damp = percdamp * mean_diag
    for _ in range(max_retries + 1):
        lower, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(lower)  # [in, in]
            upper, info2 = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info2) == 0:
                return upper, damp
        damp *= 10.0
    raise RuntimeError(f"SparseGPT: the (finite) Hessian is not positive definite even with damping {damp / 10:.3g}; "
                       "use more calibration samples (--nsamples) or a larger --percdamp")


def sparsegpt_24(weight: Tensor, hessian: Tensor, blocksize: int = 128, percdamp: float = 0.01,
                 dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Prune ``weight`` ``[out, in]`` to 2:4 with OBS updates; returns ``(pruned weight (weight.dtype), keep-mask)``."""
    rows, cols = weight.shape
    if cols % 4 or blocksize % 4:
        raise ValueError(f"SparseGPT 2:4 needs in_features ({cols}) and blocksize ({blocksize}) divisible by 4")
    w = weight.detach().to(dtype).clone()  # [out, in]
    h = hessian.detach().to(device=w.device, dtype=dtype).clone()  # [in, in]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u, _ = inverse_cholesky(h, percdamp)  # [in, in] upper
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        w1, u1 = w[:, b0:b1].clone(), u[b0:b1, b0:b1]  # [out, B], [B, B]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        d1 = torch.diagonal(u1)  # [B]
        for i in range(b1 - b0):
            if i % 4 == 0:
                score = w1[:, i : i + 4] ** 2 / d1[i : i + 4] ** 2  # [out, 4]
                pruned[:, b0 + i : b0 + i + 4] = ~magnitude_mask_24(score)
            col = w1[:, i]
            q = col.masked_fill(pruned[:, b0 + i], 0.0)
            e = (col - q) / d1[i]  # [out]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            q1[:, i], err1[:, i] = q, e
        w[:, b0:b1] = q1
        w[:, b1:] -= err1 @ u[b0:b1, b1:]
    mask = ~pruned
    return (w * mask).to(weight.dtype), mask


@dataclass(frozen=True)
class SparseGPTArgs:
    """SparseGPT's hyperparameters (``--method sparsegpt``)."""

    blocksize: int = flag(128, "SparseGPT column block: errors are pushed onto later columns block by block")
    percdamp: float = flag(0.01, "SparseGPT damping, a fraction of mean diag(H) added to the Hessian's diagonal")

    def __post_init__(self) -> None:
        if self.blocksize <= 0 or self.blocksize % 4:
            raise ValueError(f"--blocksize {self.blocksize}: must be a positive multiple of 4")
        if self.percdamp <= 0:
            raise ValueError(f"--percdamp {self.percdamp}: must be > 0 (0.01 is the paper's value)")


@register_pruner
class SparseGPTPruner(Pruner):
    name = "sparsegpt"
    stats = "hessian"
    sequential = True
    summary = "OBS: prune the 2 smallest w²/[H⁻¹]_jj of every 4 and update the rest (block 128, damp 0.01)"
    Args = SparseGPTArgs

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "compute_dtype": "float64"}

    def prune(self, weight: Tensor, stats: LayerStats | None) -> PruneResult:
        if stats is None or stats.hessian is None:
            raise ValueError("sparsegpt needs the input Hessian; run it through the driver (sparse24 prune)")
        w, mask = sparsegpt_24(weight, stats.hessian, self.args.blocksize, self.args.percdamp)
        return PruneResult(w, mask)
