"""``sparse24 demo``: the core library end to end in a minute on a CPU.

Builds a small Llama from a config (byte-level vocabulary, no download), sparsifies it, trains on the text shipped in
``sparse24/data``, saves it (dense-with-zeros HF folder + compressed file), reloads the compressed copy and checks
that every sparse weight is exactly 2:4 and that the reloaded model gives the same logits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

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


def random_batches(tokens: torch.Tensor, batch: int, seqlen: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch, seqlen + 1]`` random windows of ``tokens``."""
    starts = torch.randint(0, len(tokens) - seqlen - 1, (batch,), generator=generator)
    return torch.stack([tokens[s : s + seqlen + 1] for s in starts.tolist()])


def train_steps(model: nn.Module, tokens: torch.Tensor, steps: int, lr: float = 3e-3, batch: int = 8,
                seqlen: int = 64, seed: int = 0, log_every: int = 10, quiet: bool = False) -> list[dict]:
    """A minimal AdamW loop with clipping, masked decay and mask refresh; returns one record per step."""
    from sparse24.api import apply_masked_decay, sparse_modules, update_masks
    from sparse24.tracking import FlipTracker

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    tracker, history = FlipTracker(), []
    tracker.update({n: m.mask for n, m in sparse_modules(model)})
    model.train()
    for step in range(1, steps + 1):
        b = random_batches(tokens, batch, seqlen, gen)
        loss = _loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        apply_masked_decay(model)
        opt.step()
        stats = update_masks(model, tracker)  # refresh due masks, flip rates
        rec = {"step": step, "loss": loss.item(), **{k: v for k, v in stats.items() if "/" not in k}}
        history.append(rec)
        if not quiet and (step % log_every == 0 or step == 1):
            print(f"step {step:4d}  loss {rec['loss']:.4f}  flip_rate {rec.get('flip_rate', 0.0):.4f}  "
                  f"flip_rate_vs_init {rec.get('flip_rate_init', 0.0):.4f}")
    return history


def _loss(model: nn.Module, b: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=b[:, :-1]).logits  # [B, T, V]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1))


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
    from sparse24.io import load_sparse, save_sparse
    from sparse24.masks import is_24

    torch.manual_seed(args.seed)
    tokens = byte_tokens(shipped_text())
    model = tiny_llama(args.layers, args.hidden, seed=args.seed)
    cfg = METHODS[args.method]()
    sparsify(model, cfg)
    n = sum(1 for _ in sparse_modules(model))
    print(f"sparse24 demo: {args.layers}-layer Llama (hidden {args.hidden}), {n} linears -> {cfg.name} 2:4, "
          f"{len(tokens)} bytes of shipped text")
    t0 = time.time()
    hist = train_steps(model, tokens, args.steps, seed=args.seed)
    print(f"trained {args.steps} steps in {time.time() - t0:.1f}s: loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f}")
    folder = save_sparse(model, args.out, compressed=True, overwrite=args.overwrite,
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
