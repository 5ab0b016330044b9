"""sparse24.eval: perplexity and lm-eval zero-shot evaluation of (sparse) causal LMs."""
