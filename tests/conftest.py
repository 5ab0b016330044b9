"""Shared fixtures: fresh seeds per test, a tiny Llama built from a config, the device under test."""

from __future__ import annotations

import os
import random

import pytest
import torch


def is_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def _seed(request):
    # a different, reported seed per test: fresh random inputs, reproducible with SPARSE24_TEST_SEED
    seed = int(os.environ.get("SPARSE24_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    random.seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            rep.sections.append(("seed", f"rerun with SPARSE24_TEST_SEED={seeds[0]}"))


@pytest.fixture
def one_thread():
    """torch on one CPU thread for this test, the old count restored after: on tiny shapes a second thread only adds
    synchronisation, and on a loaded machine (CI, a benchmark beside the suite) waiting for it can cost 10x."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def device() -> str:
    """'cuda' when a GPU is present (and not interpreting), else 'cpu'."""
    return "cuda" if torch.cuda.is_available() and not is_interpreter() else "cpu"


@pytest.fixture
def tiny_llama():
    """Factory for a small LlamaForCausalLM from a config: ``tiny_llama(layers=2, hidden=64, vocab=256)``."""
    from sparse24.demo import tiny_llama as make

    return make


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
