"""Plots of ``metrics.jsonl`` files: loss curves of several runs on one figure, and flip-rate curves.

``python -m sparse24.train.plot runs/dense runs/sste --out loss.png [--flips flips.png]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparse24.train.telemetry import read_jsonl

__all__ = ["plot_losses", "plot_flip_rates", "smooth"]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (window 1 = raw)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _runs(run_dirs: list[str | Path]) -> dict[str, list[dict]]:
    runs = {}
    for d in run_dirs:
        p = Path(d)
        runs[p.name] = read_jsonl(p / "metrics.jsonl" if p.is_dir() else p)
    return runs


def plot_losses(run_dirs: list[str | Path], out: str | Path, window: int = 20) -> Path:
    """Training loss (smoothed) and validation loss of every run, x = tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, rows) in enumerate(_runs(run_dirs).items()):
        color = f"C{i}"
        ax.plot([r["tokens"] for r in rows], smooth([r["loss"] for r in rows], window), color=color, alpha=0.6,
                label=f"{name} train")
        val = [r for r in rows if r.get("val_loss") is not None]
        ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", color=color, ms=3,
                label=f"{name} val")
    ax.set(xlabel="tokens", ylabel="loss (nats/token)", title="pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_flip_rates(run_dirs: list[str | Path], out: str | Path, key: str = "flip_rate") -> Path:
    """Flip rate (``flip_rate``, ``flip_rate_init`` or ``drift_flip_rate``) per step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, rows) in enumerate(_runs(run_dirs).items()):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts), ".-", color=f"C{i}", ms=3, label=name)
    ax.set(xlabel="optimizer step", ylabel=key, yscale="log", title=f"mask {key.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse24.train.plot", description=__doc__)
    p.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl) or metrics files")
    p.add_argument("--out", default="loss.png", help="loss plot (PNG)")
    p.add_argument("--flips", help="also write a flip-rate plot here")
    p.add_argument("--flip-key", default="flip_rate", help="flip_rate, flip_rate_init or drift_flip_rate")
    p.add_argument("--window", type=int, default=20, help="moving-average window of the training loss")
    a = p.parse_args(argv)
    print(plot_losses(a.runs, a.out, a.window))
    if a.flips:
        print(plot_flip_rates(a.runs, a.flips, a.flip_key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
