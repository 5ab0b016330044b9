"""Magnitude 2:4: in every aligned group of 4 input weights keep the 2 largest |w|. No data.

Ties follow :func:`sparse24.masks.magnitude_mask_24` (the later index wins), which matters for quantised checkpoints:
in the default SmolLM2 (Q4_1) about 15 % of groups have equal 2nd and 3rd largest |w|.
"""

from __future__ import annotations

from sparse24.prune.base import LayerStats, Pruner, PruneResult, register_pruner
from torch import Tensor

from sparse24.masks import magnitude_mask_24


@register_pruner
class MagnitudePruner(Pruner):
    name = "magnitude"
    stats = "none"
    sequential = True
    summary = "keep the 2 largest |w| of every 4 (no calibration data)"

    def prune(self, weight: Tensor, stats: LayerStats | None = None) -> PruneResult:
        mask = magnitude_mask_24(weight)  # [out, in]
        return PruneResult(weight * mask, mask)
