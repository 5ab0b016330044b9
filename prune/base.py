"""The pruner contract and the method registry.

A pruner sees one linear at a time: its dense weight ``[out, in]`` and the calibration statistics the driver collected
for that linear's input, and returns a dense weight with zeros plus the keep-mask. It never packs, never picks a
backend and never touches the model; the driver (:mod:`sparse24.prune.driver`) owns the model and the data flow.

Two class attributes tell the driver what to do:

- ``stats``: which input statistics to accumulate: ``"none"`` (no calibration pass), ``"sqnorm"`` (per input column
  Σ x², i.e. the Hessian diagonal, as Wanda and ARMOR use) or ``"hessian"`` (Σ x xᵀ, SparseGPT).
- ``sequential``: ``True`` feeds layer ``l+1`` with the *pruned* layer ``l`` (Wanda / SparseGPT protocol);
  ``False`` feeds it with the *dense* layer (one calibration pass of the dense model, layers independent; ARMOR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

__all__ = ["LayerStats", "PruneResult", "Pruner", "register_pruner", "get_pruner", "PRUNERS", "method_table"]


@dataclass
class LayerStats:
    """Calibration statistics of one linear's input ``X`` (``[tokens, in]`` over all calibration samples).

    ``sqnorm[j] = Σ_tokens x_j² / nsamples`` and ``hessian = 2/nsamples · Σ_tokens x xᵀ`` (the SparseGPT scaling; a
    global factor never changes a mask). Both are float64; a field the pruner did not ask for is ``None``.
    """

    nsamples: int
    tokens: int
    sqnorm: Tensor | None = None  # [in]
    hessian: Tensor | None = None  # [in, in]


@dataclass
class PruneResult:
    """A pruned weight (same shape and dtype as the input, zeros where pruned) and its bool keep-mask."""

    weight: Tensor  # [out, in]
    mask: Tensor  # [out, in] bool, exactly 2 True per aligned group of 4 along `in`


class Pruner:
    """Base class: subclasses set ``name``, ``stats``, ``sequential``, ``summary`` and implement :meth:`prune`."""

    name: ClassVar[str] = ""
    stats: ClassVar[str] = "none"
    sequential: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def prune(self, weight: Tensor, stats: LayerStats | None) -> PruneResult:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Hyperparameters recorded in ``sparse24_config.json`` (and compared on resume)."""
        return {}


PRUNERS: dict[str, type[Pruner]] = {}


def register_pruner(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: make a pruner available as ``--method <cls.name>``."""
    if cls.stats not in ("none", "sqnorm", "hessian"):
        raise ValueError(f"{cls.__name__}.stats={cls.stats!r}; choose 'none', 'sqnorm' or 'hessian'")
    PRUNERS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    from sparse24.prune import (  # noqa: F401  (registration side effect)
        admm,  # registers 'admm'
        armor_model,  # noqa: F401  (registers 'armor')
        ast,
        magnitude,
        refit,  # registers 'sparsegpt-refit'
        sparsegpt,
        wanda,
    )


def get_pruner(name: str, **kwargs: Any) -> Pruner:
    """Instantiate a registered pruner by name; unknown names list the choices."""
    _load_builtin()
    if name not in PRUNERS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {sorted(PRUNERS)} (--method list)")
    return PRUNERS[name](**kwargs)


def method_table() -> str:
    """One line per registered method, for ``--method list``."""
    _load_builtin()
    rows = [f"  {n:<10} data={c.stats:<8} feed={'pruned' if c.sequential else 'dense':<6} {c.summary}"
            for n, c in sorted(PRUNERS.items())]
    return "pruning methods:\n" + "\n".join(rows)
