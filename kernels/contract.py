"""The torch sparse/FP8 matmul entry points, and a CPU stand-in that enforces exactly what they accept.

The GPU backends never call ``torch._cslt_*`` / ``torch._sparse_semi_structured_mm`` / ``torch._scaled_mm``
directly: they call an ``ops`` object. :class:`TorchOps` forwards to torch. :class:`ContractOps` runs on any device,
checks every argument against the contract of the real kernel and computes the product from the dense reference,
so the backends' calling code (padding, transposes, bias, alpha, dtypes) is tested on a CPU. Each check below is a
case where the real kernel does not raise but reads memory wrongly (sources: torch's ``cuSPARSELtOps.cpp``,
``SparseSemiStructuredOps.cu`` and ``_meta_registrations.py``):

``_cslt_compress(A)``
    ``A`` 2-D ``[m, k]``, contiguous row-major, fp16/bf16 (``m, k`` multiples of 16) or e4m3/int8 (multiples of 32),
    2:4 along ``k``. Returns an opaque buffer.
``_cslt_sparse_mm(cA, B, bias, alpha, out_dtype, transpose_result, alg_id)``
    ``B`` ``[k, n]`` with ``B.dtype == A.dtype``. Its layout is inferred from ``B.is_contiguous()`` only: contiguous
    means row-major, anything else is assumed to be a transposed contiguous matrix, so ``B.t()`` must then be
    contiguous (a stride-0 or sliced ``B`` is read wrongly). ``n`` a multiple of 8 (16 for 8-bit inputs) and the data
    pointer 16-byte aligned. ``bias`` ``[m]`` in ``A``'s dtype (8-bit: ``out_dtype``), added after ``alpha``.
    ``alpha`` a float32 tensor of one element (per-tensor) or ``m`` elements (per-row). ``out_dtype`` only for
    8-bit inputs. Result ``alpha·(A·B) + bias``, ``[m, n]`` or ``[n, m]`` with ``transpose_result``, contiguous.
``_sparse_semi_structured_mm(values, meta, B)`` (CUTLASS, SM8x)
    ``B`` ``[k, n]`` with a unit stride in one dimension (no stride-0), same dtype; result ``[m, n]``.
``_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype)``
    ``a`` ``[M, K]`` row-major contiguous, ``b`` ``[K, N]`` column-major (``b.t()`` contiguous), both FP8,
    ``K, N`` multiples of 16; ``scale_a``/``scale_b`` float32 dequantisation scales (one element each, tensorwise);
    result ``(a·scale_a)(b·scale_b) + bias`` in ``out_dtype`` (bias in ``out_dtype``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TorchOps", "ContractOps", "ContractError", "Compressed"]

HALF = (torch.float16, torch.bfloat16)
EIGHT_BIT = (torch.float8_e4m3fn, torch.int8)


class TorchOps:
    """The real kernels (CUDA)."""

    emulated = False

    def cslt_compress(self, a: Tensor):
        return torch._cslt_compress(a)

    def cslt_sparse_mm(self, ca, b: Tensor, bias: Tensor | None = None, alpha: Tensor | None = None,
                       out_dtype: torch.dtype | None = None, transpose_result: bool = False, alg_id: int = 0,
                       split_k: int = 1, split_k_mode: int = -1) -> Tensor:
        kw = {"split_k": split_k, "split_k_mode": split_k_mode} if split_k != 1 else {}  # older torch: no split-K
        return torch._cslt_sparse_mm(ca, b, bias, alpha=alpha, out_dtype=out_dtype, transpose_result=transpose_result,
                                     alg_id=alg_id, **kw)

    def semi_structured_mm(self, values: Tensor, meta: Tensor, b: Tensor) -> Tensor:
        return torch._sparse_semi_structured_mm(values, meta, b)

    def scaled_mm(self, a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, bias: Tensor | None = None,
                  out_dtype: torch.dtype | None = None) -> Tensor:
        return torch._scaled_mm(a, b, scale_a, scale_b, bias=bias, out_dtype=out_dtype)


class ContractError(RuntimeError):
    """An argument the real kernel would accept silently and read wrongly (or refuse)."""


@dataclass
class Compressed:
    """What :meth:`ContractOps.cslt_compress` returns: the dense ``A`` kept for the reference product."""

    dense: Tensor  # [m, k]
    dtype: torch.dtype


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ContractError(msg)


def _is_24(a: Tensor) -> bool:
    return bool(((a.reshape(a.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _layout_ok(b: Tensor, name: str) -> None:
    _need(0 not in b.stride() or b.numel() <= 1, f"{name} has a zero stride {tuple(b.stride())} (an expanded tensor, "
          "e.g. the gradient of y.sum()); the kernel reads one element for all: call .contiguous() first")
    _need(b.is_contiguous() or b.t().is_contiguous(),
          f"{name} with strides {tuple(b.stride())} is neither row-major contiguous nor a transposed contiguous "
          "matrix; the kernel infers the layout from is_contiguous() only: call .contiguous() first")


def _aligned(t: Tensor, name: str) -> None:
    _need(t.data_ptr() % 16 == 0, f"{name} data pointer is not 16-byte aligned (storage offset "
          f"{t.storage_offset()}); clone it")


class ContractOps:
    """CPU emulation of :class:`TorchOps` that refuses every argument the real kernel would misread."""

    emulated = True

    def __init__(self) -> None:
        self.calls: list[str] = []

    def cslt_compress(self, a: Tensor) -> Compressed:
        self.calls.append("cslt_compress")
        _need(a.dim() == 2, f"_cslt_compress needs a 2-D matrix, got shape {tuple(a.shape)}")
        _need(a.dtype in HALF + EIGHT_BIT, f"_cslt_compress: dtype {a.dtype} unsupported (fp16, bf16, e4m3, int8)")
        _need(a.is_contiguous(), "_cslt_compress needs a contiguous row-major matrix; pass w.contiguous()")
        mult = 32 if a.dtype in EIGHT_BIT else 16
        _need(a.shape[0] % mult == 0 and a.shape[1] % mult == 0,
              f"_cslt_compress: shape {tuple(a.shape)} {a.dtype} needs both dims multiples of {mult}")
        _need(_is_24(a.float()), "_cslt_compress: the matrix is not 2:4 along its rows (it would pack garbage)")
        return Compressed(a.clone(), a.dtype)

    def cslt_sparse_mm(self, ca: Compressed, b: Tensor, bias: Tensor | None = None, alpha: Tensor | None = None,
                       out_dtype: torch.dtype | None = None, transpose_result: bool = False, alg_id: int = 0,
                       split_k: int = 1, split_k_mode: int = -1) -> Tensor:
        self.calls.append("cslt_sparse_mm")
        _need(alg_id >= 0 and split_k >= 1, f"_cslt_sparse_mm: alg_id={alg_id}, split_k={split_k} out of range")
        _need(isinstance(ca, Compressed), "_cslt_sparse_mm: the first operand must come from _cslt_compress")
        a, eight = ca.dense, ca.dtype in EIGHT_BIT
        _need(b.dim() == 2, f"_cslt_sparse_mm: dense_B must be 2-D, got {tuple(b.shape)}")
        _need(b.dtype == ca.dtype, f"_cslt_sparse_mm: dense_B is {b.dtype} but A is {ca.dtype}; the kernel reads B "
              "with A's type (garbage): cast the input to the weight dtype")
        m, k = a.shape
        _need(b.shape[0] == k, f"_cslt_sparse_mm: A is [{m}, {k}] but B is {tuple(b.shape)}")
        _layout_ok(b, "_cslt_sparse_mm dense_B")
        _aligned(b, "_cslt_sparse_mm dense_B")
        nmul = 16 if eight else 8
        _need(b.shape[1] % nmul == 0, f"_cslt_sparse_mm: n={b.shape[1]} must be a multiple of {nmul}; pad the tokens")
        if out_dtype is not None:
            _need(eight, f"_cslt_sparse_mm: out_dtype is only for 8-bit inputs, not {ca.dtype}")
        odt = out_dtype if out_dtype is not None else ca.dtype
        if bias is not None:
            _need(bias.shape == (m,), f"_cslt_sparse_mm: bias must be [{m}], got {tuple(bias.shape)}")
            want = odt if eight else ca.dtype
            _need(bias.dtype == want, f"_cslt_sparse_mm: bias is {bias.dtype}, the kernel reads it as {want}")
            _need(bias.is_contiguous(), "_cslt_sparse_mm: bias must be contiguous")
        acc = a.double() @ b.double()  # [m, n]
        if alpha is not None:
            _need(alpha.dtype == torch.float32 and alpha.numel() in (1, m),
                  f"_cslt_sparse_mm: alpha must be float32 with 1 or m={m} elements, got {alpha.dtype} "
                  f"{tuple(alpha.shape)}")
            acc = acc * (alpha.double().reshape(-1, 1) if alpha.numel() == m and m > 1 else alpha.double().reshape(()))
        if bias is not None:
            acc = acc + bias.double()[:, None]
        out = acc.t() if transpose_result else acc
        return out.to(odt).contiguous()

    def semi_structured_mm(self, values: Tensor, meta: Tensor, b: Tensor) -> Tensor:
        self.calls.append("semi_structured_mm")
        from sparse24.kernels.pack_cutlass import unpack_cutlass_ref

        _need(b.dim() == 2 and b.dtype == values.dtype, f"_sparse_semi_structured_mm: B must be 2-D {values.dtype}, "
              f"got {tuple(b.shape)} {b.dtype}")
        _need(b.stride(0) == 1 or b.stride(1) == 1, f"_sparse_semi_structured_mm: B strides {tuple(b.stride())} "
              "have no unit stride; call .contiguous()")
        a = unpack_cutlass_ref(values, meta)  # [m, k]
        _need(b.shape[0] == a.shape[1], f"_sparse_semi_structured_mm: A is {tuple(a.shape)} but B is {tuple(b.shape)}")
        return (a.double() @ b.double()).to(values.dtype)

    def scaled_mm(self, a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, bias: Tensor | None = None,
                  out_dtype: torch.dtype | None = None) -> Tensor:
        self.calls.append("scaled_mm")
        fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
        _need(a.dtype in fp8 and b.dtype in fp8, f"_scaled_mm needs FP8 operands, got {a.dtype}, {b.dtype}")
        _need(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0], "_scaled_mm: shapes do not multiply")
        _need(a.is_contiguous(), "_scaled_mm: a must be row-major contiguous")
        _need(b.t().is_contiguous(), "_scaled_mm: b must be column-major (pass w_q.t() of a contiguous [N, K])")
        _need(a.shape[1] % 16 == 0 and b.shape[1] % 16 == 0, "_scaled_mm: K and N must be multiples of 16")
        for s, n in ((scale_a, "scale_a"), (scale_b, "scale_b")):
            _need(s.dtype == torch.float32 and s.numel() == 1, f"_scaled_mm: {n} must be a one-element float32 "
                  "(tensorwise dequantisation scale)")
        odt = out_dtype or a.dtype
        acc = (a.double() * scale_a.double()) @ (b.double() * scale_b.double())
        if bias is not None:
            _need(bias.dtype == odt, f"_scaled_mm: bias must be {odt}")
            acc = acc + bias.double()
        return acc.to(odt)
