"""Backend registry and selection with faked GPU capabilities (monkeypatched inside these tests only)."""

from __future__ import annotations

import pytest
import sparse24.kernels.backends as kb
import torch

from sparse24.backends import BACKENDS, resolve, select_backend
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
    assert {"dense", "cusparselt", "cutlass", "cusparselt_fp8"} <= set(BACKENDS)
    assert {"cusparselt_contract", "cutlass_contract", "cusparselt_fp8_contract"} <= set(BACKENDS)
    assert all(not b.auto for n, b in BACKENDS.items() if n.endswith("_contract"))
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


def test_auto_small_m_goes_dense_with_the_threshold_read_at_resolution(fake_gpu, monkeypatch):
    fake_gpu((9, 0))
    plan = resolve("auto", (1024, 4096), torch.float16, CUDA)
    assert plan.backend.info.name == "cusparselt" and plan.min_tokens == 64
    assert plan.pick(1).info.name == "dense" and plan.pick(64).info.name == "cusparselt"
    monkeypatch.setenv("SPARSE24_MIN_TOKENS", "1")
    assert plan.pick(1).info.name == "dense"  # a resolved plan never re-reads the environment
    assert resolve("auto", (1024, 4096), torch.float16, CUDA).pick(1).info.name == "cusparselt"
    monkeypatch.setenv("SPARSE24_MIN_TOKENS", "many")
    with pytest.raises(ValueError, match="SPARSE24_MIN_TOKENS"):
        resolve("auto", (1024, 4096), torch.float16, CUDA)
    assert resolve("cusparselt", (1024, 4096), torch.float16, CUDA).min_tokens == 0  # forced: every M


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
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a CUDA host
    monkeypatch.setenv("SPARSE24_BACKEND", "cusparselt")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        select_backend("auto", (64, 64), torch.float16, "cpu")
    assert select_backend("dense", (64, 64), torch.float16, "cpu").info.name == "dense"  # explicit name wins


def test_transposable_detection():
    w = torch.randn(32, 64)
    assert kb.is_transposable_24(w * transposable_mask_24(w))
    assert not kb.is_transposable_24(w * magnitude_mask_24(w))  # row-wise 2:4 only: columns break (almost surely)


def test_fp8_config_picks_native_fp8_only_where_it_runs(fake_gpu):
    fake_gpu((9, 0))
    plan = resolve("auto", (64, 64), torch.bfloat16, CUDA, fp8=True)
    assert plan.backend.info.name == "cusparselt_fp8" and plan.min_tokens == 0 and not plan.fp8_simulated
    fake_gpu((8, 0))
    plan = resolve("auto", (64, 64), torch.bfloat16, CUDA, fp8=True)
    assert plan.backend.info.name == "cusparselt" and plan.fp8_simulated  # no FP8 sparse kernel: simulate
    assert resolve("auto", (64, 64), torch.float32, "cpu", fp8=True).fp8_simulated  # never a contract twin
