"""Turn the driver's pruned weights into a saved sparse24 checkpoint, and format the summary table."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from sparse24.prune.driver import PruneOutcome
from torch import nn

from sparse24.compress import check_24

__all__ = ["assemble", "summary_table", "check_all_24", "plain_model", "write_plain"]


def assemble(model_dir: Path, outcome: PruneOutcome, dtype: torch.dtype | None = None) -> nn.Module:
    """The full model (loaded once, on the CPU) with pruned weights and fixed 2:4 ``SparseLinear`` modules; the
    outcome's tensors are read one at a time (see :class:`~sparse24.prune.driver.PruneOutcome`)."""
    from transformers import AutoModelForCausalLM

    from sparse24.api import sparse_modules, sparsify
    from sparse24.config import MagnitudeConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or "auto")
    names = list(outcome.weights)
    with torch.no_grad():
        for name in names:
            model.get_submodule(name).weight.copy_(outcome.weights[name])
    sparsify(model, {"_default": None, **dict.fromkeys(names, MagnitudeConfig())})
    with torch.no_grad():
        for name, mod in sparse_modules(model):
            mod.mask.copy_(outcome.masks[name])  # the pruner's mask (equal to the magnitude mask of the zeros)
            mod.weight.mul_(mod.mask).add_(0.0)  # exactly the saved weight (+0 where pruned): written without a copy
    return model.eval()


def plain_model(model_dir: Path, outcome: PruneOutcome, dtype: torch.dtype | None = None
                ) -> tuple[nn.Module, list[str], int]:
    """The plain HF model with the pruned weights copied in (one at a time, ``+0`` where pruned), the pruned linears'
    names and how many of them are exactly 2:4 (every group of 4 keeps 2 in the mask, no weight outside it).

    What :func:`write_plain` saves: no ``SparseLinear`` module and no bool mask is built (~0.8 bytes per weight less
    at the job's peak than :func:`assemble`)."""
    from transformers import AutoModelForCausalLM

    from sparse24.masks import is_exact_24

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or "auto").eval()
    names, ok = list(outcome.weights), 0
    with torch.no_grad():
        for name in names:
            w, mask = model.get_submodule(name).weight, outcome.masks[name]  # [out, in], [out, in] bool
            w.copy_(outcome.weights[name]).mul_(mask).add_(0.0)
            ok += int(is_exact_24(w, mask))
    return model, names, ok


def write_plain(model: nn.Module, names: list[str], out: Path, *, method: str, record: dict[str, Any],
                compressed: bool, overwrite: bool) -> None:
    """Write :func:`plain_model`'s result as the sparse24 checkpoint :func:`assemble` + ``save_sparse`` would write
    (the same files, tensors and module configs: fixed magnitude-2:4 modules whose mask is the zeros' pattern)."""
    from sparse24.config import MagnitudeConfig
    from sparse24.io import write_checkpoint

    if not names:
        raise ValueError("no pruned linear to write")
    cfg = MagnitudeConfig().to_dict()
    write_checkpoint(model, out, model.state_dict(), loader="sparse24", method=method,
                     module_configs={n: dict(cfg) for n in names}, overwrite=overwrite,
                     pack=(set(names), set()) if compressed else None, extra=record)


def check_all_24(model: nn.Module) -> tuple[int, int]:
    """(weights that are exactly 2:4, weights checked) over every SparseLinear; raises on none."""
    from sparse24.api import sparse_modules

    ok = total = 0
    for name, mod in sparse_modules(model):
        total += 1
        try:
            check_24(mod.sparse_weight(), name)
            ok += int(bool((mod.mask.reshape(-1, 4).sum(-1) == 2).all()))
        except ValueError:
            pass
    return ok, total


def summary_table(report: list[dict[str, Any]]) -> str:
    """One row per decoder layer: relative output error ‖XΔWᵀ‖²/‖XWᵀ‖² per linear (weight error if no data)."""
    by_layer: dict[int, dict[str, dict]] = defaultdict(dict)
    for row in report:
        by_layer[row["layer"]][row["name"].rsplit(".", 1)[-1]] = row
    cols = list(dict.fromkeys(k for layer in by_layer.values() for k in layer))
    data = any("out_err" in r for r in report)
    metric = "out_err" if data else "weight_err"
    head = f"{'layer':>5} " + " ".join(f"{c:>10}" for c in cols) + "  2:4"
    lines = [f"relative {'output' if data else 'weight'} error per linear ({metric}; lower is better)", head]
    for i in sorted(by_layer):
        rows = by_layer[i]
        vals = " ".join(f"{rows[c][metric]:10.4f}" if c in rows else f"{'-':>10}" for c in cols)
        lines.append(f"{i:>5} {vals}  {'ok' if all(r['is_24'] for r in rows.values()) else 'FAIL'}")
    return "\n".join(lines)
