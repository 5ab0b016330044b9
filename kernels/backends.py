"""GPU matmul backends (implementations; the registry and the choice live in :mod:`sparse24.backends`).

| name           | dtypes        | W multiple | CC          | fwd / ∇X / ∇W                                     |
|----------------|---------------|------------|-------------|---------------------------------------------------|
| cusparselt     | fp16, bf16    | (16, 16)   | >= 8.0      | sparse / sparse if transposable / sparse if MVUE   |
| cutlass        | fp16, bf16    | (32, 64)   | 8.0 ... 8.9 | sparse / sparse if transposable / dense            |
| cusparselt_fp8 | fp16, bf16 in | (32, 32)   | >= 9.0      | e4m3 sparse / as cusparselt in the 16-bit dtype    |

- Every kernel call goes through ``self.ops`` (:mod:`.contract`): :class:`~.contract.TorchOps` on CUDA,
  :class:`~.contract.ContractOps` for the ``*_contract`` twins registered below, which run the same calling code on
  a CPU against the kernels' exact argument contracts (tests, ``run_gpu.sh --smoke``). ``auto`` never picks a twin.
- ``prepare(w)`` compresses ``W̃`` and, when its mask is transposable, ``W̃ᵀ`` (so ``∇X = ∇Y W̃`` is sparse too). It
  is called once per weight/mask version by ``SparseLinear``, which keeps the result on the module.
- ``grad_weight``: with MVUE, ``∇Yᵀ`` ``[out, T]`` is 2:4 along T, so it is compressed (once per backward) and
  ``∇W = c(∇Yᵀ)·X`` runs on cuSPARSELt (T padded with zeros to 16) — the sparse ∇W of arXiv 2404.01847 / 2409.09099.
- FP8 (sm_90): cuSPARSELt's FP8 is e4m3 only and torch exposes no e5m2 sparse product, so the forward is native e4m3
  (per-tensor scales in ``alpha = 1/(s_w·s_x)``, ``q = x·s``) and the backward runs in the weight's 16-bit dtype
  (sparse ∇X when transposable, sparse ∇W with MVUE). The CPU simulation (no native backend) uses e5m2 backward.
- cuSPARSELt ``alg_id``: searched once per (shape, token bucket, dtype, device, library) with a correctness guard
  (:mod:`.cslt_search`); ``-1`` (nothing passed) runs that shape dense.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from sparse24.kernels._utils import HAS_TRITON
from sparse24.kernels.contract import ContractOps, TorchOps
from torch import Tensor

from sparse24.backends import Backend, BackendInfo, register_backend

log = logging.getLogger("sparse24")

__all__ = ["Prepared", "CusparseltBackend", "CutlassBackend", "CusparseltFP8Backend", "is_transposable_24",
           "pad_rows"]

HALF = (torch.float16, torch.bfloat16)


@dataclass
class Prepared:
    """What ``linear``/``grad_input`` consume: the dense masked weight plus packed operands (None where dense)."""

    w: Tensor  # [out, in] dense with zeros (fallback and reference)
    packed: Any = None  # W̃ in the backend's format
    packed_t: Any = None  # W̃ᵀ, only for transposable masks
    fp8_scale: Tensor | None = None  # q_w = w · s_w


def pad_rows(x: Tensor, multiple: int) -> Tensor:
    """``[T, k] -> [T', k]`` with zero rows up to a multiple; always contiguous and 16-byte aligned."""
    pad = (-x.shape[0]) % multiple
    x = F.pad(x, (0, 0, 0, pad)) if pad else x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()  # a contiguous slice can start mid-vector


def is_transposable_24(w: Tensor) -> bool:
    """True when ``w.T`` is 2:4 too (groups of 4 down each column). One host sync: called once per pack."""
    if w.shape[0] % 4:
        return False
    nz = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(1)  # [out/4, in]
    return bool((nz <= 2).all())


class _Sparse(Backend):
    """Shared: the ops indirection, CPU contract twins, the capability window."""

    packs = True
    max_capability: tuple[int, int] | None = None

    def __init__(self, ops: TorchOps | ContractOps | None = None) -> None:
        self.ops = ops if ops is not None else TorchOps()
        self.emulated = bool(self.ops.emulated)
        if self.emulated:  # the contract twin: same code, CPU tensors, dense-reference products
            self.info = replace(self.info, name=f"{self.info.name}_contract", devices=("cpu",), min_capability=None,
                                priority=self.info.priority + 10_000)
            self.auto = False

    def available(self) -> str | None:
        if not self.emulated and not torch.cuda.is_available():
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


class CusparseltBackend(_Sparse):
    info = BackendInfo("cusparselt", ("cuda",), HALF, min_shape=(16, 16), multiple=(16, 16),
                       min_capability=(8, 0), priority=10)
    dense_min = 8  # cuSPARSELt needs the dense operand's n (tokens) a multiple of 8 for 16-bit inputs

    def available(self) -> str | None:
        why = super().available()
        if why is None and not self.emulated and not torch.backends.cusparselt.is_available():
            return "this torch build has no cuSPARSELt"
        return why

    def _compress_t(self, w: Tensor) -> Any:
        return self.ops.cslt_compress(w.t().contiguous()) if is_transposable_24(w) else None

    def prepare(self, w: Tensor) -> Prepared:
        w = w.detach().contiguous()
        return Prepared(w=w, packed=self.ops.cslt_compress(w), packed_t=self._compress_t(w))

    def _config(self, packed: Any, w: Tensor, tokens: int) -> tuple[int, int, int]:
        """(alg_id, split_k, split_k_mode), tuned once per shape and token bucket (a dict lookup afterwards)."""
        if self.emulated:
            return (0, 1, -1)
        from sparse24.kernels.cslt_search import cslt_config

        return cslt_config(packed, w, tokens)

    def _mm(self, packed: Any, dense_w: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
        alg, split_k, split_k_mode = self._config(packed, dense_w, x.shape[0])
        if alg < 0:  # no algorithm passed the guard for this shape
            return F.linear(x, dense_w, bias)
        xp = pad_rows(x, self.dense_min)  # [T', in]; xp.t() is the column-major B the kernel expects
        y = self.ops.cslt_sparse_mm(packed, xp.t(), bias, transpose_result=True, alg_id=alg, split_k=split_k,
                                    split_k_mode=split_k_mode)  # [T', out]
        return y[: x.shape[0]]

    def linear(self, x: Tensor, prepared: Prepared, bias: Tensor | None) -> Tensor:
        return self._mm(prepared.packed, prepared.w, x, bias)

    def grad_input(self, gy: Tensor, prepared: Prepared) -> Tensor:
        if prepared.packed_t is None:
            return gy @ prepared.w  # [T, out] @ [out, in]
        return self._mm(prepared.packed_t, prepared.w.t(), gy, None)

    def grad_weight(self, gyt: Tensor, x: Tensor, sparse: bool) -> Tensor:
        out, in_f = gyt.shape[0], x.shape[1]
        if not sparse or out % 16 or in_f % 16:
            return gyt @ x
        pad = (-gyt.shape[1]) % 16  # T to a multiple of 16: zero columns keep every group 2:4
        g = F.pad(gyt, (0, pad)) if pad else gyt.contiguous()  # [out, T']
        xp = pad_rows(x, 16)  # [T', in] row-major: B = X
        return self.ops.cslt_sparse_mm(self.ops.cslt_compress(g), xp)  # [out, in]


class CutlassBackend(CusparseltBackend):
    info = BackendInfo("cutlass", ("cuda",), HALF, min_shape=(32, 64), multiple=(32, 64),
                       min_capability=(8, 0), priority=20)
    max_capability = (8, 9)

    def available(self) -> str | None:
        return _Sparse.available(self)

    @staticmethod
    def _pack(w: Tensor) -> tuple[Tensor, Tensor]:
        from sparse24.kernels.pack_cutlass import pack_cutlass

        return pack_cutlass(w, validate=False)  # masks built by sparse24 are 2:4 by construction

    def prepare(self, w: Tensor) -> Prepared:
        w = w.detach().contiguous()
        wt = w.t().contiguous()
        ok_t = wt.shape[0] % 32 == 0 and wt.shape[1] % 64 == 0 and is_transposable_24(w)
        return Prepared(w=w, packed=self._pack(w), packed_t=self._pack(wt) if ok_t else None)

    def _mm(self, packed: tuple[Tensor, Tensor], dense_w: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
        values, meta = packed
        xp = pad_rows(x, self.dense_min)  # [T', in]
        y = self.ops.semi_structured_mm(values, meta, xp.t())  # [out, T']
        y = y.t()[: x.shape[0]]
        return y if bias is None else y + bias

    def grad_weight(self, gyt: Tensor, x: Tensor, sparse: bool) -> Tensor:
        return gyt @ x  # CUTLASS path: ∇W dense (packing ∇Yᵀ per backward is not worth it on SM8x here)


class CusparseltFP8Backend(CusparseltBackend):
    """e4m3 forward on cuSPARSELt, per-tensor scales folded into ``alpha``; backward as :class:`CusparseltBackend`
    in the weight dtype (torch has no e5m2 sparse product). Bias is added in the output dtype after the product."""

    info = BackendInfo("cusparselt_fp8", ("cuda",), HALF, min_shape=(32, 32), multiple=(32, 32),
                       min_capability=(9, 0), priority=5)
    dense_min = 16  # n multiple of 16 for 8-bit inputs
    native_fp8 = True
    auto = False  # FP8 changes the numerics: only chosen for fp8=True configs (or by name)

    def _quant(self, t: Tensor) -> tuple[Tensor, Tensor]:
        if t.is_cuda and HAS_TRITON:
            from sparse24.kernels.fp8_cast import fp8_cast as cast
        else:
            from sparse24.kernels.fp8_cast import fp8_cast_ref as cast
        return cast(t, torch.float8_e4m3fn, "tensor")  # q = t · s

    def prepare(self, w: Tensor) -> Prepared:
        w = w.detach().contiguous()
        qw, sw = self._quant(w)
        return Prepared(w=w, packed=self.ops.cslt_compress(qw), packed_t=self._compress_t(w), fp8_scale=sw)

    def linear(self, x: Tensor, prepared: Prepared, bias: Tensor | None) -> Tensor:
        qx, sx = self._quant(pad_rows(x, self.dense_min))  # [T', in]
        alpha = (1.0 / (prepared.fp8_scale * sx)).reshape(1).float()  # dequantisation: y = (q_w q_x) / (s_w s_x)
        y = self.ops.cslt_sparse_mm(prepared.packed, qx.t(), alpha=alpha, out_dtype=x.dtype,
                                    transpose_result=True)  # [T', out]
        y = y[: x.shape[0]]
        return y if bias is None else y + bias


for _b in (CusparseltBackend(), CutlassBackend(), CusparseltFP8Backend()):
    register_backend(_b)
for _cls in (CusparseltBackend, CutlassBackend, CusparseltFP8Backend):  # the CPU contract twins
    register_backend(_cls(ContractOps()))
