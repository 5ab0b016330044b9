"""The pruner contract and the method registry.

A pruner sees one linear at a time: its dense weight ``[out, in]`` and the calibration statistics the driver collected
for that linear's input, and returns a dense weight with zeros plus the keep-mask. It never packs, never picks a
backend and never touches the model; the driver (:mod:`sparse24.prune.driver`) owns the model and the data flow.
Everything method-specific is declared on the pruner class, so the driver and the CLI name no method:

- ``stats``: which input statistics to accumulate: ``"none"`` (no calibration pass), ``"sqnorm"`` (per input column
  Σ x², i.e. the Hessian diagonal, as Wanda uses) or ``"hessian"`` (Σ x xᵀ: SparseGPT, ADMM, ARMOR).
- ``dense_target``: ``True`` (with ``sequential`` and ``"hessian"``) also carries the dense model's activations
  through each layer and fills :attr:`LayerStats.cross`, so a pruner can fit what the *dense* layer computed rather
  than what the already-pruned inputs give (error compensation; ADMM's ``--admm-dense-target``).
- ``sequential``: ``True`` feeds layer ``l+1`` with the *pruned* layer ``l`` (Wanda / SparseGPT protocol);
  ``False`` feeds it with the *dense* layer (one calibration pass of the dense model, layers independent; ARMOR's
  instance follows its ``--armor-init``, so no built-in method uses this today).
- ``Args``: the method's argument group (a dataclass of :func:`sparse24.prune.args.flag` fields): its command-line
  flags, defaults and validation; the pruner is built from it and records it in ``sparse24_config.json``.
- ``extra_tensors``: names of the per-linear tensors besides weight and mask that :attr:`PruneResult.extra` carries
  (saved with every layer, handed back to :meth:`Pruner.assemble`).
- :meth:`Pruner.setup`: a look at the whole model (skeleton and target linears) before the first layer.
- :meth:`Pruner.assemble`, :meth:`Pruner.check_24`, :meth:`Pruner.save`: how the whole model is rebuilt from the
  per-linear results, what must be exactly 2:4, and how it is written (default: ``SparseLinear`` modules through
  :func:`sparse24.io.save_sparse`); ``formats``: the ``--format`` writers that can hold the result (``None``: all).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from sparse24.prune.args import NoArgs
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from sparse24.prune.driver import PruneOutcome
    from torch import nn

__all__ = ["LayerStats", "PruneResult", "Pruner", "Refiner", "register_pruner", "get_pruner", "pruner_class", "PRUNERS",
           "MOVED", "method_table"]

T = TypeVar("T")


@dataclass
class LayerStats:
    """Calibration statistics of one linear's input ``X`` (``[tokens, in]`` over all calibration samples).

    ``sqnorm[j] = Σ_tokens x_j² / nsamples`` and ``hessian = 2/nsamples · Σ_tokens x xᵀ`` (the SparseGPT scaling; a
    global factor never changes a mask). Both are float64; a field the pruner did not ask for is ``None``.
    ``cross = 2/nsamples · Σ_tokens x x_dᵀ`` pairs each input with the *dense* model's input of the same linear on the
    same token (only for pruners with ``dense_target``): the fit of ``X_d w`` from ``X ŵ`` needs ``H ŵ = cross w``.
    """

    nsamples: int
    tokens: int
    sqnorm: Tensor | None = None  # [in]
    hessian: Tensor | None = None  # [in, in]
    cross: Tensor | None = None  # [in, in]


@dataclass
class PruneResult:
    """A pruned weight (same shape and dtype as the input, zeros where pruned) and its bool keep-mask.

    ``extra``: the tensors named by the pruner's ``extra_tensors``; ``sparse``: the tensor that must be exactly 2:4
    when that is not ``weight`` (ARMOR: its core; ``weight`` is then the dense equivalent); ``info``: numbers added to
    the layer report (e.g. a proxy loss).
    """

    weight: Tensor  # [out, in]
    mask: Tensor  # [out, in] bool, exactly 2 True per aligned group of 4 along `in`
    extra: dict[str, Tensor] = field(default_factory=dict)
    sparse: Tensor | None = None  # [out, in]
    info: dict[str, float] = field(default_factory=dict)


class Pruner:
    """Base class: subclasses set ``name``, ``stats``, ``sequential``, ``summary`` (and ``Args``,
    ``extra_tensors``) and implement :meth:`prune`; built from an ``Args`` instance or its fields as keywords."""

    name: ClassVar[str] = ""
    stats: ClassVar[str] = "none"
    sequential: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    Args: ClassVar[type] = NoArgs
    extra_tensors: ClassVar[tuple[str, ...]] = ()
    formats: ClassVar[tuple[str, ...] | None] = None
    rows_independent: ClassVar[bool] = False  # see prune_group; only for methods without extra_tensors
    # --forward-dtype auto may run this method's calibration forwards in bf16 (where the forwards are most of its cost)
    bf16_forwards: ClassVar[bool] = True
    # fit the dense model's layer outputs from the pruned model's inputs: the driver also carries the dense model's
    # activations and fills LayerStats.cross (a sequential "hessian" pruner only; may be an instance property)
    dense_target: bool = False

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        if args is not None and kwargs:
            raise TypeError(f"{type(self).__name__}: pass either an {self.Args.__name__} or its fields, not both")
        self.args = args if args is not None else self.Args(**kwargs)
        if not isinstance(self.args, self.Args):
            raise TypeError(f"{type(self).__name__} takes {self.Args.__name__}, got {type(self.args).__name__}")

    def prune(self, weight: Tensor, stats: LayerStats | None) -> PruneResult:  # pragma: no cover - interface
        raise NotImplementedError

    def prune_group(self, weights: dict[str, Tensor], stats: LayerStats | None) -> dict[str, PruneResult]:
        """Prune linears that share one input, hence one ``stats`` (q/k/v, gate/up; a single linear otherwise).

        A method whose rows are pruned independently given the statistics (``rows_independent``) solves them as one
        stacked ``[Σ out, in]`` weight: one call (one column loop, one ADMM run) for q/k/v instead of three, the same
        result row for row. Others: :meth:`prune` each."""
        if not self.rows_independent or len(weights) == 1:
            return {name: self.prune(w, stats) for name, w in weights.items()}
        res = self.prune(torch.cat(list(weights.values())), stats)  # [Σ out, in]
        sizes = [w.shape[0] for w in weights.values()]
        parts = zip(res.weight.split(sizes), res.mask.split(sizes))
        return {name: PruneResult(w, m, info=dict(res.info)) for name, (w, m) in zip(weights, parts)}

    def fit_target(self, weight: Tensor, stats: LayerStats | None) -> Tensor:
        """The weight whose plain layer error ``(w' − ŵ)ᵀ H (w' − ŵ)`` is (up to a constant) the objective this pruner
        minimised: ``weight`` itself, unless the pruner fits another target (``dense_target``). A method refining
        another's result (ARMOR) measures against it."""
        return weight

    def setup(self, model: nn.Module, linears: dict[str, nn.Module]) -> None:
        """Called once by the driver before the first layer, with the model skeleton (meta device) and every target
        linear by name, for what a pruner sizes from the whole model (ARMOR's ``--armor-budget``); default nothing."""

    def per_input(self, stats: LayerStats, build: Callable[[], T]) -> T:
        """``build()`` computed once per input: the driver hands the linears that share one input (q/k/v, gate/up)
        the same ``LayerStats``, so what a pruner derives from it (a factorisation) is reused until the next input."""
        cached = getattr(self, "_per_input", None)
        if cached is None or cached[0] is not stats:
            cached = self._per_input = (stats, build())
        return cached[1]

    def settings(self) -> dict[str, Any]:
        """Hyperparameters recorded in ``sparse24_config.json`` (and compared on resume)."""
        return dataclasses.asdict(self.args)

    def assemble(self, model_dir: Path, outcome: PruneOutcome, dtype: torch.dtype | None = None) -> nn.Module:
        """The full model with the pruned linears (default: fixed 2:4 ``SparseLinear`` modules)."""
        from sparse24.prune.export import assemble

        return assemble(model_dir, outcome, dtype)

    @property
    def plain_export(self) -> bool:
        """Whether the default checkpoint can be written from the plain HF model (:func:`~sparse24.prune.export.
        write_plain`, no ``SparseLinear`` modules in memory): yes unless the pruner assembles, checks or saves its own
        way (ARMOR) or returns extra tensors."""
        cls = type(self)
        return (cls.assemble is Pruner.assemble and cls.check_24 is Pruner.check_24 and cls.save is Pruner.save
                and not self.extra_tensors)

    def check_24(self, model: nn.Module) -> tuple[int, int]:
        """(pruned tensors that are exactly 2:4, tensors checked) in the assembled model."""
        from sparse24.prune.export import check_all_24

        return check_all_24(model)

    def save(self, model: nn.Module, out: Path, *, record: dict[str, Any], compressed: bool,
             overwrite: bool) -> list[str]:
        """Write the assembled model as a sparse24 checkpoint; returns lines to print (e.g. parameter counts)."""
        from sparse24.io import save_sparse

        kw: dict[str, Any] = {"compressed": compressed, "overwrite": overwrite, "extra": record}
        if "method" in inspect.signature(save_sparse).parameters:  # the method that produced the weights
            kw["method"] = self.name
        save_sparse(model, out, **kw)
        return []



class Refiner(Pruner):
    """A pruner that improves another registered pruner's result (ARMOR, lowrank): the start (``init_pruner``) prunes
    each group its own way (stacked when its rows are independent, so doing nothing reproduces its model exactly),
    then :meth:`refine` improves each linear from it."""

    init_pruner: Pruner

    def refine(self, weight: Tensor, stats: LayerStats | None, start: PruneResult) -> PruneResult:
        raise NotImplementedError  # pragma: no cover - interface

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "init_settings": self.init_pruner.settings()}

    def prune(self, weight: Tensor, stats: LayerStats | None) -> PruneResult:
        return self.refine(weight, stats, self.init_pruner.prune(weight, stats))

    def prune_group(self, weights: dict[str, Tensor], stats: LayerStats | None) -> dict[str, PruneResult]:
        starts = self.init_pruner.prune_group(weights, stats)
        return {name: self.refine(w, stats, starts[name]) for name, w in weights.items()}

PRUNERS: dict[str, type[Pruner]] = {}

# names that are not one-shot pruners, with where to go instead (``--method <name>`` prints the line)
MOVED: dict[str, str] = {
    "ast": "AST is retraining (distillation with evolving masks), not one-shot pruning: use `sparse24 retrain` "
           "(see `sparse24 retrain --help`)",
}


def register_pruner(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: make a pruner available as ``--method <cls.name>``."""
    if cls.stats not in ("none", "sqnorm", "hessian"):
        raise ValueError(f"{cls.__name__}.stats={cls.stats!r}; choose 'none', 'sqnorm' or 'hessian'")
    if cls.rows_independent and cls.extra_tensors:
        raise ValueError(f"{cls.__name__}: rows_independent stacking cannot split extra_tensors {cls.extra_tensors}")
    if not dataclasses.is_dataclass(cls.Args):
        raise TypeError(f"{cls.__name__}.Args must be a dataclass (see sparse24.prune.args)")
    if cls.name not in MOVED:
        PRUNERS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    from sparse24.prune import (  # noqa: F401  (registration side effect)
        admm,
        armor_pruner,
        lowrank,
        magnitude,
        refit,
        sparsegpt,
        wanda,
    )


def pruner_class(name: str) -> type[Pruner]:
    """The registered pruner class for ``name``; unknown or moved names say what to do."""
    _load_builtin()
    if name in MOVED:
        raise ValueError(MOVED[name])
    if name not in PRUNERS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {sorted(PRUNERS)} (--method list)")
    return PRUNERS[name]


def get_pruner(name: str, args: Any = None, **kwargs: Any) -> Pruner:
    """Instantiate a registered pruner by name, from its ``Args`` or their fields as keywords."""
    return pruner_class(name)(args, **kwargs)


def method_table() -> str:
    """One line per registered method, for ``--method list``."""
    _load_builtin()
    rows = [f"  {n:<16} data={c.stats:<8} feed={'pruned' if c.sequential else 'dense':<6} {c.summary}"
            for n, c in sorted(PRUNERS.items())]
    moved = [f"  {n:<16} {msg}" for n, msg in sorted(MOVED.items())]
    return "pruning methods:\n" + "\n".join(rows) + ("\nelsewhere:\n" + "\n".join(moved) if moved else "")
