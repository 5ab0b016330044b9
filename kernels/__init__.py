"""sparse24.kernels: Triton kernels around the sparse MMA, and the GPU matmul backends (one op per file).

Each op module holds the ``@triton.jit`` kernel, its launcher ``<op>_triton``, the pure-torch ``<op>_ref`` (same
signature, the test oracle) and the op ``<op>`` that the library calls: the kernel on CUDA, the reference elsewhere.
- ``mask24`` (magnitude 2:4 mask + apply) and ``transposable_mask`` (exact, 90 patterns): ``SparseLinear.compute_mask``.
- ``soft_threshold`` (S-STE ``β·S(W)``): ``SparseLinear`` packs S-STE weights through it.
- ``mvue`` (unbiased 2:4 sampling of ``∇Yᵀ``): ``SparseMatmul``'s backward with ``mvue=True``.
- ``masked_decay_`` (SR-STE ``g += λ(1−M)⊙W``): :func:`sparse24.apply_masked_decay` and the autograd placement.
- ``pack_cutlass`` (CUTLASS values + metadata): the ``cutlass`` backend.
- ``fp8_cast`` (e4m3/e5m2 with scales): the ``cusparselt_fp8`` backend.
``backends`` registers cusparselt, cutlass, cusparselt_fp8 (and their CPU ``*_contract`` twins, see ``contract``) with
:mod:`sparse24.backends`; ``cslt_search`` tunes cuSPARSELt algorithms safely.

Submodules are not imported here: Triton reads ``TRITON_INTERPRET`` when a kernel module is imported, so importing
them lazily lets a caller (or the test suite) choose the interpreter first.
"""
