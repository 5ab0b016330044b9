"""Atomic training checkpoints: ``step-000100/`` folders that ``--resume auto`` continues from bit-exactly.

A checkpoint holds the model state (dense weights and every ``SparseLinear`` buffer: mask, β, step, dense mode), the
optimizer and scheduler, the RNG states of every process (torch, Python, NumPy, CUDA) and of every ``SparseLinear``'s
MVUE generator, the :class:`~sparse24.FlipTracker`, the step and token counters (the data position: batch ``i`` is a
pure function of the seed and ``i``), and the run description (recipe, model, data). Written into a temporary folder
that is renamed into place, so a run killed at any moment leaves either the old or the new checkpoint, never half.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sparse24.api import sparse_modules
from sparse24.io import atomic_folder

if TYPE_CHECKING:
    from sparse24.train.loop import Trainer

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "resolve_resume", "prune_checkpoints"]

_STEP = re.compile(r"^step-(\d{6,})$")
STATE = "trainer_state.pt"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(trainer: Trainer, folder: str | Path) -> Path | None:
    """Write ``folder`` atomically (main process); every process must call it (RNG states are gathered)."""
    from accelerate.utils import gather_object

    acc, model = trainer.accelerator, trainer.unwrapped
    gens = {fqn: m.mvue_offset for fqn, m in sparse_modules(model)}  # MVUE stream positions
    per_rank = gather_object([{"rng": _rng_state(), "generators": gens}]) if acc.num_processes > 1 \
        else [{"rng": _rng_state(), "generators": gens}]
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return None
    state = {
        "step": trainer.step, "tokens": trainer.tokens, "model": model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "tracker": trainer.tracker.state_dict(), "ranks": per_rank, "world_size": acc.num_processes,
    }
    with atomic_folder(folder, overwrite=True) as tmp:
        torch.save(state, tmp / STATE)
        (tmp / "run.json").write_text(json.dumps({"step": trainer.step, **trainer.cfg.extra}, indent=2, default=str))
    acc.wait_for_everyone()
    return Path(folder)


def load_checkpoint(trainer: Trainer, folder: str | Path) -> None:
    """Restore everything :func:`save_checkpoint` wrote into ``trainer`` (same world size)."""
    path = Path(folder) / STATE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint ({STATE} missing)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    acc = trainer.accelerator
    if state["world_size"] != acc.num_processes:
        raise ValueError(f"{folder} was written by {state['world_size']} processes, this run has "
                         f"{acc.num_processes}; resume with the same number of processes")
    model = trainer.unwrapped
    model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.tracker.load_state_dict(state["tracker"])
    trainer.step, trainer.tokens = state["step"], state["tokens"]
    mine = state["ranks"][acc.process_index]
    _set_rng_state(mine["rng"])
    for fqn, m in sparse_modules(model):
        m.mvue_offset = mine["generators"][fqn]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The ``step-*`` folder with the highest step under ``out_dir`` (complete ones only), or None."""
    out = Path(out_dir)
    if not out.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in out.iterdir() if (m := _STEP.match(p.name)) and (p / STATE).is_file()]
    return max(steps)[1] if steps else None


def resolve_resume(resume: str | Path | None, out_dir: str | Path | None) -> Path | None:
    """``None``/``"no"``: fresh start; ``"auto"``: latest checkpoint in ``out_dir`` if any; else a folder."""
    if resume in (None, "", "no", "none", False):
        return None
    if str(resume) == "auto":
        return latest_checkpoint(out_dir) if out_dir is not None else None
    p = Path(resume)
    if not (p / STATE).is_file():
        raise FileNotFoundError(f"--resume {p}: not a checkpoint folder (expected {p / STATE}); use --resume auto "
                                "to pick the latest step-* folder of --out")
    return p


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``step-*`` folders (0 keeps all)."""
    if keep <= 0:
        return
    steps = sorted((int(m.group(1)), p) for p in out_dir.iterdir() if (m := _STEP.match(p.name)))
    for _, p in steps[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
