"""GPU matmul backends, registered in :mod:`sparse24.backends` on import.

| name           | dtypes           | weight [out, in] multiple | CC          | product                              |
|----------------|------------------|---------------------------|-------------|--------------------------------------|
| cusparselt     | fp16, bf16       | (16, 16)                  | >= 8.0      | ``torch._cslt_sparse_mm``             |
| cutlass        | fp16, bf16       | (32, 64)                  | 8.0 ... 8.9 | ``torch._sparse_semi_structured_mm``  |
| cusparselt_fp8 | fp16, bf16 in    | (32, 32)                  | >= 9.0      | e4m3 ``_cslt_sparse_mm`` (tensor)    |
| triton         | fp16, bf16, fp32 | (1, 4)                    | any         | dense masked ``F.linear``             |

All run on CUDA only, except ``triton``, which also runs CPU tensors under ``TRITON_INTERPRET=1``.

- ``prepare(w, key=None)`` compresses ``W̃`` (and ``W̃ᵀ`` when the mask is transposable, so ``∇X = ∇Y W̃`` is sparse too)
  once; with a ``key`` (e.g. ``(id(layer), weight._version, mask._version)``) the result is reused until the key
  changes, i.e. across micro-batches of one optimizer step. Non-transposable masks run ``∇X`` dense.
- ``auto`` order: cusparselt (10), cutlass (20), dense (1000). ``worth_it`` sends small token counts (decode, M <
  ``SPARSE24_MIN_TOKENS``, default 64: not yet measured, see benchmarks/run_gpu.sh) to dense, logged once per shape.
  ``cusparselt_fp8`` and ``triton`` are never picked by auto (FP8 changes numerics; triton is the dense GEMM with the
  Triton weight kernels and gains nothing in the product): force them with ``backend=``.
- cuSPARSELt ``alg_id``: searched once per (shape, token bucket) with a correctness guard (:mod:`.cslt_search`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sparse24.kernels._utils import HAS_TRITON, is_interpreter
from torch import Tensor

from sparse24.backends import Backend, BackendInfo, register_backend

log = logging.getLogger("sparse24")

__all__ = ["Prepared", "CusparseltBackend", "CutlassBackend", "CusparseltFP8Backend", "TritonBackend", "min_tokens"]

HALF = (torch.float16, torch.bfloat16)
_WORTH_LOGGED: set[tuple] = set()


def min_tokens() -> int:
    return int(os.environ.get("SPARSE24_MIN_TOKENS", "64"))


@dataclass
class Prepared:
    """What ``linear``/``grad_input`` consume: the dense masked weight plus packed operands (None where dense)."""

    w: Tensor  # [out, in] dense with zeros (fallback and reference)
    packed: Any = None  # W̃ in the backend's format
    packed_t: Any = None  # W̃ᵀ, only for transposable masks
    fp8_scale: Tensor | None = None


def _pad_rows(x: Tensor, multiple: int) -> Tensor:
    pad = (-x.shape[0]) % multiple
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def _is_24_t(w: Tensor) -> bool:
    """True when ``w.T`` is 2:4 too (groups of 4 down each column): the mask is transposable."""
    if w.shape[0] % 4:
        return False
    nz = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(1)  # [out/4, in]
    return bool((nz <= 2).all())


class _Sparse(Backend):
    """Shared logic: cache of prepared weights, per-dtype limits, CC window, the small-M rule."""

    max_capability: tuple[int, int] | None = None
    cache_size = 256

    def __init__(self) -> None:
        self._cache: OrderedDict[Hashable, Prepared] = OrderedDict()

    def available(self) -> str | None:
        if not torch.cuda.is_available():
            return "CUDA is not available"
        return None

    def check(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> str | None:
        why = super().check(shape, dtype, device)
        if why or self.max_capability is None or device.type != "cuda":
            return why
        cc = torch.cuda.get_device_capability(device)
        if cc > self.max_capability:
            return f"GPU compute capability {cc} is above the supported {self.max_capability} (kernels are SM8x only)"
        return None

    def worth_it(self, shape: tuple[int, int], tokens: int | None) -> bool:
        if tokens is None or tokens >= min_tokens():
            return True
        key = (self.info.name, tuple(shape))
        if key not in _WORTH_LOGGED:
            _WORTH_LOGGED.add(key)
            log.info("sparse24: %s skipped for weight %s at %d tokens (< SPARSE24_MIN_TOKENS=%d): dense is faster",
                     self.info.name, tuple(shape), tokens, min_tokens())
        return False

    def prepare(self, w: Tensor, key: Hashable | None = None) -> Prepared:
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        prepared = self._prepare(w.detach().contiguous())
        if key is not None:
            self._cache[key] = prepared
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return prepared

    def _prepare(self, w: Tensor) -> Prepared:
        raise NotImplementedError


class CusparseltBackend(_Sparse):
    info = BackendInfo("cusparselt", ("cuda",), HALF, min_shape=(16, 16), multiple=(16, 16),
                       min_capability=(8, 0), priority=10)
    dense_min = 8

    def available(self) -> str | None:
        why = super().available()
        if why is None and not torch.backends.cusparselt.is_available():
            return "this torch build has no cuSPARSELt"
        return why

    def _prepare(self, w: Tensor) -> Prepared:
        packed_t = torch._cslt_compress(w.t().contiguous()) if _is_24_t(w) else None
        return Prepared(w=w, packed=torch._cslt_compress(w), packed_t=packed_t)

    def _mm(self, packed: Tensor, dense_w: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
        from sparse24.kernels.cslt_search import cslt_alg_id

        alg = cslt_alg_id(packed, dense_w, x.shape[0])
        if alg < 0:  # no algorithm passed the guard for this shape
            return F.linear(x, dense_w, bias)
        xp = _pad_rows(x, self.dense_min)  # [T', in]
        y = torch._cslt_sparse_mm(packed, xp.t(), bias, transpose_result=True, alg_id=alg)  # [T', out]
        return y[: x.shape[0]]

    def linear(self, x: Tensor, prepared: Prepared, bias: Tensor | None) -> Tensor:
        return self._mm(prepared.packed, prepared.w, x, bias)

    def grad_input(self, gy: Tensor, prepared: Prepared) -> Tensor:
        if prepared.packed_t is None:
            return gy @ prepared.w  # [T, out] @ [out, in]
        return self._mm(prepared.packed_t, prepared.w.t(), gy, None)


class CutlassBackend(_Sparse):
    info = BackendInfo("cutlass", ("cuda",), HALF, min_shape=(32, 64), multiple=(32, 64),
                       min_capability=(8, 0), priority=20)
    max_capability = (8, 9)
    dense_min = 8

    @staticmethod
    def _pack(w: Tensor) -> tuple[Tensor, Tensor]:
        if HAS_TRITON:
            from sparse24.kernels.compress24 import compress24

            return compress24(w, validate=False)
        from sparse24.kernels.compress24 import compress24_ref

        return compress24_ref(w)

    def _prepare(self, w: Tensor) -> Prepared:
        wt = w.t().contiguous()
        ok_t = _is_24_t(w) and wt.shape[0] % 32 == 0 and wt.shape[1] % 64 == 0
        return Prepared(w=w, packed=self._pack(w), packed_t=self._pack(wt) if ok_t else None)

    def _mm(self, packed: tuple[Tensor, Tensor], x: Tensor, bias: Tensor | None) -> Tensor:
        values, meta = packed
        xp = _pad_rows(x, self.dense_min)  # [T', in]
        y = torch._sparse_semi_structured_mm(values, meta, xp.t())  # [out, T']
        y = y.t()[: x.shape[0]]
        return y if bias is None else y + bias

    def linear(self, x: Tensor, prepared: Prepared, bias: Tensor | None) -> Tensor:
        return self._mm(prepared.packed, x, bias)

    def grad_input(self, gy: Tensor, prepared: Prepared) -> Tensor:
        if prepared.packed_t is None:
            return gy @ prepared.w
        return self._mm(prepared.packed_t, gy, None)


class CusparseltFP8Backend(_Sparse):
    """e4m3 forward on cuSPARSELt with per-tensor scales folded into ``alpha`` (torch has no per-row FP8 here).

    ``∇X`` stays in the weight dtype (sparse through the bf16 cuSPARSELt operand when transposable): torch exposes no
    e5m2 sparse product. Bias is added in high precision.
    """

    info = BackendInfo("cusparselt_fp8", ("cuda",), HALF, min_shape=(32, 32), multiple=(32, 32),
                       min_capability=(9, 0), priority=5)
    dense_min = 16
    native_fp8 = True  # SparseLinear routes SSTEConfig(fp8=True) here on Hopper instead of simulating

    def available(self) -> str | None:
        return _BF16.available()

    def worth_it(self, shape: tuple[int, int], tokens: int | None) -> bool:
        return False  # never chosen by auto: FP8 changes the numerics, so it must be asked for

    @staticmethod
    def _quant(t: Tensor) -> tuple[Tensor, Tensor]:
        if HAS_TRITON:
            from sparse24.kernels.fp8_cast import fp8_cast as cast
        else:
            from sparse24.kernels.fp8_cast import fp8_cast_ref as cast
        return cast(t, torch.float8_e4m3fn, "tensor")

    def _prepare(self, w: Tensor) -> Prepared:
        qw, sw = self._quant(w)  # q = w * s
        packed_t = torch._cslt_compress(w.t().contiguous()) if _is_24_t(w) else None  # ∇X in the weight dtype
        return Prepared(w=w, packed=torch._cslt_compress(qw), packed_t=packed_t, fp8_scale=sw)

    def linear(self, x: Tensor, prepared: Prepared, bias: Tensor | None) -> Tensor:
        qx, sx = self._quant(_pad_rows(x, self.dense_min))  # [T', in]
        alpha = (1.0 / (prepared.fp8_scale * sx)).reshape(1).float()
        y = torch._cslt_sparse_mm(prepared.packed, qx.t(), alpha=alpha, out_dtype=x.dtype)  # [out, T']
        y = y.t()[: x.shape[0]]
        return y if bias is None else y + bias

    def grad_input(self, gy: Tensor, prepared: Prepared) -> Tensor:
        return _BF16.grad_input(gy, prepared)


class TritonBackend(_Sparse):
    """Dense masked product (``F.linear`` on ``W̃`` with zeros): upstream Triton has no sparse ``tl.dot``
    (triton-lang/triton#1277), so the sparse MMA must come from cuSPARSELt/CUTLASS. This backend is the place the
    fused Triton weight kernels (mask24, soft_threshold24, masked_decay_, mvue24) are used on GPUs without sparse
    tensor cores or for shapes below the sparse minimum; it runs on CPU tensors under ``TRITON_INTERPRET=1``."""

    info = BackendInfo("triton", ("cuda", "cpu"), (torch.float16, torch.bfloat16, torch.float32), priority=1100)

    def available(self) -> str | None:
        if not HAS_TRITON:
            return "triton is not installed (pip install 'triton>=3.0')"
        return None

    def check(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> str | None:
        if device.type == "cpu" and not is_interpreter():
            return "CPU tensors need TRITON_INTERPRET=1 (Triton's interpreter); use the dense backend"
        return super().check(shape, dtype, device)

    def worth_it(self, shape: tuple[int, int], tokens: int | None) -> bool:
        return False  # same GEMM as dense: only when asked for

    def _prepare(self, w: Tensor) -> Prepared:
        return Prepared(w=w)

    def linear(self, x: Tensor, prepared: Prepared, bias: Tensor | None) -> Tensor:
        return F.linear(x, prepared.w, bias)

    def grad_input(self, gy: Tensor, prepared: Prepared) -> Tensor:
        return gy @ prepared.w


_BF16 = CusparseltBackend()
for _b in (_BF16, CutlassBackend(), CusparseltFP8Backend(), TritonBackend()):
    register_backend(_b)
