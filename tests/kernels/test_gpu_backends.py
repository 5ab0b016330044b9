"""GPU backends against the dense reference (marked ``gpu``; skipped without CUDA, run by benchmarks/run_gpu.sh).

Rule for matmuls (tests/tolerances.py): error vs an fp64 product <= MATMUL_ERR_FACTOR x the error of torch's own
dense masked matmul in the same dtype.
"""

from __future__ import annotations

import pytest
import torch
from tolerances import MATMUL_ERR_FACTOR

from sparse24.backends import BACKENDS, select_backend
from sparse24.config import SRSTEConfig
from sparse24.fp8 import fp8_qdq
from sparse24.linear import SparseLinear
from sparse24.masks import magnitude_mask_24, transposable_mask_24

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

NAMES = ["cusparselt", "cutlass", "cusparselt_fp8"]
SHAPES = [(256, 512), (1024, 768)]


def _usable(name: str, shape, dtype) -> None:
    import sparse24.kernels.backends  # noqa: F401  (registers the GPU backends)

    why = BACKENDS[name].check(shape, dtype, torch.device("cuda"))
    if why:
        pytest.skip(f"{name}: {why}")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("tokens", [8, 100, 512])
@pytest.mark.parametrize("name", NAMES)
def test_backend_vs_dense(name, shape, tokens, dtype):
    _usable(name, shape, dtype)
    w = torch.randn(shape, device="cuda", dtype=dtype)
    w = w * transposable_mask_24(w)
    x, gy = torch.randn(tokens, shape[1], device="cuda", dtype=dtype), torch.randn(tokens, shape[0], device="cuda",
                                                                                  dtype=dtype)
    bias = torch.randn(shape[0], device="cuda", dtype=dtype)
    be = BACKENDS[name]
    p = be.prepare(w)
    y, gx = be.linear(x, p, bias), be.grad_input(gy, p)
    ref_y = x.double() @ w.double().t() + bias.double()
    ref_gx = gy.double() @ w.double()
    dense_gx_err = _rel(gy @ w, ref_gx)
    assert y.shape == (tokens, shape[0]) and gx.shape == (tokens, shape[1])
    if name == "cusparselt_fp8":  # compare with the FP8-simulated product (same quantised operands), not fp16's error
        sim = fp8_qdq(x.float()) @ fp8_qdq(w.float()).t() + bias.float()
        assert _rel(y, sim.double()) <= 2 * _rel(sim.to(dtype), sim.double()) + 1e-2
    else:
        assert _rel(y, ref_y) <= MATMUL_ERR_FACTOR * _rel(torch.nn.functional.linear(x, w, bias), ref_y) + 1e-6
    assert _rel(gx, ref_gx) <= MATMUL_ERR_FACTOR * dense_gx_err + 1e-6
    x2 = torch.randn(tokens, 7, shape[1], device="cuda", dtype=dtype)[:, 3]  # sliced input: the boundary copies it
    if name != "cusparselt_fp8":
        torch.testing.assert_close(be.linear(x2, p, None), torch.nn.functional.linear(x2.contiguous(), w),
                                   rtol=2e-2, atol=2e-2)


def test_non_transposable_mask_runs_grad_input_dense():
    _usable("cusparselt", (256, 512), torch.float16)
    w = torch.randn(256, 512, device="cuda", dtype=torch.float16)
    w = w * magnitude_mask_24(w)
    p = BACKENDS["cusparselt"].prepare(w)
    assert p.packed_t is None
    gy = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(BACKENDS["cusparselt"].grad_input(gy, p), gy @ w)


@pytest.mark.parametrize("name", ["cusparselt", "cutlass"])
def test_training_step_equivalence(name):
    _usable(name, (512, 256), torch.bfloat16)
    torch.manual_seed(0)
    cfg = SRSTEConfig(transposable=True)
    lin = torch.nn.Linear(256, 512, device="cuda", dtype=torch.bfloat16)
    a = SparseLinear.from_dense(lin, cfg, backend=name)
    b = SparseLinear.from_dense(torch.nn.Linear(256, 512, device="cuda", dtype=torch.bfloat16), cfg, backend="dense")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ya, yb = a(x), b(x)
    ga = torch.autograd.grad(ya.float().square().mean(), (x, a.weight))
    gb = torch.autograd.grad(yb.float().square().mean(), (x, b.weight))
    ref = x.double() @ (b.weight.double() * b.mask).t() + b.bias.double()
    assert _rel(ya, ref) <= MATMUL_ERR_FACTOR * _rel(yb, ref) + 1e-6
    for u, v in zip(ga, gb):
        assert _rel(u, v.double()) < 2e-2


def test_alg_id_guard_and_cache(tmp_path):
    _usable("cusparselt", (1024, 1024), torch.float16)
    from sparse24.kernels.cslt_search import AlgCache, cslt_config

    w = torch.randn(1024, 1024, device="cuda", dtype=torch.float16)
    w = w * magnitude_mask_24(w)
    packed = torch._cslt_compress(w)
    cache = AlgCache(tmp_path / "algs.json")
    cfg = cslt_config(packed, w, 512, cache=cache)
    assert cfg[0] >= 0, "no cuSPARSELt algorithm passed the correctness guard"
    assert len(cache._load()) == 1 and AlgCache(tmp_path / "algs.json").get(next(iter(cache._load()))) == cfg
    x = torch.randn(512, 1024, device="cuda", dtype=torch.float16)
    kw = {"split_k": cfg[1], "split_k_mode": cfg[2]} if cfg[1] != 1 else {}
    y = torch._cslt_sparse_mm(packed, x.t(), transpose_result=True, alg_id=cfg[0], **kw)
    ref = x.double() @ w.double().t()
    assert _rel(y, ref) <= MATMUL_ERR_FACTOR * _rel(x @ w.t(), ref) + 1e-6


def test_auto_selection_on_this_gpu():
    import sparse24.kernels.backends  # noqa: F401

    be = select_backend("auto", (4096, 4096), torch.bfloat16, "cuda", tokens=4096)
    assert be.info.name in ("cusparselt", "cutlass", "dense")
    assert select_backend("auto", (4096, 4096), torch.bfloat16, "cuda", tokens=1).info.name == "dense"
