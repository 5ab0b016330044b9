"""ARMOR behind the pruner registry (``--method armor``): what it returns per linear, how the model is rebuilt from
that, and how it is saved. The algorithm is :mod:`sparse24.prune.armor`, the module :mod:`sparse24.prune.armor_linear`.

ARMOR's statistics come from the *dense* model in one pass (``sequential = False``, the Hessian diagonal ``sqnorm``),
so the shared layer driver runs it like any other method and resumes it layer by layer. Each linear returns its dense
equivalent ``W_eff = A'·core·B'`` as the weight (plain transformers loads the saved folder) plus the ``ArmorLinear``
tensors ``a_blocks``, ``b_blocks``, ``core``; the 2:4 check applies to the core.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from sparse24.prune.armor import ArmorArgs, armor_layer
from sparse24.prune.armor_linear import ArmorLinear, armor_modules, save_armor
from sparse24.prune.base import LayerStats, Pruner, PruneResult, register_pruner
from torch import Tensor, nn

from sparse24.runtime import set_module

__all__ = ["ArmorPruner", "assemble_armor", "check_cores_24"]

LEAVES = ("a_blocks", "b_blocks", "core")


@register_pruner
class ArmorPruner(Pruner):
    """ARMOR on one linear: one dense calibration pass (``sqnorm``), layers independent."""

    name: ClassVar[str] = "armor"
    stats: ClassVar[str] = "sqnorm"
    sequential: ClassVar[bool] = False
    summary: ClassVar[str] = "W ≈ D_r·A·(2:4 core)·B·D_c, block-diag A/B learned on NoWag's proxy (adds params)"
    Args: ClassVar[type] = ArmorArgs
    extra_tensors: ClassVar[tuple[str, ...]] = LEAVES
    formats: ClassVar[tuple[str, ...] | None] = ("sparse24",)  # A'·core·B' has no place in other formats

    def prune(self, weight: Tensor, stats: LayerStats | None) -> PruneResult:
        if stats is None or stats.sqnorm is None:
            raise ValueError("armor needs the Hessian diagonal (input column Σx²); run it through the driver")
        res = armor_layer(weight, stats.sqnorm.to(weight.device).float(), self.args)
        mod = ArmorLinear.from_result(res, None, dtype=weight.dtype)
        extra = {k: getattr(mod, k).detach() for k in LEAVES}
        info = {"proxy_loss_init": res.loss_init, "proxy_loss": res.loss, "iters": res.iters}
        return PruneResult(mod.dense_weight().to(weight.dtype), res.mask, extra, sparse=extra["core"], info=info)

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
