"""Pick the SR-STE masked-decay λ by watching the flip rate over the warm-up (arXiv 2404.01847 chooses λ this way;
the exact rule is not published; :func:`pick_decay` states the one sparse24 uses).

For each λ it trains the same model from the same initialisation for ``steps`` optimizer steps (by default the warm-up
of the full run) and reports the mean flip rate per step of the method's mask over the second half. Too small a λ
leaves the flip rate high (masks keep oscillating); too large a λ freezes the masks early (flip rate near 0).

``python -m sparse24.train.sweep --lambdas 0 6e-5 2e-4 6e-4 --steps 100 --data shipped --tokenizer byte``
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["sweep_decay", "pick_decay"]


def sweep_decay(lambdas: list[float], steps: int, recipe: str = "srste_decay_ft", every: int = 1,
                **make_kw: Any) -> list[dict[str, float]]:
    """``[{"decay", "flip_rate", "final_loss", "val_loss"}]`` (``val_loss``: None without validation batches);
    ``make_kw`` go to :func:`sparse24.train.pretrain.make_trainer`."""
    from sparse24.train.pretrain import make_trainer
    from sparse24.train.recipe import load_recipe
    from sparse24.train.telemetry import MaskDriftMonitor

    base = load_recipe(recipe)
    if base.method != "srste":
        raise ValueError(f"the decay sweep needs an srste recipe, {recipe!r} uses {base.method}")
    out = []
    for lam in lambdas:
        r = base.replace(config={**base.config, "decay": float(lam)}, dense_finetune=0.0)
        trainer, _ = make_trainer(r, steps=steps, progress=False, **make_kw)
        trainer.after_step.append(MaskDriftMonitor(every=every))
        rows = trainer.fit()
        late = [x["drift_flip_rate"] for x in rows[steps // 2 :] if x.get("drift_flip_rate") is not None]
        out.append({"decay": float(lam), "flip_rate": sum(late) / max(len(late), 1) / every,
                    "final_loss": rows[-1]["loss"], "val_loss": rows[-1].get("val_loss")})
    return out


def pick_decay(rows: list[dict[str, float]]) -> tuple[float, str]:
    """The λ to use, from :func:`sweep_decay`'s rows (``decay``, ``flip_rate``): the smallest λ whose flip rate over
    the second half of the sweep is at most half of λ = 0's (masked decay should stop the masks oscillating, arXiv
    2404.01847, with as little pull on the weights as that takes); the largest λ swept if none is. Returns the λ and
    the rule in words."""
    rows = sorted(rows, key=lambda r: r["decay"])
    base = next((r["flip_rate"] for r in rows if r["decay"] == 0.0), None)
    if base is None:
        raise ValueError("the λ sweep needs λ = 0 (the flip rate without masked decay) to apply its rule")
    rule = f"smallest λ with flip rate ≤ ½ of λ=0's ({base:.2e}/step)"
    for r in rows:
        if r["decay"] > 0 and r["flip_rate"] <= base / 2:
            return r["decay"], rule
    return rows[-1]["decay"], rule + ": none reached it, so the largest λ swept"



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse24.train.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 6e-5, 2e-4, 6e-4, 2e-3])
    p.add_argument("--steps", type=int, default=100, help="warm-up steps to train per λ")
    p.add_argument("--recipe", default="srste_decay_ft")
    p.add_argument("--model", default="llama-tiny")
    p.add_argument("--data", default="olmo")
    p.add_argument("--tokenizer", default="bpe")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args(argv)
    rows = sweep_decay(a.lambdas, a.steps, a.recipe, model=a.model, data=a.data, tokenizer=a.tokenizer,
                       batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr, warmup=0.99)
    print(f"{'lambda':>10s} {'flip rate/step':>15s} {'loss':>8s}")
    for r in rows:
        print(f"{r['decay']:10.2e} {r['flip_rate']:15.5f} {r['final_loss']:8.4f}")
    if any(r["decay"] == 0.0 for r in rows):
        lam, rule = pick_decay(rows)
        print(f"picked λ = {lam:g} ({rule})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
