"""Every test here trains or resumes tiny models (llama-tiny or a 2-layer d=64 Llama on the shipped text, or the
``smoke`` preset): torch runs them on one thread (tests/conftest.py ``one_thread``), the old count restored after each
test, so a run that sets its own count (benchmarks/pretrain_quality.py) does not leak it into the next test. The
multi-process tests start their workers with OMP_NUM_THREADS=1 themselves."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    yield
