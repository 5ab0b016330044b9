"""sparse24.kernels: Triton kernels around the sparse MMA and the GPU matmul backends (one op per file).

Each op module holds the ``@triton.jit`` kernel, a checked launcher and the pure-torch ``*_ref`` it must match:
``mask24`` (magnitude 2:4 mask + apply), ``transposable_mask`` (exact, 90 patterns), ``soft_threshold`` (S-STE,
β fused), ``mvue24`` (unbiased 2:4 sampling), ``masked_decay`` (SR-STE ``g += λ(1−M)⊙W``), ``compress24`` (CUTLASS
values + metadata), ``fp8_cast`` (e4m3/e5m2, tensor or row scales). ``backends`` registers cusparselt, cutlass,
cusparselt_fp8 and triton with :mod:`sparse24.backends`; ``cslt_search`` picks cuSPARSELt algorithms safely.

Submodules are not imported here: Triton reads ``TRITON_INTERPRET`` when a kernel module is imported, so importing
them lazily lets a caller (or the test suite) choose the interpreter first.
"""
