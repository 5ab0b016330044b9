"""``sparse24 demo``: the core library end to end in a minute on a CPU.

Builds a small Llama from a config (byte-level vocabulary, no download), sparsifies it, trains on the text shipped in
``sparse24/data``, saves it (dense-with-zeros HF folder + compressed file), reloads the compressed copy and checks
that every sparse weight is exactly 2:4 and that the reloaded model gives the same logits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparse24.config import MagnitudeConfig, SparseConfig, SRSTEConfig, SSTEConfig
from sparse24.texts import byte_tokens, shipped_text

METHODS: dict[str, type[SparseConfig]] = {"sste": SSTEConfig, "srste": SRSTEConfig, "magnitude": MagnitudeConfig}


def tiny_llama(layers: int = 2, hidden: int = 64, vocab: int = 256, seed: int = 0) -> nn.Module:
    """A small ``LlamaForCausalLM`` built from a config (random weights, deterministic for a seed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 4 * 4,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def demo_trainer(model: nn.Module, tokens: torch.Tensor, steps: int, lr: float = 3e-3, batch: int = 8,
                 seqlen: int = 64, seed: int = 0, log_every: int = 10, quiet: bool = False) -> Any:
    """The shared :class:`~sparse24.train.loop.Trainer` (the one ``sparse24 train`` runs) set up for the demo:
    AdamW at a constant ``lr`` without weight decay, clipping at 1, masked decay and mask refresh as the layers'
    configs say, random windows of ``tokens`` by position; prints a line every ``log_every`` steps unless ``quiet``."""
    from sparse24.train.data import batch_at
    from sparse24.train.loop import TrainConfig, Trainer

    cfg = TrainConfig(steps=steps, batch_size=batch, seq_len=seqlen, lr=lr, min_lr=lr, warmup=0.0, weight_decay=0.0,
                      clip=1.0, seed=seed, progress=False)
    trainer = Trainer(model, cfg, lambda i: batch_at(tokens, i, batch, seqlen, seed))

    def log(tr: Any, row: dict) -> None:
        if not quiet and (row["step"] % log_every == 0 or row["step"] == 1):
            print(f"step {row['step']:4d}  loss {row['loss']:.4f}  flip_rate {row.get('flip_rate', 0.0):.4f}  "
                  f"flip_rate_vs_init {row.get('flip_rate_init', 0.0):.4f}")

    trainer.on_row.append(log)
    return trainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=sorted(METHODS), default="sste", help="2:4 method to train with")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps")
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the tiny Llama")
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny Llama (multiple of 16)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the saved sparse model")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from sparse24.api import sparse_modules, sparsify
    from sparse24.fileio import check_output_path
    from sparse24.io import load_sparse, save_sparse
    from sparse24.masks import is_24
    from sparse24.runtime import quiet_third_party

    quiet_third_party()
    if args.steps < 1:
        raise ValueError("--steps must be >= 1")
    check_output_path(args.out, overwrite=args.overwrite)  # before any training: refuse an existing --out now
    torch.manual_seed(args.seed)
    tokens = byte_tokens(shipped_text())
    model = tiny_llama(args.layers, args.hidden, seed=args.seed)
    cfg = METHODS[args.method]()
    sparsify(model, cfg)
    n = sum(1 for _ in sparse_modules(model))
    print(f"sparse24 demo: {args.layers}-layer Llama (hidden {args.hidden}), {n} linears -> {cfg.name} 2:4, "
          f"{len(tokens)} bytes of shipped text")
    t0 = time.time()
    trainer = demo_trainer(model, tokens, args.steps, seed=args.seed)
    hist = trainer.fit()
    model = trainer.unwrapped.cpu()  # the checks below run on the CPU
    print(f"trained {args.steps} steps in {time.time() - t0:.1f}s: loss {hist[0]['loss']:.3f} -> "
          f"{hist[-1]['loss']:.3f}")
    folder = save_sparse(model, args.out, compressed=True, overwrite=True,  # --out checked above
                         extra={"demo": {"steps": args.steps, "final_loss": hist[-1]["loss"]}})
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"saved to {folder} ({size / 1e6:.2f} MB: HF dense-with-zeros + sparse24_compressed.safetensors)")
    reloaded = load_sparse(folder)
    model.eval()
    probe = tokens[:65].unsqueeze(0)
    with torch.no_grad():
        same = torch.equal(model(input_ids=probe).logits, reloaded(input_ids=probe).logits)
    checks = {fqn: is_24(m.sparse_weight()) for fqn, m in sparse_modules(reloaded)}
    print(f"2:4 check: {sum(checks.values())}/{len(checks)} sparse weights are exactly 2:4; "
          f"reloaded logits identical: {same}; final flip rate {hist[-1].get('flip_rate', 0.0):.4f}")
    return 0 if all(checks.values()) and same else 1
