"""The package imports without Triton, and kernels fail with errors that name the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from sparse24.kernels._utils import check_input, is_interpreter


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_imports_and_refs_work_without_triton():
    res = _run("""
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        sys.modules["triton.language"] = None
        import torch
        from sparse24.kernels import _utils
        from sparse24.kernels.mask24 import mask24, mask24_ref
        from sparse24.kernels.pack_cutlass import pack_cutlass_triton
        import sparse24.kernels.backends as kb
        assert not _utils.HAS_TRITON
        w = torch.randn(4, 8)
        assert mask24_ref(w)[1].sum() == 16
        try:
            mask24(w)
        except RuntimeError as e:
            print("ERR", e)
        from sparse24.kernels.soft_threshold import soft_threshold
        from sparse24.backends import BACKENDS
        print("OP_FALLS_BACK", tuple(soft_threshold(w).shape), "cusparselt_contract" in BACKENDS)
    """)
    assert res.returncode == 0, res.stderr
    assert "ERR mask24: triton is not installed: pip install" in res.stdout
    assert "OP_FALLS_BACK (4, 8) True" in res.stdout  # the ops and the backends work without triton


def test_cpu_tensor_without_interpreter_names_the_fix():
    res = _run("""
        import torch
        from sparse24.kernels.mask24 import mask24
        try:
            mask24(torch.randn(4, 8))
        except RuntimeError as e:
            print("ERR", e)
    """, TRITON_INTERPRET="0")
    assert res.returncode == 0, res.stderr
    assert "Set TRITON_INTERPRET=1" in res.stdout and "mask24_ref" in res.stdout


def test_interpreter_is_on_for_this_suite_without_gpu():
    if not torch.cuda.is_available():
        assert is_interpreter()  # tests/kernels/conftest.py set it before any kernel import


def test_check_input_messages():
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        check_input("op", [1, 2], "w", (torch.float32,))
    with pytest.raises(ValueError, match="must be 2-D"):
        check_input("op", torch.zeros(4), "w", (torch.float32,), ndim=2)
    with pytest.raises(ValueError, match="pad it to 8"):
        check_input("op", torch.zeros(2, 5), "w", (torch.float32,))
