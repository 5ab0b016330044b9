"""Quality against training tokens: perplexity of the model being trained, every N tokens, next to fixed baselines.

Used by ``sparse24 retrain``: the start (the one-shot model, step 0) and the dense teacher are scored once and kept in
``baselines.json`` of the run folder; the trained model is scored by an ``after_step`` hook every ``every_tokens``
tokens and at the last step, so the points live in ``metrics.jsonl`` (``eval_ppl``) and survive a resume. At the end
:func:`write_curve` writes a CSV and a PNG (perplexity against tokens, baselines as horizontal lines).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["score", "ppl_hook", "baselines", "write_curve"]


def score(model: nn.Module, tokens: torch.Tensor, seqlen: int, windows: int) -> float:
    """Perplexity of ``model`` on the first ``windows`` non-overlapping windows of ``tokens`` (training mode kept)."""
    from sparse24.perplexity import perplexity

    was_training = model.training
    try:
        return float(perplexity(model, tokens, seqlen, max_windows=windows)["ppl"])
    finally:
        model.train(was_training)


def ppl_hook(tokens: torch.Tensor, seqlen: int, windows: int, every_tokens: int) -> Callable[[Any], dict | None]:
    """``after_step`` hook: ``{"eval_ppl": ...}`` when a multiple of ``every_tokens`` was crossed, and at the end."""

    def hook(trainer: Any) -> dict | None:
        cfg, acc = trainer.cfg, trainer.accelerator
        step_tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum * acc.num_processes
        crossed = every_tokens > 0 and trainer.tokens // every_tokens > (trainer.tokens - step_tokens) // every_tokens
        if crossed or trainer.step == cfg.steps:
            return {"eval_ppl": score(trainer.unwrapped, tokens, seqlen, windows)}
        return None

    return hook


def baselines(folder: Path, fresh: bool, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The baseline perplexities of a run: computed on a fresh start (``compute()``), read back on a resume."""
    from sparse24.fileio import atomic_write_json

    path = folder / "baselines.json"
    if fresh or not path.is_file():
        if not fresh:
            raise FileNotFoundError(f"{path} is missing, so the start of the curve cannot be recovered; pass "
                                    "--overwrite to start the run over")
        values = compute()
        atomic_write_json(path, values)
        return values
    return json.loads(path.read_text(encoding="utf-8"))


def write_curve(rows: list[dict], start: float, lines: dict[str, float], out: Path,
                title: str) -> tuple[Path, Path]:
    """``out.csv`` (tokens, step, perplexity; ``start`` at step 0, ``lines`` as comment rows) and ``out.png``
    (the curve with ``lines`` horizontal)."""
    from sparse24.train.plot import plot_curve

    from sparse24.fileio import atomic_write_text

    points = [(0, 0, start)] + [(r["tokens"], r["step"], r["eval_ppl"]) for r in rows
                                if r.get("eval_ppl") is not None]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tokens", "step", "perplexity"])
    w.writerows(points)
    for name, value in lines.items():
        w.writerow([f"# {name}", "", value])
    csv_path = atomic_write_text(out.with_suffix(".csv"), buf.getvalue())
    png = plot_curve([(t, p) for t, _, p in points], lines, out.with_suffix(".png"), title)
    return csv_path, png
