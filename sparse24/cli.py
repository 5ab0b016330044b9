"""The ``sparse24`` command: one subcommand per job, each in its own module.

A subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int | None``; this file only parses and calls.
Only the module of the command being run is imported, so ``sparse24 --help`` stays instant and imports no method.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sparse24.demo", "train a tiny Llama 2:4-sparse on shipped text, save, reload compressed, check"),
    "prune": ("sparse24.prune.cli", "prune an HF Llama-family checkpoint to 2:4 (sparsegpt, wanda, armor, ...)"),
    "eval": ("sparse24.eval.cli", "perplexity and lm-eval zero-shot accuracy of a dense or sparse24 checkpoint"),
    "retrain": ("sparse24.train.retrain", "retrain a pruned model to recover quality: AST (distillation, adaptive "
                "masks, SLoRB)"),
    "train": ("sparse24.train.cli", "pretrain an HF causal LM with a 2:4 recipe (dense, srste_decay_ft, sste, ...)"),
    "convert": ("sparse24.convert", "convert 2:4 checkpoints: compressed-tensors sparse-24-bitmask <-> sparse24"),
    "bench": ("sparse24.bench", "kernel and backend microbenchmarks (GEMM, SparseLinear, kernels, generate)"),
}

EPILOG = """examples:
  sparse24 demo                                   # 1-minute tour of the core on the CPU
  sparse24 prune --quick --eval                   # prune the default model to 2:4 and compare perplexity
  sparse24 prune --method list                    # the one-shot methods
  sparse24 eval out/quick-sparsegpt --tasks arc_easy --limit 50
  sparse24 <command> --help                       # every flag of a command, with defaults
"""


def _command_in(argv: list[str]) -> str | None:
    """The first argument that names a command (options before it, like ``-v``, are skipped)."""
    for a in argv:
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments."""
    from sparse24 import __version__

    parser = argparse.ArgumentParser(
        prog="sparse24", description="2:4 semi-structured sparsity for LLMs: train, prune, evaluate, benchmark.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sparse24 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend choices and progress details, "
                        "and show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "_module", None):
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, TypeError, RuntimeError, OSError) as e:
        if args.verbose:
            raise
        print(f"sparse24 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
