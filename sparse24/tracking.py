"""Mask-health telemetry: flip rate (arXiv 2404.01847) and SAD (arXiv 2102.04010) between masks.

``flip_rate = |M_t xor M_prev| / D`` over all tracked weights, and the same against the initial mask; SAD is the
un-normalised count. A training loop feeds the masks after each refresh and logs the returned dict.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FlipTracker"]


class FlipTracker:
    """Keeps the initial and previous mask of every layer; :meth:`update` returns flip rates and SAD."""

    def __init__(self) -> None:
        self.initial: dict[str, Tensor] = {}
        self.previous: dict[str, Tensor] = {}

    def update(self, masks: dict[str, Tensor], reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Record new masks; returns ``flip_rate``, ``flip_rate_init``, ``sad``, ``sad_init`` and per-layer rates.

        ``reduce`` sums a count tensor over processes (``masks`` are then each process's rows of the layers, as under
        FSDP2); the rates returned are then those of the whole layers, the same on every process."""
        names = list(masks)
        counts = torch.zeros(len(names), 3, dtype=torch.int64)  # [layer, (flips, flips vs initial, entries)]
        for i, name in enumerate(names):
            m = masks[name].detach().bool()
            prev = self.previous.get(name, m)
            init = self.initial.setdefault(name, m.clone())
            counts[i] = torch.stack([(m ^ prev).sum().cpu(), (m ^ init).sum().cpu(), torch.tensor(m.numel())])
            self.previous[name] = m.clone()
        if reduce is not None:
            counts = reduce(counts)
        out: dict[str, float] = {f"flip_rate/{n}": int(c[0]) / max(int(c[2]), 1) for n, c in zip(names, counts)}
        flips, flips_init, total = (int(v) for v in counts.sum(0)) if names else (0, 0, 0)
        out.update(flip_rate=flips / max(total, 1), flip_rate_init=flips_init / max(total, 1),
                   sad=float(flips), sad_init=float(flips_init))
        return out

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {"initial": dict(self.initial), "previous": dict(self.previous)}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.initial, self.previous = dict(state["initial"]), dict(state["previous"])
