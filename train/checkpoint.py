"""Atomic training checkpoints: ``step-000100/`` folders that ``--resume auto`` continues from bit-exactly.

A checkpoint holds the model state (dense weights and every ``SparseLinear`` buffer: mask, β, step, dense mode), the
optimizer and scheduler, the RNG states of every process (torch, Python, NumPy, CUDA) and of every ``SparseLinear``'s
MVUE generator, the :class:`~sparse24.FlipTracker`, the step and token counters (the data position: batch ``i`` is a
pure function of the seed and ``i``), and the run description (recipe, model, data). Written into a temporary folder
that is renamed into place, so a run killed at any moment leaves either the old or the new checkpoint, never half.

Format (no pickle anywhere: loading a checkpoint cannot run code):

- ``model.safetensors``: ``model.state_dict()`` (tied tensors stored once, their aliases listed in the JSON);
- ``trainer_state.safetensors``: every other tensor, by name: ``optimizer/<param id>/<key>``,
  ``tracker/initial/<layer>``, ``tracker/previous/<layer>``, ``rank<r>/torch_rng``, ``rank<r>/cuda_rng/<device>``,
  ``rank<r>/numpy_mt`` (each layer's MVUE stream position is in the JSON);
- ``trainer_state.json`` (written last, inside the atomic folder): step, tokens, world size, the optimizer's
  ``param_groups`` and non-tensor state, the scheduler state, Python's and NumPy's scalar RNG state, tensor aliases;
- ``run.json``: the run description; resuming compares it with the new run and refuses a difference, naming each.

Under FSDP2 every rank joins the gather of the row-sharded weights, optimizer moments and flip-tracker rows, and the
main process writes them whole: the folder has the same format as a single-process run's, and resuming hands each
rank its rows again (with the same number of processes: the RNG states are per rank).

Folders written by older versions (a pickled ``trainer_state.pt``) are refused, never unpickled.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sparse24.train.distributed import full_state_dict, load_full_state_dict

from sparse24.api import sparse_modules
from sparse24.fileio import atomic_folder
from sparse24.sharding import full_tensor, gather_rows, is_sharded, shard_like, shard_rows

if TYPE_CHECKING:
    from sparse24.train.loop import Trainer

__all__ = ["save_checkpoint", "read_checkpoint", "apply_checkpoint", "load_checkpoint", "latest_checkpoint",
           "checkpoints", "resolve_resume", "find_resume", "prune_checkpoints", "run_differences", "Checkpoint",
           "CheckpointError", "RunMismatch", "STATE"]

_STEP = re.compile(r"^step-(\d{6,})$")
STATE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
TENSORS, MODEL, RUN = "trainer_state.safetensors", "model.safetensors", "run.json"
LEGACY = "trainer_state.pt"
# run settings that may change between a run and its resumption (they do not change the numbers)
RESUMABLE_CHANGES = {"train.eval_every", "train.ckpt_every", "train.keep_checkpoints", "train.out_dir",
                     "train.progress", "step"}


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files or cannot be read (truncated, corrupt, old pickle format)."""


class RunMismatch(ValueError):
    """The run to resume was made with other settings; the message names each difference."""


@dataclass
class Checkpoint:
    """Everything one checkpoint folder holds, read into memory (nothing applied yet)."""

    folder: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    model: dict[str, torch.Tensor]
    run: dict[str, Any]


# ---- saving --------------------------------------------------------------------------------------------------------
def _rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of this process's global RNG states."""
    _, mt, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    meta = {"python": [version, list(py_state), py_gauss], "numpy": [int(pos), int(has_gauss), float(gauss)]}
    tensors = {"torch_rng": torch.get_rng_state(), "numpy_mt": torch.from_numpy(mt.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda_rng/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return meta, tensors


def _set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_rng"])
    version, py_state, py_gauss = meta["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state(("MT19937", tensors["numpy_mt"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    cuda = [tensors[f"cuda_rng/{i}"] for i in range(sum(k.startswith("cuda_rng/") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _json_value(v: Any, where: str) -> Any:
    try:
        json.dumps(v)
    except TypeError:
        raise TypeError(f"checkpoint: {where} holds a {type(v).__name__}, which is neither a tensor nor JSON; "
                        "sparse24 checkpoints never pickle") from None
    return v


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors that are the same view of one memory (tied embeddings) are stored once; other views into memory
    already stored are copied (safetensors stores no overlapping tensors). Returns (tensors, alias -> stored name)."""
    seen: dict[tuple, str] = {}
    storages: set[tuple] = set()
    unique, aliases = {}, {}
    for k, v in state.items():
        storage = (v.device.type, v.untyped_storage().data_ptr())
        key = (*storage, v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        unique[k] = v.clone() if v.numel() and storage in storages else v
        storages.add(storage)
    return unique, aliases


def _whole(v: Any, keep: bool) -> Any:
    """An optimizer state value, gathered whole if sharded (on the CPU, on the rank that keeps it)."""
    if not isinstance(v, torch.Tensor) or not is_sharded(v):
        return v
    whole = full_tensor(v)
    return whole.cpu() if keep else None


def save_checkpoint(trainer: Trainer, folder: str | Path) -> Path | None:
    """Write ``folder`` atomically (main process); every process must call it (RNG states are gathered)."""
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    acc, model = trainer.accelerator, trainer.unwrapped
    rng_meta, rng_tensors = _rng_state()
    rng_meta["mvue_offsets"] = {fqn: int(m.mvue_offset) for fqn, m in sparse_modules(model)}  # MVUE stream positions
    mine = {"meta": rng_meta, "tensors": {k: v.cpu() for k, v in rng_tensors.items()}}
    per_rank = gather_object([mine]) if acc.num_processes > 1 else [mine]  # in-process exchange, never a file
    # collectives every rank joins: under FSDP2 sharded weights, optimizer moments and tracker rows are gathered
    # whole, so the folder is the same as a single-process run's
    main = acc.is_main_process
    full_model = full_state_dict(model, keep=main)
    opt = trainer.optimizer.state_dict()
    opt["state"] = {pid: {k: _whole(v, main) for k, v in entries.items()} for pid, entries in opt["state"].items()}
    layers = dict(sparse_modules(model))
    tracker_state = {part: {name: gather_rows(m, layers[name].out_features) if name in layers and
                            is_sharded(layers[name].weight) else m for name, m in masks.items()}
                     for part, masks in trainer.tracker.state_dict().items()}
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return None
    tensors: dict[str, torch.Tensor] = {}
    opt_scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in opt["state"].items():
        for key, v in entries.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer/{pid}/{key}"] = v
            else:
                opt_scalars.setdefault(str(pid), {})[key] = _json_value(v, f"optimizer state {pid}.{key}")
    for part, masks in tracker_state.items():
        tensors.update({f"tracker/{part}/{name}": m for name, m in masks.items()})
    for r, rank in enumerate(per_rank):
        tensors.update({f"rank{r}/{k}": v for k, v in rank["tensors"].items()})
    weights, aliases = _dedupe(full_model)
    meta = {
        "format": "sparse24-trainer-checkpoint", "version": 1, "step": trainer.step, "tokens": trainer.tokens,
        "world_size": acc.num_processes, "model_aliases": aliases,
        "optimizer": {"param_groups": _json_value(opt["param_groups"], "optimizer param_groups"),
                      "state_ids": [str(p) for p in opt["state"]], "scalars": opt_scalars},
        "scheduler": _json_value(trainer.scheduler.state_dict(), "scheduler state"),
        "rng": [rank["meta"] for rank in per_rank],
    }
    with atomic_folder(folder, overwrite=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / MODEL))
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
        (tmp / RUN).write_text(json.dumps({"step": trainer.step, **trainer.cfg.extra}, indent=2, default=str))
        (tmp / STATE).write_text(json.dumps(meta))
    acc.wait_for_everyone()
    return Path(folder)


# ---- reading -------------------------------------------------------------------------------------------------------
def read_checkpoint(folder: str | Path) -> Checkpoint:
    """Read a checkpoint folder into memory; :class:`CheckpointError` names the file that is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / STATE).is_file() and (folder / LEGACY).is_file():
        raise CheckpointError(f"{folder} holds a pickled {LEGACY} (an older sparse24); it is not loaded because "
                              "unpickling can run code; pass --overwrite to start over")
    for name in (STATE, TENSORS, MODEL, RUN):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a complete training checkpoint ({name} missing)")
    try:
        meta = json.loads((folder / STATE).read_text(encoding="utf-8"))
        run = json.loads((folder / RUN).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder}: {STATE} or {RUN} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "sparse24-trainer-checkpoint" or not isinstance(run, dict):
        raise CheckpointError(f"{folder}: {STATE} is not a sparse24 trainer checkpoint description")
    try:
        tensors, model = load_file(str(folder / TENSORS)), load_file(str(folder / MODEL))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: a .safetensors file is truncated or corrupt ({e})") from None
    return Checkpoint(folder, meta, tensors, model, run)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def run_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every run setting that differs (settings that only affect logging are ignored)."""
    a = _flat(json.loads(json.dumps(old, default=str)))
    b = _flat(json.loads(json.dumps(new, default=str)))
    out = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_CHANGES or a.get(key, "<absent>") == b.get(key, "<absent>"):
            continue
        flag = f" (--{key[6:].replace('_', '-')})" if key.startswith("train.") else ""
        out.append(f"{key}{flag}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return out


def check_same_run(ckpt: Checkpoint, extra: dict[str, Any]) -> None:
    """Refuse to resume ``ckpt`` into a run described by ``extra`` when any setting differs."""
    diffs = run_differences(ckpt.run, extra)
    if diffs:
        raise RunMismatch(f"{ckpt.folder} was written by a run with other settings:\n  " + "\n  ".join(diffs) +
                          "\nrerun with the same arguments to resume it, pass --overwrite to start over, or choose "
                          "another --out")


def apply_checkpoint(trainer: Trainer, ckpt: Checkpoint) -> None:
    """Restore ``ckpt`` into ``trainer`` (same world size, same run settings)."""
    acc, meta, t = trainer.accelerator, ckpt.meta, ckpt.tensors
    check_same_run(ckpt, trainer.cfg.extra)
    if meta["world_size"] != acc.num_processes:
        raise ValueError(f"{ckpt.folder} was written by {meta['world_size']} processes, this run has "
                         f"{acc.num_processes}; resume with the same number of processes")
    model = trainer.unwrapped
    weights = dict(ckpt.model)
    weights.update({alias: weights[name] for alias, name in meta["model_aliases"].items()})
    load_full_state_dict(model, weights)  # FSDP2: each rank keeps its rows
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    live = trainer.optimizer.state_dict()
    groups = [{k: tuple(v) if isinstance(live_g.get(k), tuple) else v for k, v in g.items()}
              for g, live_g in zip(meta["optimizer"]["param_groups"], live["param_groups"])]
    state: dict[int, dict[str, Any]] = {}
    for pid in meta["optimizer"]["state_ids"]:
        entry = {k.rsplit("/", 1)[1]: shard_like(v, params[int(pid)]) for k, v in t.items()
                 if k.startswith(f"optimizer/{pid}/")}
        entry.update(meta["optimizer"]["scalars"].get(pid, {}))
        state[int(pid)] = entry
    trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
    trainer.scheduler.load_state_dict(meta["scheduler"])
    tracker: dict[str, dict[str, torch.Tensor]] = {"initial": {}, "previous": {}}
    for k, v in t.items():
        if k.startswith("tracker/"):
            _, part, name = k.split("/", 2)
            m = dict(sparse_modules(model)).get(name)
            tracker[part][name] = shard_rows(v, m.weight).clone() if m is not None else v  # FSDP2: this rank's rows
    trainer.tracker.load_state_dict(tracker)
    trainer.step, trainer.tokens = meta["step"], meta["tokens"]
    rank = f"rank{acc.process_index}/"
    mine = {k[len(rank):]: v for k, v in t.items() if k.startswith(rank)}
    _set_rng_state(meta["rng"][acc.process_index], mine)
    for fqn, m in sparse_modules(model):
        m.mvue_offset = meta["rng"][acc.process_index]["mvue_offsets"][fqn]


def load_checkpoint(trainer: Trainer, folder: str | Path) -> None:
    """Read ``folder`` and restore it into ``trainer``."""
    apply_checkpoint(trainer, read_checkpoint(folder))


# ---- finding -------------------------------------------------------------------------------------------------------
def checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete ``step-*`` folders under ``out_dir``, newest first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    steps = [(int(m.group(1)), p) for p in out.iterdir()
             if (m := _STEP.match(p.name)) and ((p / STATE).is_file() or (p / LEGACY).is_file())]
    return [p for _, p in sorted(steps, reverse=True)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The ``step-*`` folder with the highest step under ``out_dir`` (complete ones only), or None."""
    found = checkpoints(out_dir)
    return found[0] if found else None


def _wants_fresh(resume: Any) -> bool:
    return resume in (None, "", "no", "none", False)


def resolve_resume(resume: str | Path | None, out_dir: str | Path | None) -> Path | None:
    """``None``/``"no"``: fresh start; ``"auto"``: latest checkpoint in ``out_dir`` if any; else a folder."""
    if _wants_fresh(resume):
        return None
    if str(resume) == "auto":
        return latest_checkpoint(out_dir) if out_dir is not None else None
    p = Path(resume)
    if not (p / STATE).is_file() and not (p / LEGACY).is_file():
        raise FileNotFoundError(f"--resume {p}: not a checkpoint folder (expected {p / STATE}); use --resume auto "
                                "to pick the latest step-* folder of --out")
    return p


def _newest_readable(found: list[Path]) -> Checkpoint:
    """The newest of ``found`` that reads; each unreadable one is reported on stderr."""
    for i, folder in enumerate(found):
        try:
            return read_checkpoint(folder)
        except CheckpointError as e:
            nxt = f"falling back to {found[i + 1].name}" if i + 1 < len(found) else "no older checkpoint is left"
            print(f"sparse24: warning: {e}; {nxt}", file=sys.stderr, flush=True)
    raise CheckpointError(f"no readable checkpoint among {[p.name for p in found]}; pass --overwrite to start over")


def find_resume(resume: str | Path | Checkpoint | None, out_dir: str | Path | None,
                extra: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint a run continues from, read and checked against the run settings ``extra``.

    ``"auto"`` takes the newest readable ``step-*`` folder of ``out_dir`` (an unreadable one is reported and the
    previous one used); a folder must be readable. A checkpoint of a run with other settings is refused.
    """
    if isinstance(resume, Checkpoint):
        return resume
    folder = resolve_resume(resume, out_dir)
    if folder is None:
        return None
    if str(resume) == "auto":
        ckpt = _newest_readable(checkpoints(out_dir))
    else:
        ckpt = read_checkpoint(folder)
    check_same_run(ckpt, extra)
    return ckpt


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``step-*`` folders (0 keeps all)."""
    if keep <= 0:
        return
    steps = sorted((int(m.group(1)), p) for p in out_dir.iterdir() if (m := _STEP.match(p.name)))
    for _, p in steps[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
