"""Plots of ``metrics.jsonl`` files: loss curves of several runs (full run + a zoom on its end), final losses as bars
with error bars, and flip-rate curves with their axes said in words.

``python -m sparse24.train.plot runs/dense runs/sste --out loss.png [--final final.png] [--flips flips.png]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparse24.train.telemetry import read_jsonl

__all__ = ["plot_losses", "plot_final_losses", "plot_flip_rates", "plot_curve", "plot_bands", "final_losses", "smooth",
           "FLIP_LABELS"]

# what each flip-rate key measures, in words (axis label, title)
FLIP_LABELS = {
    "flip_rate": ("fraction of mask bits changed by one refresh", "mask changes per refresh"),
    "flip_rate_init": ("fraction of mask bits differing from the initial mask", "mask distance from the start"),
    "drift_flip_rate": ("fraction of mask bits changed over 40 steps", "mask drift (masks the method would pick now)"),
}


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
        runs[p.stem if p.is_file() else p.name] = read_jsonl(p / "metrics.jsonl" if p.is_dir() else p)
    return runs


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(run_dirs: list[str | Path], out: str | Path, window: int = 20, zoom: float = 0.5) -> Path:
    """Training loss (smoothed) and validation loss of every run, x = tokens; the right panel zooms on the last
    ``zoom`` fraction of the tokens, its y-range fitted to that part (where the recipes differ)."""
    plt = _plt()
    runs = _runs(run_dirs)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    end = max((r[-1]["tokens"] for r in runs.values() if r), default=0)
    lo, hi = float("inf"), float("-inf")
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i}"
        x, y = [r["tokens"] for r in rows], smooth([r["loss"] for r in rows], window)
        val = [r for r in rows if r.get("val_loss") is not None]
        for ax in axes:
            ax.plot(x, y, color=color, alpha=0.6, label=f"{name} train (mean of {window} steps)")
            ax.errorbar([r["tokens"] for r in val], [r["val_loss"] for r in val],
                        yerr=[r.get("val_loss_se") or 0.0 for r in val], fmt="o-", color=color, ms=3, capsize=2,
                        label=f"{name} validation")
        tail = [v for t, v in zip(x, y) if t >= (1 - zoom) * end] + [r["val_loss"] for r in val
                                                                     if r["tokens"] >= (1 - zoom) * end]
        if tail:
            lo, hi = min(lo, *tail), max(hi, *tail)
    axes[0].set(xlabel="training tokens", ylabel="loss (nats/token)", title="pretraining loss: whole run")
    axes[1].set(xlabel="training tokens", ylabel="loss (nats/token)",
                title=f"last {zoom:.0%} of the run (zoomed: where the recipes differ)")
    if end and lo < hi:
        pad = 0.08 * (hi - lo)
        axes[1].set_xlim((1 - zoom) * end, end * 1.01)
        axes[1].set_ylim(lo - pad, hi + pad)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def final_losses(run_dirs: list[str | Path]) -> dict[str, dict[str, float | None]]:
    """Per run: the last validation loss and its standard error (over the validation batches), from the metrics."""
    out = {}
    for name, rows in _runs(run_dirs).items():
        val = [r for r in rows if r.get("val_loss") is not None]
        if val:
            out[name] = {"val": val[-1]["val_loss"], "se": val[-1].get("val_loss_se")}
    return out


def plot_final_losses(finals: dict[str, dict[str, float | None]], out: str | Path, reference: str | None = "dense",
                      drift: dict[str, float | None] | None = None, note: str = "",
                      axis: tuple[str, str] | None = None) -> Path:
    """Final validation loss per run as points with ±2 SE error bars (or, where given, ``ci``: a 95 % interval over
    seeds) on a zoomed axis, each labelled with its difference to ``reference``; with ``drift``, a second panel
    of mask drift as bars, axes in words. ``axis`` = (x label, title) when the values are not losses (e.g. gaps
    to dense in %, with ``reference=None``)."""
    plt = _plt()
    names = list(finals)
    vals = [finals[n]["val"] for n in names]
    over_seeds = any(finals[n].get("ci") is not None for n in names)  # 95 % interval over seeds instead of 2 SE
    errs = [(finals[n].get("ci") or 0.0) if over_seeds else 2 * (finals[n].get("se") or 0.0) for n in names]
    panels = 2 if drift else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 0.5 * len(names) + 2.2), squeeze=False)
    ax = axes[0][0]
    ys = list(range(len(names)))[::-1]
    has_se = any(errs)
    for i, (y, v, e) in enumerate(zip(ys, vals, errs)):  # points, not bars: the axis is zoomed, bars would mislead
        ax.errorbar([v], [y], xerr=[e] if has_se else None, fmt="o", color=f"C{i}", ms=7, capsize=4)
    lo = min(v - e for v, e in zip(vals, errs))
    hi = max(v + e for v, e in zip(vals, errs))
    pad = 0.15 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + 2.5 * pad)
    ref = finals.get(reference, {}).get("val") if reference else None
    for y, v, e in zip(ys, vals, errs):
        label = (f"{v:+.2f}" + (f" [{v - e:+.2f}, {v + e:+.2f}]" if e else "") if axis else f"{v:.3f}") + (
            f" ({100 * (v / ref - 1):+.2f} % vs {reference})" if ref and v is not None else "")
        ax.text(v + e + 0.3 * pad, y, label, va="center", fontsize=8)
    if ref:
        ax.axvline(ref, color="k", lw=0.8, ls="--")
    ax.set_yticks(ys, names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    spread = ", 95 % interval of the mean over seeds" if over_seeds else ", ± 2 standard errors"
    xlabel, title = axis or ("final validation loss (nats/token; axis zoomed)" + (spread if has_se else ""),
                             "final validation loss per recipe (lower is better)")
    ax.set(xlabel=xlabel, title=title)
    if not has_se:
        note = (note + "; " if note else "") + ("no error bars: one value each (one seed)" if axis else
                                                "no error bars: the spread over validation batches was not recorded")
    if drift:
        ax2 = axes[0][1]
        dv = [drift.get(n) for n in names]
        ax2.barh(ys, [d or 0.0 for d in dv], color=[f"C{i}" for i in range(len(names))], alpha=0.8)
        for y, d in zip(ys, dv):
            ax2.text((d or 0.0) * 1.02 + 0.002, y, "no 2:4 mask" if d is None else f"{d:.3f}", va="center",
                     fontsize=8)
        ax2.set_yticks(ys, names)
        ax2.set(xlabel="fraction of mask bits changed over 40 steps (mean after warm-up)",
                title="mask drift: how much the 2:4 masks still move")
        ax2.set_xlim(0, max([d for d in dv if d is not None] or [1.0]) * 1.3)
    if note:
        fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_curve(points: list[tuple[float, float]], lines: dict[str, float], out: str | Path, title: str,
               xlabel: str = "training tokens", ylabel: str = "perplexity") -> Path:
    """A quality curve (``points`` = (tokens, value)) with reference values as labelled horizontal lines; the y axis
    is logarithmic when the values span more than a factor of 3."""
    plt = _plt()
    values = [v for _, v in points] + list(lines.values())
    log = min(values) > 0 and max(values) / min(values) > 3
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, value) in enumerate(lines.items()):
        ax.axhline(value, color=f"C{i + 1}", ls="--", lw=1, label=f"{name}: {value:.2f}")
    if points:
        ax.plot(*zip(*points), "o-", color="C0", ms=4, label=f"retrained: {points[-1][1]:.2f} at the end")
    ax.set(xlabel=xlabel, ylabel=ylabel + (" (log scale)" if log else ""), yscale="log" if log else "linear",
           title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _band(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """x values every curve has, and the mean, min and max of y over the curves at each of them."""
    common = sorted(set.intersection(*(set(x for x, _ in c) for c in curves)))
    ys = [[dict(c)[x] for c in curves] for x in common]
    return common, [sum(y) / len(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys]


def plot_bands(groups: dict[str, list[list[tuple[float, float]]]], out: str | Path, xlabel: str, ylabel: str,
               title: str, log: bool = False, zoom: float | None = None) -> Path:
    """One line per group (the mean over its curves, e.g. seeds) with the min–max range shaded; a group without
    points keeps its colour but draws nothing. With ``zoom``, a second panel on the last ``zoom`` fraction of x, its
    y-range fitted to that part."""
    plt = _plt()
    panels = 2 if zoom else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5), squeeze=False)
    # colours follow the order of ``groups``, empty groups included, so one name has one colour in every plot
    bands = {name: (i, _band(curves)) for i, (name, curves) in enumerate(groups.items()) if curves and all(curves)}
    for j, ax in enumerate(axes[0]):
        lo, hi = float("inf"), float("-inf")
        for name, (i, (x, mean, low, high)) in bands.items():
            if j == 1:
                start = max(x) * (1 - zoom) if x else 0
                keep = [k for k, v in enumerate(x) if v >= start]
                x, mean, low, high = ([seq[k] for k in keep] for seq in (x, mean, low, high))
                lo, hi = min([lo, *low]), max([hi, *high])
            n = len(groups[name])
            ax.plot(x, mean, "-", color=f"C{i}", lw=1.5, label=f"{name} (mean of {n})" if n > 1 else name)
            if n > 1:
                ax.fill_between(x, low, high, color=f"C{i}", alpha=0.2, lw=0)
        if j == 1 and lo < hi:
            pad = 0.05 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set(xlabel=xlabel, ylabel=ylabel + (" (log scale)" if log else ""), yscale="log" if log else "linear",
               title=title if j == 0 else f"zoom: the last {zoom:.0%}")
        ax.grid(alpha=0.3, which="both")
        if bands:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing to draw yet", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("lines: mean over seeds; shaded: min–max over seeds", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_flip_rates(run_dirs: list[str | Path], out: str | Path, key: str = "flip_rate") -> Path:
    """Flip rate (``flip_rate``, ``flip_rate_init`` or ``drift_flip_rate``) per step, log scale, axes in words."""
    plt = _plt()
    ylabel, title = FLIP_LABELS.get(key, (key.replace("_", " "), f"mask {key.replace('_', ' ')}"))
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, rows) in enumerate(_runs(run_dirs).items()):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts), ".-", color=f"C{i}", ms=3, label=name)
    ax.set(xlabel="optimizer step", ylabel=f"{ylabel} (log scale)", yscale="log", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse24.train.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl) or metrics files")
    p.add_argument("--out", default="loss.png", help="loss curves, whole run and zoomed end (PNG)")
    p.add_argument("--final", help="also write final validation losses as bars with error bars here (PNG)")
    p.add_argument("--flips", help="also write a flip-rate plot here")
    p.add_argument("--flip-key", default="flip_rate", choices=sorted(FLIP_LABELS), help="which flip rate to plot")
    p.add_argument("--window", type=int, default=20, help="moving-average window of the training loss")
    p.add_argument("--zoom", type=float, default=0.5, help="fraction of the run shown in the zoomed panel")
    a = p.parse_args(argv)
    if not 0 < a.zoom <= 1:
        p.error("--zoom must be in (0, 1]")
    print(plot_losses(a.runs, a.out, a.window, a.zoom))
    if a.final:
        print(plot_final_losses(final_losses(a.runs), a.final))
    if a.flips:
        print(plot_flip_rates(a.runs, a.flips, a.flip_key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
