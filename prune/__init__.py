"""sparse24.prune: one-shot 2:4 pruning of HF Llama-family checkpoints (magnitude, Wanda, SparseGPT, ...)."""
