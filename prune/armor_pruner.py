"""ARMOR behind the pruner registry (``--method armor``): what it returns per linear, how the model is rebuilt from
that, and how it is saved. The algorithm is :mod:`sparse24.prune.armor`, the module :mod:`sparse24.prune.armor_linear`.

ARMOR starts from another registered pruner's result (``--armor-init``, built with its default settings and run on the
same statistics) and refines it on the layer Hessian, so it collects ``hessian`` statistics and feeds the next layer
the way its init method does (``sequential`` follows the init: with ``admm`` the pruned layers feed the next one, and 0
iterations reproduce the ``admm`` model exactly). Each linear returns its dense equivalent ``W_eff = A'·core·B'`` as
the weight (plain transformers loads the saved folder) plus the ``ArmorLinear`` tensors ``a_blocks``, ``b_blocks``,
``core``; the 2:4 check applies to the core. ``--armor-budget`` is resolved once per run in :meth:`ArmorPruner.setup`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from sparse24.prune.armor import ArmorArgs, ArmorResult, armor_layer, block_size_for_budget, resolve_block_size
from sparse24.prune.armor_linear import ArmorLinear, armor_modules, save_armor
from sparse24.prune.base import LayerStats, PruneResult, Refiner, get_pruner, pruner_class, register_pruner
from sparse24.prune.refit import check_hessian_stats, layer_error
from torch import Tensor, nn

from sparse24.runtime import set_module

__all__ = ["ArmorPruner", "assemble_armor", "check_cores_24", "identity_result"]

LEAVES = ("a_blocks", "b_blocks", "core")
# ARMOR's layer replaces the one-shot layer only when its float64 layer error is lower by more than this (relative):
# smaller "gains" are float32 rounding of the factorised form (seen with lr 0: 1e-9 relative), not an improvement
KEEP_RTOL = 1e-6


def identity_result(weight: Tensor, mask: Tensor, bs: int) -> ArmorResult:
    """The one-shot layer itself as ARMOR factors: ``A = B = I``, core = ``weight``, unit norms (exact, no rounding)."""
    out_f, in_f = weight.shape
    kw = {"dtype": weight.dtype, "device": weight.device}
    eye = torch.eye(bs, **kw)
    return ArmorResult(eye.repeat(out_f // bs, 1, 1), weight, mask, eye.repeat(in_f // bs, 1, 1),
                       torch.ones(out_f, **kw), torch.ones(in_f, **kw), 0.0, 0.0, 0, 0, [])


@register_pruner
class ArmorPruner(Refiner):
    """ARMOR on one linear, started from ``--armor-init``'s result; never worse than it on the calibration data."""

    name: ClassVar[str] = "armor"
    stats: ClassVar[str] = "hessian"
    sequential: ClassVar[bool] = True  # the default init (admm) is sequential; an instance follows its init
    summary: ClassVar[str] = ("W ≈ D_r·A·(2:4 core)·B·D_c, block-diag A/B learned on the layer error from "
                              "--armor-init's result; never worse than it (adds params)")
    Args: ClassVar[type] = ArmorArgs
    extra_tensors: ClassVar[tuple[str, ...]] = LEAVES
    formats: ClassVar[tuple[str, ...] | None] = ("sparse24",)  # A'·core·B' has no place in other formats

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        init_cls = pruner_class(self.args.init)
        if init_cls is type(self) or init_cls.extra_tensors:
            raise ValueError(f"--armor-init {self.args.init}: ARMOR starts from a plain 2:4 one-shot result; pick a "
                             "method without extra tensors (e.g. admm, sparsegpt, wanda, magnitude)")
        self.init_pruner = get_pruner(self.args.init)
        self.sequential = self.init_pruner.sequential  # type: ignore[misc]  (instance follows its init)
        self.bf16_forwards = self.init_pruner.bf16_forwards  # type: ignore[misc]  (so 0 iterations = its init)
        self.dense_target = self.init_pruner.dense_target  # its statistics too; ARMOR fits the init's target
        self.block_size: int | str | None = None  # set by setup() when --armor-budget picks it

    def setup(self, model: nn.Module, linears: dict[str, nn.Module]) -> None:
        """Resolve ``--armor-budget`` into one block size from the model's parameter count and the pruned shapes, or
        check ``--block-size`` against every pruned linear (a misfit fails before any calibration work)."""
        if self.args.budget is None:
            for m in linears.values():
                resolve_block_size(self.args.block_size, m.out_features, m.in_features)
            return
        total = sum(p.numel() for p in model.parameters())
        shapes = [(m.out_features, m.in_features) for m in linears.values()]
        self.block_size = block_size_for_budget(total, shapes, self.args.budget)

    def refine(self, weight: Tensor, stats: LayerStats | None, start: PruneResult) -> PruneResult:
        hessian = check_hessian_stats(stats, self.name)
        weight = self.init_pruner.fit_target(weight, stats)  # what the init fitted (itself, or e.g. admm's dense mix)
        if self.args.budget is not None and self.block_size is None:
            raise ValueError("--armor-budget needs the whole model to pick a block size; run ARMOR through the driver "
                             "(sparse24 prune), or pass --block-size")
        res = armor_layer(weight, hessian, start.weight, start.mask, self.args, self.block_size)
        mod = ArmorLinear.from_result(res, None, dtype=weight.dtype)
        w_eff = mod.dense_weight().to(weight.dtype)
        err0 = float(layer_error(weight, start.weight, hessian).sum())  # float64, what the one-shot layer scores
        err = float(layer_error(weight, w_eff, hessian).sum())
        improved = res.accepted > 0 and err < err0 * (1 - KEEP_RTOL)
        if not improved:  # keep the one-shot layer exactly (A' = B' = I, core = its weights)
            mod = ArmorLinear.from_result(identity_result(start.weight, start.mask, mod.block_size), None,
                                          dtype=weight.dtype)
            w_eff, err = start.weight, err0
        extra = {k: getattr(mod, k).detach() for k in LEAVES}
        denom = max(float(layer_error(weight, torch.zeros_like(weight), hessian).sum()), 1e-30)
        info = {"armor_err_init": err0 / denom, "armor_err": err / denom, "iters": res.iters,
                "accepted": res.accepted, "block_size": mod.block_size}
        return PruneResult(w_eff, start.mask if not improved else res.mask, extra, sparse=extra["core"], info=info)

    def assemble(self, model_dir: Path, outcome: Any, dtype: torch.dtype | None = None) -> nn.Module:
        return assemble_armor(model_dir, outcome.extras, dtype)

    def check_24(self, model: nn.Module) -> tuple[int, int]:
        return check_cores_24(model)

    def save(self, model: nn.Module, out: Path, *, record: dict[str, Any], compressed: bool,
             overwrite: bool) -> list[str]:
        save_armor(model, out, overwrite=overwrite, extra=record)
        params = json.loads((out / "sparse24_config.json").read_text())["extra"]["armor"]["params"]
        lines = [f"ARMOR: {params['armor_params']:,} A/B parameters over {params['layers']} linears = "
                 f"{100 * params['overhead']:.1f} % of the dense model's {params['dense_params']:,}"]
        if compressed:
            lines.append("note: ARMOR checkpoints always hold the packed 2:4 cores (armor.safetensors); --compressed "
                         "is moot")
        return lines


def assemble_armor(model_dir: str | os.PathLike, extras: dict[str, dict[str, Tensor]],
                   dtype: torch.dtype | None = None, backend: str = "auto") -> nn.Module:
    """The full HF model with an :class:`ArmorLinear` per pruned linear, from the driver's per-linear extra tensors
    (``{name: {"a_blocks", "b_blocks", "core"}}``); save it with :func:`~sparse24.prune.armor_linear.save_armor`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or "auto")
    for name, t in extras.items():
        lin = model.get_submodule(name)
        mod = ArmorLinear(lin.in_features, lin.out_features, t["a_blocks"].shape[-1], lin.bias is not None,
                          dtype=lin.weight.dtype, backend=backend)
        with torch.no_grad():
            for key in LEAVES:
                getattr(mod, key).copy_(t[key])
            if lin.bias is not None:
                mod.bias.copy_(lin.bias)
        set_module(model, name, mod)
    return model.eval()


def check_cores_24(model: nn.Module) -> tuple[int, int]:
    """(ARMOR cores that are exactly 2:4, cores checked)."""
    from sparse24.masks import is_24

    mods = armor_modules(model)
    return sum(bool(is_24(m.core.detach())) for _, m in mods), len(mods)
