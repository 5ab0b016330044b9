"""The ``sparse24`` command: one subcommand per job, each a typed function in its own module.

A subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int | None``; this file only parses and calls.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sparse24.demo", "train a tiny Llama 2:4-sparse on shipped text, save, reload compressed, check"),
    "prune": ("sparse24.prune.cli", "prune an HF Llama-family checkpoint to 2:4 (magnitude, wanda, sparsegpt, ...)"),
    "eval": ("sparse24.eval.cli", "perplexity and lm-eval zero-shot accuracy of a dense or sparse24 checkpoint"),
    "train": ("sparse24.train.cli", "pretrain an HF causal LM with a 2:4 recipe (dense, srste_decay_ft, sste, ...)"),
    "bench": ("sparse24.kernels.bench", "kernel and backend microbenchmarks"),
    "convert": ("sparse24.convert", "convert 2:4 checkpoints: compressed-tensors sparse-24-bitmask <-> sparse24"),
}

EPILOG = """examples:
  sparse24 demo                                   # 2-minute tour on the CPU
  sparse24 prune --method sparsegpt --out pruned  # prune the default model to 2:4
  sparse24 eval pruned --tasks arc_easy --limit 50
  sparse24 <command> --help                       # every flag, with defaults
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse24", description="2:4 semi-structured sparsity for LLMs: train, prune, evaluate, benchmark.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from sparse24 import __version__

    parser.add_argument("--version", action="version", version=f"sparse24 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend choices and progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        if importlib.util.find_spec(module.rpartition(".")[0] or module) is None:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "_module", None):
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"sparse24 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
