"""``python -m sparse24.train`` (what ``accelerate launch -m sparse24.train`` runs): the ``sparse24 train`` command."""

from __future__ import annotations

import argparse
import sys

from sparse24.train.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse24.train", description=(__doc__ or "").strip())
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, RuntimeError, PermissionError) as e:
        print(f"sparse24 train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
