"""Backend registry and selection with faked GPU capabilities (monkeypatched inside these tests only)."""

from __future__ import annotations

import logging

import pytest
import sparse24.kernels.backends as kb
import torch

from sparse24.backends import BACKENDS, select_backend
from sparse24.config import SRSTEConfig
from sparse24.linear import SparseLinear
from sparse24.masks import magnitude_mask_24, transposable_mask_24

CUDA = torch.device("cuda")


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a CUDA GPU of a given compute capability (and cuSPARSELt availability) is present."""

    def make(cc=(9, 0), cusparselt=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
        monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: cusparselt)

    return make


def test_all_backends_registered_with_declared_limits():
    assert {"dense", "cusparselt", "cutlass", "cusparselt_fp8", "triton"} <= set(BACKENDS)
    info = BACKENDS["cusparselt"].info
    assert info.devices == ("cuda",) and info.multiple == (16, 16) and info.min_capability == (8, 0)
    assert BACKENDS["cutlass"].info.multiple == (32, 64) and BACKENDS["cutlass"].max_capability == (8, 9)


@pytest.mark.parametrize("cc,cslt,expect", [
    ((9, 0), True, "cusparselt"),  # H100
    ((8, 0), True, "cusparselt"),  # A100: cuSPARSELt ranks before CUTLASS
    ((8, 0), False, "cutlass"),  # A100 without cuSPARSELt in the build
    ((9, 0), False, "dense"),  # H100 without cuSPARSELt: in-tree CUTLASS 2:4 is SM8x only
    ((7, 5), True, "dense"),  # Turing: no sparse tensor cores
])
def test_auto_picks_by_capability(fake_gpu, cc, cslt, expect):
    fake_gpu(cc, cslt)
    assert select_backend("auto", (4096, 4096), torch.bfloat16, CUDA, tokens=4096).info.name == expect


def test_auto_small_m_goes_dense_and_logs_once(fake_gpu, caplog, monkeypatch):
    fake_gpu((9, 0))
    kb._WORTH_LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="sparse24"):
        for _ in range(3):
            assert select_backend("auto", (1024, 4096), torch.float16, CUDA, tokens=1).info.name == "dense"
    assert sum("SPARSE24_MIN_TOKENS" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setenv("SPARSE24_MIN_TOKENS", "1")
    assert select_backend("auto", (1024, 4096), torch.float16, CUDA, tokens=1).info.name == "cusparselt"


def test_auto_shape_and_dtype_limits(fake_gpu):
    fake_gpu((8, 0))
    assert select_backend("auto", (48, 80), torch.float16, CUDA, tokens=512).info.name == "cusparselt"
    assert select_backend("auto", (40, 80), torch.float16, CUDA, tokens=512).info.name == "dense"  # 40 % 16
    assert select_backend("auto", (64, 64), torch.float32, CUDA, tokens=512).info.name == "dense"


def test_forced_backend_raises_with_the_failed_limit(fake_gpu):
    fake_gpu((9, 0))
    with pytest.raises(RuntimeError, match=r"cols >= 16 and a multiple of 16"):
        select_backend("cusparselt", (64, 40), torch.float16, CUDA)
    with pytest.raises(RuntimeError, match=r"above the supported \(8, 9\)"):
        select_backend("cutlass", (64, 64), torch.float16, CUDA)
    fake_gpu((8, 9))
    with pytest.raises(RuntimeError, match=r"below the required \(9, 0\)"):
        select_backend("cusparselt_fp8", (64, 64), torch.bfloat16, CUDA)
    fake_gpu((9, 0))
    assert select_backend("cusparselt_fp8", (64, 64), torch.bfloat16, CUDA).info.name == "cusparselt_fp8"
    assert select_backend("auto", (64, 64), torch.bfloat16, CUDA, tokens=4096).info.name == "cusparselt"


def test_env_override_and_no_cuda(monkeypatch):
    monkeypatch.setenv("SPARSE24_BACKEND", "cusparselt")
    with pytest.raises(RuntimeError, match="CUDA is not available|no cuSPARSELt"):
        select_backend("auto", (64, 64), torch.float16, "cpu")
    assert select_backend("dense", (64, 64), torch.float16, "cpu").info.name == "dense"  # explicit name wins


def test_transposable_detection():
    w = torch.randn(32, 64)
    assert kb._is_24_t(w * transposable_mask_24(w))
    assert not kb._is_24_t(w * magnitude_mask_24(w))  # row-wise 2:4 only: columns break (almost surely)


def test_prepare_cache_reuses_until_key_changes():
    be = kb.TritonBackend()
    w = torch.randn(8, 16)
    a = be.prepare(w, key=("layer", 0))
    assert be.prepare(w * 2, key=("layer", 0)) is a  # same step: reused, no recompression
    b = be.prepare(w * 2, key=("layer", 1))
    assert b is not a and torch.equal(b.w, w * 2)
    assert be.prepare(w) is not be.prepare(w)  # no key, no caching


def test_sparse_linear_on_triton_backend_matches_dense(device):
    cfg = SRSTEConfig(transposable=True)
    a = SparseLinear.from_dense(torch.nn.Linear(32, 16, device=device), cfg, backend="triton")
    b = SparseLinear.from_dense(torch.nn.Linear(32, 16, device=device), cfg, backend="dense")
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 32, device=device, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    ga = torch.autograd.grad(ya.square().sum(), (x, a.weight))
    gb = torch.autograd.grad(yb.square().sum(), (x, b.weight))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
