"""Mask-health telemetry: flip rate (arXiv 2404.01847) and SAD (arXiv 2102.04010) between masks.

``flip_rate = |M_t xor M_prev| / D`` over all tracked weights, and the same against the initial mask; SAD is the
un-normalised count. A training loop feeds the masks after each refresh and logs the returned dict.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["FlipTracker"]


class FlipTracker:
    """Keeps the initial and previous mask of every layer; :meth:`update` returns flip rates and SAD."""

    def __init__(self) -> None:
        self.initial: dict[str, Tensor] = {}
        self.previous: dict[str, Tensor] = {}

    def update(self, masks: dict[str, Tensor]) -> dict[str, float]:
        """Record new masks; returns ``flip_rate``, ``flip_rate_init``, ``sad``, ``sad_init`` and per-layer rates."""
        out: dict[str, float] = {}
        flips = flips_init = total = 0
        for name, m in masks.items():
            m = m.detach().bool()
            prev = self.previous.get(name, m)
            init = self.initial.setdefault(name, m.clone())
            f, fi = int((m ^ prev).sum()), int((m ^ init).sum())
            out[f"flip_rate/{name}"] = f / m.numel()
            flips, flips_init, total = flips + f, flips_init + fi, total + m.numel()
            self.previous[name] = m.clone()
        out.update(flip_rate=flips / max(total, 1), flip_rate_init=flips_init / max(total, 1),
                   sad=float(flips), sad_init=float(flips_init))
        return out

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {"initial": dict(self.initial), "previous": dict(self.previous)}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.initial, self.previous = dict(state["initial"]), dict(state["previous"])
