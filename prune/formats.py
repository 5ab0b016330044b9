"""Checkpoint writers for ``sparse24 prune --format``: a name -> function registry.

A writer receives a :class:`WriteJob` (the assembled model, the output folder, the pruner that produced it, the
record for ``sparse24_config.json`` and the output flags) and writes the folder atomically, refusing a model it cannot
represent with a message. ``sparse24`` (the default) lets the pruner save itself (:meth:`Pruner.save`: an HF folder
plain transformers loads plus ``sparse24_config.json``; ARMOR adds ``armor.safetensors``). Other formats register
with :func:`register_writer` and are imported by :func:`_load_builtin`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["WriteJob", "WRITERS", "register_writer", "get_writer", "writer_table"]


@dataclass
class WriteJob:
    """Everything a writer needs; returns nothing, prints nothing (it may return lines for the CLI to print)."""

    model: Any  # nn.Module with the pruned modules (Pruner.assemble)
    out: Path
    pruner: Any  # the Pruner that produced the weights (its .name is the method)
    record: dict[str, Any]  # calibration, settings, report, versions: sparse24_config.json's "extra"
    compressed: bool
    overwrite: bool


Writer = Callable[[WriteJob], list[str]]
WRITERS: dict[str, tuple[Writer, str]] = {}


def register_writer(name: str, summary: str) -> Callable[[Writer], Writer]:
    """Decorator: make ``fn(job: WriteJob) -> list[str]`` available as ``--format <name>``."""

    def deco(fn: Writer) -> Writer:
        WRITERS[name] = (fn, summary)
        return fn

    return deco


@register_writer("sparse24", "HF folder (dense weights with zeros) + sparse24_config.json; the pruner's own format")
def write_sparse24(job: WriteJob) -> list[str]:
    return job.pruner.save(job.model, job.out, record=job.record, compressed=job.compressed, overwrite=job.overwrite)


@register_writer("compressed-tensors", "compressed-tensors sparse-24-bitmask folder (legacy: loads only with "
                 "compressed-tensors<=0.14.0.1 + transformers<5, vLLM<=0.18 on sm90; see sparse24 convert --help)")
def write_compressed_tensors(job: WriteJob) -> list[str]:
    from sparse24.compressed_tensors import write_compressed_tensors as write

    write(job.model, job.out, overwrite=job.overwrite)
    if job.compressed:
        return ["note: --compressed is moot with --format compressed-tensors (the bitmask format is compressed)"]
    return []


def _load_builtin() -> None:
    """Import the modules that register more writers (a place for third-party formats)."""


def get_writer(name: str) -> Writer:
    _load_builtin()
    if name not in WRITERS:
        raise ValueError(f"--format {name!r}: choose one of {sorted(WRITERS)}")
    return WRITERS[name][0]


def writer_table() -> str:
    _load_builtin()
    return "output formats (--format):\n" + "\n".join(f"  {n:<18} {s}" for n, (_, s) in sorted(WRITERS.items()))
