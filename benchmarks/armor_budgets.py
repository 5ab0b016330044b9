"""ARMOR at extra-parameter budgets on SmolLM2-135M, layer level: how much of the admm layer error it removes.

For a few decoder layers, the inputs of every linear are collected from the *dense* model (``--nsamples`` windows of
``--seqlen`` tokens of the ``calib`` text, seed 0; a held-out set with seed 1), then each linear is pruned by
``admm`` (the default one-shot method) and by ``armor --armor-init admm`` at each ``--budgets`` entry (block size from
:func:`sparse24.prune.armor.block_size_for_budget` on the full model, as ``--armor-budget`` does). The table gives the
relative layer error ``‖(W − Ŵ)X‖² / ‖WX‖²`` summed over the layer's linears, on the calibration windows and on the
held-out ones, and ARMOR's CPU seconds. This is the layer-level proxy only; the end-to-end perplexity needs
``sparse24 prune --method armor --armor-budget B --quick --eval`` (about 1.8 min per layer on a loaded 2-core CPU).

    python benchmarks/armor_budgets.py --threads 1            # layers 2 15 28, budgets 2 5 10, 8 iterations
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[2, 15, 28])
    p.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10])
    p.add_argument("--iters", type=int, default=8, help="ARMOR iterations per linear (default 8)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "armor_budgets.md",
                   help="writes <out>.json (the record) and <out>.table.md")
    p.add_argument("--render", type=Path, default=None, help="only print the table of an existing record (.json)")
    return p.parse_args()


def hessians(model, ids: torch.Tensor, layers: list[int]) -> dict[str, torch.Tensor]:
    """``2/N Σ x xᵀ`` (float64) of every linear's input in ``layers``, from the dense model."""
    acc: dict[str, torch.Tensor] = {}
    hooks = []
    for i in layers:
        for name, mod in model.model.layers[i].named_modules():
            if isinstance(mod, torch.nn.Linear):
                key = f"model.layers.{i}.{name}"

                def hook(m, inp, out, key=key):
                    x = inp[0].reshape(-1, inp[0].shape[-1]).double()  # [T, in]
                    acc[key] = acc.get(key, 0) + x.t() @ x

                hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for s in range(ids.shape[0]):
            model(ids[s : s + 1])
    for h in hooks:
        h.remove()
    return {k: v * 2 / ids.shape[0] for k, v in acc.items()}


def main() -> None:
    args = parse()
    if args.render is not None:
        print(render(json.loads(args.render.read_text())))
        return
    torch.set_num_threads(args.threads)
    from sparse24.prune.armor import block_size_for_budget
    from sparse24.prune.base import LayerStats, get_pruner
    from sparse24.prune.refit import layer_error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse24.assets import resolve_model
    from sparse24.texts import calibration_samples, read_text, tokenize_text

    model_dir = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = tokenize_text(tok, read_text("calib"))
    calib = hessians(model, calibration_samples(tokens, args.nsamples, args.seqlen, 0), args.layers)
    held = hessians(model, calibration_samples(tokens, args.nsamples, args.seqlen, 1), args.layers)
    shapes = [(m.out_features, m.in_features) for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and ".layers." in n]
    total = sum(p.numel() for p in model.parameters())
    per_block = sum(o + i for o, i in shapes)
    sizes = {b: block_size_for_budget(total, shapes, b) for b in args.budgets}
    rows = []
    load0 = os.getloadavg()
    for i in args.layers:
        names = [k for k in calib if k.startswith(f"model.layers.{i}.")]
        err = {"admm": [0.0, 0.0, 0.0]}  # calib, held-out, cpu s
        base = {}
        for n in names:
            w = model.get_submodule(n).weight.detach()
            h = calib[n]
            st = LayerStats(args.nsamples, args.nsamples * args.seqlen, sqnorm=torch.diagonal(h).clone() / 2, hessian=h)
            t = time.process_time()
            one = get_pruner("admm").prune(w, st)
            err["admm"][2] += time.process_time() - t
            base[n] = (w, st, one)
            for j, hh in enumerate((h, held[n])):
                err["admm"][j] += float(layer_error(w, one.weight, hh).sum() / layer_error(w, 0 * w, hh).sum())
        for b, bs in sizes.items():
            key = f"armor {b:g} %"
            err[key] = [0.0, 0.0, 0.0]
            for n in names:
                w, st, one = base[n]
                pruner = get_pruner("armor", block_size=bs, iters=args.iters)
                pruner.init_pruner.prune = lambda *a, one=one: one  # the admm result computed above, not again
                t = time.process_time()
                res = pruner.prune(w, st)
                err[key][2] += time.process_time() - t
                for j, hh in enumerate((calib[n], held[n])):
                    err[key][j] += float(layer_error(w, res.weight, hh).sum() / layer_error(w, 0 * w, hh).sum())
        for key, (c, hld, sec) in err.items():
            rows.append({"layer": i, "method": key, "calib_err": c, "heldout_err": hld, "cpu_s": sec,
                         "vs_admm_calib": c / err["admm"][0] - 1, "vs_admm_heldout": hld / err["admm"][1] - 1})
        print(json.dumps(rows[-len(err):]), flush=True)
    record = {"rows": rows, "block_sizes": {f"{b:g}": bs for b, bs in sizes.items()},
              "extra_params_pct": {f"{b:g}": 100 * bs * per_block / total for b, bs in sizes.items()},
              "args": {k: str(v) for k, v in vars(args).items()}, "load_before": load0, "load_after": os.getloadavg(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    table = render(record)
    print(table)
    args.out.with_suffix(".table.md").write_text(table + "\n")


def render(record: dict) -> str:
    """The markdown table of a run's record (``python benchmarks/armor_budgets.py --render <json>``)."""
    lines = ["| layer | method | block | extra params | calib err | held-out err | vs admm (calib) "
             "| vs admm (held-out) | cpu s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        b = r["method"].split()[1] if r["method"] != "admm" else None  # "armor 5 %" -> "5"
        block = str(record["block_sizes"][b]) if b else "-"
        extra = f"{record['extra_params_pct'][b]:.1f} %" if b else "0"
        lines.append(f"| {r['layer']} | {r['method']} | {block} | {extra} | {r['calib_err']:.4f} | "
                     f"{r['heldout_err']:.4f} | {100 * r['vs_admm_calib']:+.1f} % | "
                     f"{100 * r['vs_admm_heldout']:+.1f} % | {r['cpu_s']:.1f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
