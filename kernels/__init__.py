"""sparse24.kernels: Triton kernels around the sparse MMA and the GPU matmul backends (one op per file)."""
