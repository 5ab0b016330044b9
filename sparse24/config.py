"""Method configs: one frozen dataclass per method, each mapped to exactly one handler in :mod:`sparse24.api`.

The same object is what ``sparse24_config.json`` records, so a checkpoint rebuilds its modules from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

CONFIG_VERSION = 1
_CONFIGS: dict[str, type[SparseConfig]] = {}


@dataclass(frozen=True)
class SparseConfig:
    """Base of every method config. ``backend`` picks the matmul ("auto", "dense", "cusparselt", ...)."""

    name: ClassVar[str] = "base"
    backend: str = "auto"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        _CONFIGS[cls.name] = cls

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str):
            raise TypeError(f"{type(self).__name__}.backend must be a string such as 'auto' or 'dense'")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SparseConfig:
        d = dict(d)
        method, version = d.pop("method", None), d.pop("version", CONFIG_VERSION)
        if method not in _CONFIGS:
            raise ValueError(f"unknown sparse24 method {method!r}; known: {sorted(_CONFIGS)}")
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ValueError(
                f"config for {method!r} has version {version}, newer than this sparse24 understands "
                f"({CONFIG_VERSION}); upgrade sparse24 (pip install -U sparse24)"
            )
        cls = _CONFIGS[method]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"config for {method!r} has unknown fields {sorted(unknown)}; allowed: {sorted(names)}")
        return cls(**d)


def _check_positive(obj: SparseConfig, field: str, allow_zero: bool = True) -> None:
    v = getattr(obj, field)
    if not isinstance(v, (int, float)) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{type(obj).__name__}.{field} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


@dataclass(frozen=True)
class MagnitudeConfig(SparseConfig):
    """2:4 by magnitude with a plain straight-through estimator.

    ``mask_refresh=0`` freezes the mask taken at conversion (one-shot pruning, loading a pruned checkpoint);
    ``k > 0`` recomputes it from the dense weight every k optimizer steps (:func:`sparse24.update_masks`).
    """

    name: ClassVar[str] = "magnitude"
    mask_refresh: int = 0
    transposable: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "mask_refresh")


@dataclass(frozen=True)
class SRSTEConfig(SparseConfig):
    """SR-STE: STE plus masked decay ``λ(1−M)⊙W`` that pulls pruned weights to zero.

    ``decay_placement``: "grad" adds the decay to ``W.grad`` after clipping and before the optimizer
    (arXiv 2404.01847, the default; call :func:`sparse24.apply_masked_decay`), "weight" subtracts ``lr·λ(1−M)⊙W``
    after the optimizer step (decoupled), "autograd" adds it inside backward (arXiv 2102.04010's SR-STE).
    ``transposable`` masks make ``W.T`` 2:4 too, so the input-gradient GEMM can be sparse.
    """

    name: ClassVar[str] = "srste"
    decay: float = 2e-4
    decay_placement: Literal["grad", "weight", "autograd"] = "grad"
    transposable: bool = True
    mask_refresh: int = 1
    mvue: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "decay")
        _check_positive(self, "mask_refresh", allow_zero=False)
        if self.decay_placement not in ("grad", "weight", "autograd"):
            raise ValueError(f"SRSTEConfig.decay_placement must be 'grad', 'weight' or 'autograd', "
                             f"not {self.decay_placement!r}")


@dataclass(frozen=True)
class SSTEConfig(SparseConfig):
    """S-STE: continuous soft-threshold ``β·S(W)`` with a per-tensor β fixed at conversion, identity STE, no decay.

    ``mvue`` samples the weight gradient's ``∇Yᵀ`` 2:4 (unbiased); ``fp8`` runs the GEMMs through FP8
    (e4m3 forward, e5m2 backward, per-tensor current scaling; simulated by quantise/dequantise on a CPU).
    """

    name: ClassVar[str] = "sste"
    mvue: bool = False
    fp8: bool = False
