"""What this GPU's torch really does with the calls sparse24 makes: one JSON of findings (a ``run_gpu.sh`` stage).

    python benchmarks/probe_gpu.py --out-dir DIR             # probe.json: versions, search, split-K, FP8, CUTLASS
    python benchmarks/probe_gpu.py --out-dir DIR --hazards   # probe_hazards.json: raw misuse (may kill the context)

Every check is recorded as ``{"ok": bool, ...}`` or ``{"error": "..."}``; none stops the probe. The assumptions it
checks are the ones the CPU contract (``kernels/contract.py``) encodes but could not verify without a GPU: the
result of ``torch._C._cusparselt.mm_search``, split-K arguments, bias with ``transpose_result``, FP8 with
``out_dtype``/``transpose_result``/per-row alpha, CUTLASS refusing sm_90, and what raw non-contiguous, fp32 or
stride-0 operands do (``--hazards``, run last in its own process).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).norm() / ref.double().norm())


def check(results: dict, name: str, fn) -> None:
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    print(name, results[name], flush=True)


def sparse_weight(m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    from sparse24.masks import transposable_mask_24

    w = torch.randn(m, k, device="cuda")
    return (w * transposable_mask_24(w)).to(dtype)


def probes() -> dict:
    r: dict = {}
    w = sparse_weight(4096, 4096, torch.bfloat16)
    p = torch._cslt_compress(w)
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    ref = x.double() @ w.double().t()
    r["versions"] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
                     "cc": list(torch.cuda.get_device_capability()),
                     "cusparselt": torch.backends.cusparselt.version(),
                     "torch_max_alg_table": torch.backends.cusparselt.get_max_alg_id(),
                     "has_mm_search": hasattr(getattr(torch._C, "_cusparselt", None), "mm_search")}
    print(r["versions"], flush=True)
    check(r, "mm_search", lambda: {"raw": repr(torch._C._cusparselt.mm_search(p, x.t(), None, None, None, True))})
    check(r, "split_k_2", lambda: {"rel": rel(torch._cslt_sparse_mm(p, x.t(), transpose_result=True, alg_id=0,
                                                                    split_k=2, split_k_mode=0), ref)})
    for dt in (torch.float16, torch.bfloat16):
        wd, b = w.to(dt), torch.randn(4096, device="cuda", dtype=dt)
        pd = torch._cslt_compress(wd)
        for t in (8, 16, 4096):
            xd = torch.randn(t, 4096, device="cuda", dtype=dt)
            check(r, f"bias_transpose_{str(dt)[6:]}_T{t}", lambda pd=pd, xd=xd, wd=wd, b=b: {"rel": rel(
                torch._cslt_sparse_mm(pd, xd.t(), b, transpose_result=True), xd.double() @ wd.double().t() + b)})
    fp8_checks(r, w)
    check(r, "cutlass_on_this_gpu", cutlass_check)  # expected on sm_90: an error (CUTLASS 2:4 is SM8x only)
    return r


def cutlass_check() -> dict:
    from sparse24.kernels.pack_cutlass import pack_cutlass

    w = sparse_weight(128, 128, torch.float16)
    values, meta = pack_cutlass(w, validate=False)
    b = torch.randn(128, 64, device="cuda", dtype=torch.float16)
    return {"rel": rel(torch._sparse_semi_structured_mm(values, meta, b), w.double() @ b.double())}


def fp8_checks(r: dict, w: torch.Tensor) -> None:
    from sparse24.fp8 import fp8_qdq, fp8_quantize

    qw, sw = fp8_quantize(w)
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    qx, sx = fp8_quantize(x)
    sim = fp8_qdq(x.float()) @ fp8_qdq(w.float()).t()
    p = torch._cslt_compress(qw)
    alpha = (1 / (sw * sx)).reshape(1).float()
    for out in (torch.bfloat16, torch.float16):
        for tr in (False, True):
            def run(out=out, tr=tr):
                y = torch._cslt_sparse_mm(p, qx.t(), alpha=alpha, out_dtype=out, transpose_result=tr)
                return {"rel_vs_sim": rel(y if tr else y.t(), sim)}
            check(r, f"fp8_out_{str(out)[6:]}_transpose_{tr}", run)
    vec = alpha.expand(4096).contiguous()  # per-row alpha: avoids the host sync of a one-element alpha
    check(r, "fp8_vector_alpha", lambda: {"rel_vs_sim": rel(torch._cslt_sparse_mm(
        p, qx.t(), alpha=vec, out_dtype=torch.bfloat16, transpose_result=True), sim)})


def hazards() -> dict:
    r: dict = {}
    w = sparse_weight(1024, 1024, torch.bfloat16)
    p = torch._cslt_compress(w)
    h = torch.randn(64, 5, 1024, device="cuda", dtype=torch.bfloat16)
    cases = {"sliced_rows": h[:, -1, :], "fp32_input": h[:, 0, :].float().contiguous(),
             "stride0": torch.ones((), device="cuda", dtype=torch.bfloat16).expand(64, 1024)}
    for name, xb in cases.items():
        def run(xb=xb):
            y = torch._cslt_sparse_mm(p, xb.t(), transpose_result=True)
            torch.cuda.synchronize()
            return {"ran": True, "rel": rel(y, xb.double() @ w.double().t())}
        check(r, name, run)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--hazards", action="store_true", help="raw misuse of _cslt_sparse_mm (run in its own process)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("probe_gpu.py needs a CUDA GPU")
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = "probe_hazards.json" if args.hazards else "probe.json"
    res = hazards() if args.hazards else probes()
    (args.out_dir / name).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
