"""ARMOR on a whole model: one calibration pass for the Hessian diagonals, then every linear independently.

ARMOR's statistics come from the *dense* model in one pass (spec §5.2), so the linears are independent jobs: they run
with a progress bar, each result is written to ``work_dir/<name>.safetensors`` as soon as it is done (a killed run
resumes where it stopped), and with several devices the jobs are spread over them (one worker thread per device).
:class:`ArmorPruner` is the same algorithm behind the ``sparse24.prune`` registry (``--method armor``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from sparse24.prune.armor import ArmorResult, ArmorSettings, armor_layer
from sparse24.prune.armor_linear import ArmorLinear
from sparse24.prune.base import Pruner, PruneResult, register_pruner
from torch import Tensor, nn

from sparse24.runtime import set_module

__all__ = ["hessian_diagonals", "armor_targets", "armor_prune_model", "ArmorPruner", "ArmorPruneResult",
           "add_armor_arguments", "armor_settings_from_args", "assemble_armor", "check_cores_24"]


def armor_targets(model: nn.Module) -> list[str]:
    """Every ``nn.Linear`` inside the decoder layers (embeddings and the LM head stay dense)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in f".{n}"]


@torch.no_grad()
def hessian_diagonals(model: nn.Module, calib: Tensor, names: list[str], batch_size: int = 8) -> dict[str, Tensor]:
    """``h_j = 2/N Σ_tokens x_j²`` of every named linear's input, from one pass of the model over ``calib`` [N, T]."""
    sums: dict[str, Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook(name: str) -> Callable:
        def pre(_mod: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])  # [tokens, in]
            sums[name] = sums.get(name, 0) + x.double().square().sum(0)
            counts[name] += x.shape[0]
        return pre

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    device = next(model.parameters()).device
    try:
        for b0 in range(0, calib.shape[0], batch_size):
            model(input_ids=calib[b0 : b0 + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: (2 * sums[n] / max(counts[n], 1)).float() for n in names}


def _save_atomic(tensors: dict[str, Tensor], path: Path, meta: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


_FIELDS = ("a", "x", "mask", "b", "d_r", "d_c")


def _load_result(path: Path) -> ArmorResult:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    t = load_file(str(path))
    return ArmorResult(*(t[k] for k in _FIELDS), float(meta["loss_init"]), float(meta["loss"]), int(meta["iters"]))


def _check_work_dir(work: Path, fingerprint: dict[str, Any]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run.json"
    if run.is_file():
        old = json.loads(run.read_text())
        if old != fingerprint:
            raise ValueError(f"{work} holds a partial ARMOR run with other settings ({old} vs {fingerprint}); reuse "
                             "the same settings to resume, or delete the folder to start over")
    else:
        run.write_text(json.dumps(fingerprint, indent=2))


def armor_prune_model(model: nn.Module, calib: Tensor, settings: ArmorSettings = ArmorSettings(), *,
                      names: list[str] | None = None, work_dir: str | os.PathLike | None = None,
                      devices: list[str] | None = None, batch_size: int = 8, backend: str = "auto",
                      progress: bool = True) -> dict[str, ArmorResult]:
    """Prune every target linear of ``model`` with ARMOR in place (``nn.Linear`` -> :class:`ArmorLinear`).

    ``calib`` [N, T] token ids. ``work_dir`` makes the run resumable; ``devices`` (default: every CUDA device, else
    the model's device) run the per-linear jobs in parallel. Returns the results by linear name.
    """
    from tqdm.auto import tqdm

    names = names if names is not None else armor_targets(model)
    hdiag = hessian_diagonals(model, calib, names, batch_size)
    if devices is None:
        n = torch.cuda.device_count()
        devices = [f"cuda:{i}" for i in range(n)] if n else [str(next(model.parameters()).device)]
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        calib_sha = hashlib.sha256(calib.cpu().numpy().tobytes()).hexdigest()[:16]
        _check_work_dir(work, {"settings": settings.to_dict(), "calib_sha": calib_sha, "names": names})
    results: dict[str, ArmorResult] = {}
    todo = []
    for n in names:
        path = work / f"{n}.safetensors" if work is not None else None
        if path is not None and path.is_file():
            results[n] = _load_result(path)
        else:
            todo.append(n)
    free: queue.Queue[str] = queue.Queue()
    for d in devices:
        free.put(d)

    def job(n: str) -> tuple[str, ArmorResult]:
        dev = free.get()
        try:
            w = model.get_submodule(n).weight.detach().to(dev)
            res = armor_layer(w, hdiag[n].to(dev), settings)
            res = ArmorResult(*(getattr(res, k).cpu() for k in _FIELDS), res.loss_init, res.loss, res.iters)
        finally:
            free.put(dev)
        if work is not None:
            meta = {"loss_init": repr(res.loss_init), "loss": repr(res.loss), "iters": str(res.iters)}
            _save_atomic({k: getattr(res, k) for k in _FIELDS}, work / f"{n}.safetensors", meta)
        return n, res

    bar = tqdm(total=len(names), initial=len(names) - len(todo), desc="armor linears", disable=not progress)
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        for n, res in pool.map(job, todo):
            results[n] = res
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.4f}", nowag_p=f"{res.loss_init:.4f}")
    bar.close()
    for n in names:
        lin = model.get_submodule(n)
        mod = ArmorLinear.from_result(results[n], lin.bias, dtype=lin.weight.dtype, backend=backend)
        set_module(model, n, mod.to(lin.weight.device))
    return results


# ---- the registry entry ---------------------------------------------------------------------------------------------
@dataclass
class ArmorPruneResult(PruneResult):
    """``weight`` = the dense equivalent ``W_eff``, ``mask`` = the 2:4 core's mask, ``extra`` = ArmorLinear tensors."""

    extra: dict[str, Tensor] = field(default_factory=dict)  # a_blocks, b_blocks, core


@register_pruner
class ArmorPruner(Pruner):
    """ARMOR behind the pruning driver: one dense calibration pass (``sqnorm``), layers independent."""

    name: ClassVar[str] = "armor"
    stats: ClassVar[str] = "sqnorm"
    sequential: ClassVar[bool] = False
    summary: ClassVar[str] = "W ≈ D_r·A·(2:4 core)·B·D_c, block-diag A/B learned on NoWag's proxy (adds params)"

    def __init__(self, settings: ArmorSettings | None = None, **kwargs: Any) -> None:
        self.config = settings or ArmorSettings(**kwargs)

    def prune(self, weight: Tensor, stats) -> ArmorPruneResult:
        if stats is None or stats.sqnorm is None:
            raise ValueError("armor needs the Hessian diagonal (input column Σx²); run it through the driver")
        res = armor_layer(weight, stats.sqnorm.to(weight.device).float(), self.config)
        mod = ArmorLinear.from_result(res, None, dtype=weight.dtype)
        extra = {"a_blocks": mod.a_blocks.detach(), "b_blocks": mod.b_blocks.detach(), "core": mod.core.detach()}
        return ArmorPruneResult(mod.dense_weight().to(weight.dtype), res.mask, extra)

    def settings(self) -> dict[str, Any]:
        return self.config.to_dict()


def assemble_armor(model_dir: str | os.PathLike, extras: dict[str, dict[str, Tensor]],
                   dtype: torch.dtype | None = None, backend: str = "auto") -> nn.Module:
    """The full HF model with an :class:`ArmorLinear` per pruned linear, from the driver's per-linear ``extra``
    tensors (``{name: {"a_blocks", "b_blocks", "core"}}``); save it with
    :func:`~sparse24.prune.armor_linear.save_armor`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or "auto")
    for name, t in extras.items():
        lin = model.get_submodule(name)
        mod = ArmorLinear(lin.in_features, lin.out_features, t["a_blocks"].shape[-1], lin.bias is not None,
                          dtype=lin.weight.dtype, backend=backend)
        with torch.no_grad():
            for key in ("a_blocks", "b_blocks", "core"):
                getattr(mod, key).copy_(t[key])
            if lin.bias is not None:
                mod.bias.copy_(lin.bias)
        set_module(model, name, mod)
    return model.eval()


def check_cores_24(model: nn.Module) -> tuple[int, int]:
    """(ARMOR cores that are exactly 2:4, cores checked)."""
    from sparse24.prune.armor_linear import armor_modules

    from sparse24.masks import is_24

    mods = armor_modules(model)
    return sum(bool(is_24(m.core.detach())) for _, m in mods), len(mods)


def add_armor_arguments(p: argparse.ArgumentParser) -> None:
    """ARMOR's command-line options (for ``sparse24 prune --method armor``)."""
    d = ArmorSettings()
    g = p.add_argument_group("ARMOR (--method armor)")
    g.add_argument("--block-size", default="128", help="A/B block size: a multiple of 4 dividing both dims of every "
                   "layer, or 'auto' (largest such <= 128; SmolLM2 gets 96). Default 128, as in the paper's scripts")
    g.add_argument("--armor-iters", type=int, default=d.iters, help=f"max iterations per linear (default {d.iters})")
    g.add_argument("--armor-lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    g.add_argument("--armor-patience", type=int, default=d.patience, help="stop after this many iterations without "
                   f"relative improvement > 1e-6 (default {d.patience})")
    g.add_argument("--armor-sparse-steps", type=int, default=d.sparse_steps, help="discrete 2:4 updates per "
                   f"iteration (default {d.sparse_steps}, the paper's)")


def armor_settings_from_args(args: argparse.Namespace) -> ArmorSettings:
    bs = args.block_size
    if bs != "auto":
        try:
            bs = int(bs)
        except ValueError:
            raise ValueError(f"--block-size {bs!r}: pass a multiple of 4 (e.g. 128) or 'auto'") from None
    return ArmorSettings(block_size=bs, iters=args.armor_iters, lr=args.armor_lr, patience=args.armor_patience,
                         sparse_steps=args.armor_sparse_steps, seed=getattr(args, "seed", 0))
