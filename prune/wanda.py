"""Wanda 2:4 (Sun et al., arXiv 2306.11695): score ``s_ij = |W_ij| · ‖X_j‖₂``, keep the 2 best of every 4 per row.

``‖X_j‖₂² = Σ_tokens x_j² / nsamples`` is collected *through the already-pruned earlier layers* (the paper's and
llm-compressor's protocol). torchao's ``WandaSparsifier`` instead scores ``|W|·Σx²`` from one dense pass; that
squares the activation term and ignores the earlier pruning, so its masks differ. No weight update.
"""

from __future__ import annotations

from sparse24.prune.base import LayerStats, Pruner, PruneResult, register_pruner
from torch import Tensor

from sparse24.masks import magnitude_mask_24


def wanda_scores(weight: Tensor, sqnorm: Tensor) -> Tensor:
    """``|W| · sqrt(sqnorm)`` in float64 (``[out, in]``), the Wanda importance of every weight."""
    return weight.detach().double().abs() * sqnorm.double().clamp(min=0).sqrt().unsqueeze(0)  # [out, in]


@register_pruner
class WandaPruner(Pruner):
    name = "wanda"
    stats = "sqnorm"
    sequential = True
    summary = "keep the 2 largest |W|·‖X_j‖₂ of every 4 (no weight update)"

    def prune(self, weight: Tensor, stats: LayerStats | None) -> PruneResult:
        if stats is None or stats.sqnorm is None:
            raise ValueError("wanda needs calibration statistics (input column norms); run it through the driver")
        mask = magnitude_mask_24(wanda_scores(weight, stats.sqnorm.to(weight.device)))  # ties: later index wins
        return PruneResult(weight * mask, mask)


__all__ = ["WandaPruner", "wanda_scores"]
