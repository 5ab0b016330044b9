"""Telemetry: one JSON object per optimizer step in ``metrics.jsonl`` (appended and flushed as the run goes)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["JsonlLog", "read_jsonl"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class JsonlLog:
    """Appends rows; on resume drops the rows past the checkpoint's step so the file matches an uninterrupted run."""

    def __init__(self, path: str | Path, truncate_after: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after is not None and self.path.exists():
            from sparse24.fileio import atomic_write_text

            keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= truncate_after]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics file (a torn last line from a killed run is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MaskDriftMonitor:
    """``after_step`` hook: every ``every`` steps, the flip rate of the masks each layer's method *would* pick now.

    Independent of the refresh period, so runs that refresh every step (STE, S-STE) and every 40 steps (T-SR-STE)
    compare on one scale: ``drift_flip_rate`` = fraction of mask bits changed over the last ``every`` steps,
    ``drift_flip_rate_init`` = vs the first monitored mask.
    """

    def __init__(self, every: int = 40) -> None:
        from sparse24.tracking import FlipTracker

        self.every, self.tracker, self.started = every, FlipTracker(), False

    def __call__(self, trainer: Any) -> dict[str, float] | None:
        from sparse24.api import sparse_modules

        if not self.started or trainer.step % self.every == 0:
            masks = {n: m.compute_mask() for n, m in sparse_modules(trainer.model)}
            stats = self.tracker.update(masks) if masks else {}
            first, self.started = not self.started, True
            if not first and stats:
                return {"drift_flip_rate": stats["flip_rate"], "drift_flip_rate_init": stats["flip_rate_init"]}
        return None
