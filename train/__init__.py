"""sparse24.train: 2:4 pretraining recipes (dense, T-SR-STE + masked decay + dense fine-tune, S-STE) with accelerate.

Modules: ``recipe`` (YAML recipes), ``corpus`` / ``data`` (token streams and caches), ``model`` (presets, GPT-2
Conv1D swap), ``loop`` (the one training loop: loss function, hooks, accumulation, clipping, decay, mask refresh),
``checkpoint`` (atomic, bit-exact resume; safetensors + JSON, no pickle; run fingerprints), ``telemetry`` / ``plot``
(JSONL and PNG), ``sweep`` (λ by flip rate), ``export`` (final model formats), ``pretrain`` (everything wired
together), ``cli`` (``sparse24 train``), ``retrain`` (``sparse24 retrain``: AST from a dense or one-shot pruned
model), ``ast_trainer`` (AST's loss, student and hooks), ``curve`` (perplexity against training tokens).
"""
