"""pack_cutlass (CUTLASS values + reordered metadata) bit-exact against torch's pure-torch conversion."""

from __future__ import annotations

import pytest
import torch
from sparse24.kernels.pack_cutlass import pack_cutlass_ref, pack_cutlass_triton, unpack_cutlass_ref

from sparse24.masks import magnitude_mask_24

SHAPES = {torch.float16: [(32, 32), (64, 96), (96, 64)], torch.bfloat16: [(32, 64), (64, 160)],
          torch.int8: [(16, 64), (48, 128)]}
CASES = [pytest.param(dt, s, id=f"{str(dt)[6:]}-{s[0]}x{s[1]}") for dt, ss in SHAPES.items() for s in ss]


def _sparse(shape, dtype, device) -> torch.Tensor:
    if dtype == torch.int8:
        w = torch.randint(-9, 10, shape, device=device).float()
    else:
        w = torch.randn(shape, device=device)
    w = w * magnitude_mask_24(w)
    w[0, :8] = 0.0  # groups with fewer than two non-zeros use torch's special encodings
    w[1, :4] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    w[2, :4] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return w.to(dtype)


@pytest.mark.parametrize("dtype,shape", CASES)
def test_bit_exact_vs_torch(dtype, shape, device):
    w = _sparse(shape, dtype, device)
    if dtype.is_floating_point:
        w[3, :4] = torch.tensor([-0.0, 0.0, 2.0, 0.0], dtype=dtype)  # -0.0 counts as zero, like torch
    values, meta = pack_cutlass_triton(w)
    ref_values, ref_meta = pack_cutlass_ref(w.cpu())
    assert meta.dtype == ref_meta.dtype and meta.shape == ref_meta.shape
    assert torch.equal(meta.cpu(), ref_meta)
    assert torch.equal(values.cpu().view(torch.uint8), ref_values.view(torch.uint8))  # bit patterns, -0.0 too
    assert torch.equal(unpack_cutlass_ref(values.cpu(), meta.cpu()), w.cpu())


def test_more_than_two_nonzeros_matches_torch_encoding_when_unvalidated(device):
    w = torch.randn(32, 32, device=device).half()  # dense: 4 non-zeros per group
    with pytest.raises(ValueError, match="not 2:4"):
        pack_cutlass_triton(w)
    values, meta = pack_cutlass_triton(w, validate=False)
    rv, rm = pack_cutlass_ref(w.cpu(), validate=False)
    assert torch.equal(meta.cpu(), rm) and torch.equal(values.cpu(), rv)


def test_shape_and_dtype_errors(device):
    with pytest.raises(ValueError, match="rows % 32"):
        pack_cutlass_triton(torch.zeros(16, 64, dtype=torch.float16, device=device))
    with pytest.raises(ValueError, match="cols % 32"):
        pack_cutlass_triton(torch.zeros(32, 48, dtype=torch.float16, device=device))
    with pytest.raises(TypeError, match="dtype"):
        pack_cutlass_triton(torch.zeros(32, 64, device=device))


def test_op_dispatches_to_an_identical_result(device):
    from sparse24.kernels.pack_cutlass import pack_cutlass

    w = _sparse((32, 64), torch.float16, device)
    v, m = pack_cutlass(w)
    rv, rm = pack_cutlass_ref(w.cpu())
    assert torch.equal(v.cpu(), rv) and torch.equal(m.cpu(), rm)
    with pytest.raises(ValueError, match="not 2:4"):
        pack_cutlass(torch.randn(32, 64, device=device).half())
