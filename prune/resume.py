"""The ``<out>.partial/`` work folder that makes a pruning run resumable.

``run.json`` holds the run's fingerprint (the source model by content, method and settings, calibration hash, targets,
dtype, batch size; built by :func:`sparse24.prune.cli.run_fingerprint`).
After layer ``l`` the driver writes ``layer_0000l.safetensors`` (pruned weights, masks, per-linear report) and then
``acts.safetensors`` (the calibration inputs of layer ``l+1``); both by write-to-temp + rename, so a killed run leaves
either the old or the new file, never half of one. A restart with the same fingerprint continues at the layer named
in ``acts.safetensors`` and produces bit-identical output; a different fingerprint is refused naming every
difference, nothing is touched. A folder with no finished layer holds nothing worth keeping:
:meth:`WorkState.discard_if_empty` removes it after a failure, so a corrected rerun starts cleanly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sparse24.fileio import atomic_save_safetensors, atomic_write_json

__all__ = ["WorkState"]


class WorkState:
    """Read/write the resumable state of one pruning run."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any], fresh: bool = False) -> None:
        self.folder, self.fingerprint = Path(folder), json.loads(json.dumps(fingerprint, default=str))
        run = self.folder / "run.json"
        if fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
        if run.is_file():
            old = json.loads(run.read_text())
            diff = _diff(old, self.fingerprint)
            if diff:
                done = len(list(self.folder.glob("layer_*.safetensors")))
                raise ValueError(f"{self.folder} holds a partial run ({done} layers done) made with different "
                                 "arguments or a different source model:\n" + "\n".join(diff) + "\nrerun with the "
                                 "partial run's arguments to resume it, or pass --overwrite to discard it and start "
                                 "over")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run, self.fingerprint)

    def layer_path(self, index: int) -> Path:
        return self.folder / f"layer_{index:05d}.safetensors"

    def save_layer(self, index: int, tensors: dict[str, torch.Tensor], report: dict[str, Any]) -> None:
        atomic_save_safetensors(tensors, self.layer_path(index), {"report": json.dumps(report)})

    def layer_keys(self, index: int) -> tuple[list[str], dict[str, Any]]:
        """The tensor names saved for layer ``index`` and its report, without reading any tensor data."""
        from safetensors import safe_open

        with safe_open(str(self.layer_path(index)), "pt") as f:
            return list(f.keys()), json.loads((f.metadata() or {}).get("report", "{}"))

    def load_tensor(self, index: int, key: str) -> torch.Tensor:
        """One saved tensor of layer ``index``."""
        from safetensors import safe_open

        with safe_open(str(self.layer_path(index)), "pt") as f:
            return f.get_tensor(key)

    def save_acts(self, next_layer: int, hidden: torch.Tensor | None, dense: torch.Tensor | None = None) -> None:
        """The calibration inputs of layer ``next_layer`` (and the dense model's, for ``dense_target`` pruners)."""
        tensors = {"hidden": hidden} if hidden is not None else {"none": torch.zeros(0)}
        if dense is not None:
            tensors["dense"] = dense
        atomic_save_safetensors(tensors, self.folder / "acts.safetensors", {"next_layer": str(next_layer)})

    def resume_point(self) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """``(first layer still to do, its calibration inputs or None, the dense model's inputs or None)``;
        ``(0, None, None)`` for a fresh run."""
        path = self.folder / "acts.safetensors"
        if not path.is_file():
            return 0, None, None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            nxt = int((f.metadata() or {})["next_layer"])
        missing = [i for i in range(nxt) if not self.layer_path(i).is_file()]
        if missing:
            raise RuntimeError(f"{self.folder}: layer files {missing} are missing; delete the folder to start over")
        acts = load_file(str(path))
        return nxt, acts.get("hidden"), acts.get("dense")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def discard_if_empty(self) -> bool:
        """Remove the folder when no layer was finished (after a failure); True if it was removed."""
        if self.folder.is_dir() and not any(self.folder.glob("layer_*.safetensors")):
            self.remove()
            return True
        return False


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """One line per differing key (one level into dicts, e.g. ``settings.percdamp``, ``model_files.<shard>``)."""
    lines = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and not prefix:
            lines += _diff(a, b, f"{k}.")
        else:
            lines.append(f"  {prefix}{k}: {_show(a)} (partial run) vs {_show(b)} (now)")
    return lines


def _show(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 200 else text[:197] + "..."
