"""``python -m sparse24.train`` (what ``accelerate launch -m sparse24.train`` runs): the ``sparse24 train`` command."""

from __future__ import annotations

import sys

from sparse24.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
