"""Training recipes: YAML files in ``train/recipes/`` that say which layers go 2:4, with which method, and how to train.

A recipe is a flat mapping checked field by field (unknown field or wrong type -> an error naming the field and file;
``method`` is required, ``config`` fields have their config class's types). Defaults follow the papers (arXiv
2404.01847's GPT-2 recipes, arXiv 2409.09099): AdamW β=(0.9, 0.95), weight decay 0.1, clip 1.0, cosine schedule with
1 % warm-up; T-SR-STE masks every 40 steps with masked decay on the gradients and a dense fine-tune over the last 1/6
of the steps; S-STE with a fixed β and no decay. Sizes (steps, batch, lr) are usually set on the command line, since
they depend on the model. A shipped name always means the shipped recipe; write a path (``./x``, ``x.yaml``) for a file.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sparse24.config import SparseConfig

__all__ = ["Recipe", "load_recipe", "list_recipes", "FFN_PATTERNS", "RecipeError"]

# FFN linears of the supported families: Llama/Mistral/Qwen (gate/up/down), GPT-2 (c_fc/c_proj inside .mlp), OPT/NeoX.
FFN_PATTERNS = ("*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj", "*.mlp.c_fc", "*.mlp.c_proj",
                "*.fc1", "*.fc2", "*.mlp.dense_h_to_4h", "*.mlp.dense_4h_to_h")
METHODS = ("dense", "srste", "sste", "magnitude")
LAYERS = ("ffn", "all")


class RecipeError(ValueError):
    """A recipe file that does not parse; the message names the file and the field."""


@dataclass(frozen=True)
class Recipe:
    """One training recipe. ``config`` holds the fields of the method's sparse24 config (e.g. ``SRSTEConfig``)."""

    name: str = "custom"
    method: str = "dense"  # dense | srste | sste | magnitude
    layers: str = "ffn"  # ffn: FFN linears only; all: every linear but embeddings / lm_head
    config: dict = field(default_factory=dict)
    dense_finetune: float = 0.0  # fraction of the steps, at the end, trained dense (T-SR-STE: 1/6)
    lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup: float = 0.01  # fraction of the steps
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    clip: float = 1.0
    description: str = ""

    def sparse_config(self) -> SparseConfig | None:
        """The sparse24 config object, or None for the dense baseline."""
        if self.method == "dense":
            return None
        return SparseConfig.from_dict({"method": self.method, **self.config})

    def sparsify_spec(self) -> dict[str, SparseConfig | None] | SparseConfig | None:
        """What :func:`sparse24.sparsify` takes: FFN patterns only, or every linear (head/embeddings stay dense)."""
        cfg = self.sparse_config()
        if cfg is None or self.layers == "all":
            return cfg
        return {"_default": None, **{p: cfg for p in FFN_PATTERNS}}

    def replace(self, **kw: Any) -> Recipe:
        """A copy with some fields changed (validated like a file)."""
        return _validate({**dataclasses.asdict(self), **kw}, "<override>")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "method": (str,), "layers": (str,), "config": (dict,), "dense_finetune": (int, float),
    "lr": (int, float), "min_lr": (int, float), "warmup": (int, float), "betas": (list,), "weight_decay": (int, float),
    "clip": (int, float), "description": (str,),
}


def _validate(d: dict[str, Any], source: str) -> Recipe:
    allowed = {f.name for f in dataclasses.fields(Recipe)}
    if "method" not in d:
        raise RecipeError(f"{source}: field 'method' is required (one of {list(METHODS)}; 'dense' for the dense "
                          "baseline)")
    for key, value in d.items():
        if key not in allowed:
            raise RecipeError(f"{source}: unknown field {key!r}; allowed fields: {sorted(allowed)}")
        types = _TYPES[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise RecipeError(f"{source}: field {key!r} must be {' or '.join(t.__name__ for t in types)}, "
                              f"got {type(value).__name__} {value!r}")
    r = Recipe(**d)
    if r.method not in METHODS:
        raise RecipeError(f"{source}: field 'method' must be one of {list(METHODS)}, got {r.method!r}")
    if r.layers not in LAYERS:
        raise RecipeError(f"{source}: field 'layers' must be one of {list(LAYERS)}, got {r.layers!r}")
    if not 0 <= r.dense_finetune < 1 or not 0 <= r.warmup < 1:
        raise RecipeError(f"{source}: fields 'dense_finetune' and 'warmup' are fractions of the steps in [0, 1)")
    if len(r.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                    for b in r.betas):
        raise RecipeError(f"{source}: field 'betas' must be two numbers in [0, 1), got {r.betas!r}")
    if r.lr <= 0 or r.min_lr < 0 or r.clip < 0 or r.weight_decay < 0:
        raise RecipeError(f"{source}: 'lr' must be > 0 and 'min_lr', 'clip', 'weight_decay' >= 0")
    _check_config(r, source)
    try:
        r.sparse_config()
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{source}: field 'config': {e}") from e
    return r


def _type_ok(value: Any, hint: Any) -> tuple[bool, str]:
    """Whether ``value`` has the declared type of a config field (YAML gives bools, ints, floats, strings)."""
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        return value in choices, f"one of {list(choices)}"
    if hint is bool:
        return isinstance(value, bool), "true or false"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), "a whole number"
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if hint is str:
        return isinstance(value, str), "a string"
    return True, ""


def _check_config(r: Recipe, source: str) -> None:
    """Every ``config`` field has its config class's type: ``fp8: "no"`` or ``mask_refresh: 1.5`` are errors."""
    if r.method == "dense":
        if r.config:
            raise RecipeError(f"{source}: field 'config' must be empty for method 'dense', got {r.config!r}")
        return
    try:
        cls = type(SparseConfig.from_dict({"method": r.method}))
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{source}: field 'method': {e}") from e
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in r.config.items():
        if key not in names:
            raise RecipeError(f"{source}: field 'config' has unknown key {key!r} for method {r.method!r}; "
                              f"allowed: {sorted(names)}")
        ok, want = _type_ok(value, hints[key])
        if not ok:
            raise RecipeError(f"{source}: field 'config.{key}' must be {want}, got {type(value).__name__} "
                              f"{value!r}")


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``sparse24/train/recipes``."""
    folder = resources.files("sparse24.train").joinpath("recipes")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _is_path(spec: str | Path) -> bool:
    """A recipe is a path only when written as one (``./sste``, ``x.yaml``, ``dir/r``): a shipped name always wins
    over a same-named file or folder in the current directory."""
    text = str(spec)
    return isinstance(spec, Path) or Path(text).suffix in (".yaml", ".yml") or "/" in text or os.sep in text \
        or text.startswith(("~", "."))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a shipped recipe by name (``sste``) or any YAML file by path (see :func:`_is_path`)."""
    path = Path(name_or_path).expanduser()
    shipped = str(name_or_path) in list_recipes()
    if _is_path(name_or_path) or (not shipped and path.is_file()):
        if not path.is_file():
            what = "is a folder, not a recipe file" if path.is_dir() else "not found"
            raise FileNotFoundError(f"recipe file {path} {what}; shipped recipes: {list_recipes()}")
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as e:
            raise RecipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    else:
        res = resources.files("sparse24.train").joinpath(f"recipes/{name_or_path}.yaml")
        if not res.is_file():
            raise ValueError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {list_recipes()} "
                             "(or pass a path to a .yaml file)")
        text, source = res.read_text(), f"recipes/{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of fields, got {type(data).__name__}")
    return _validate(data, source)
