"""Kernel tests run every Triton kernel in Triton's CPU interpreter when no GPU is present.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, i.e. when a ``sparse24.kernels.<op>`` module is
first imported, so it is set here, before any test module of this folder imports one (the root conftest does not
import triton or the kernel modules). On a CUDA machine it is left alone, so the same tests run compiled on the GPU.
The repository root goes on ``sys.path`` so tests share the named shapes of ``benchmarks/shapes.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

if "sparse24.kernels._utils" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
    from sparse24.kernels._utils import HAS_TRITON, round_to

    if HAS_TRITON and type(round_to).__name__ != "InterpretedFunction":  # pragma: no cover - collection-order bug
        raise RuntimeError("sparse24.kernels was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
                           "import kernel modules lazily (inside tests/functions) in other test folders")
