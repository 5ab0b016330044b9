"""Tiny offline helpers for the pruning/eval tests (imported by the tests/prune and tests/eval conftests): a byte-level
BPE tokenizer trained on the shipped text and a tiny Llama saved as an HF folder (safetensors + tokenizer); no hub,
no SmolLM2, no olmo-eval."""

from __future__ import annotations

from pathlib import Path

import torch


def make_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sparse24.texts import shipped_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(shipped_text().split("\n"), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_model_dir(folder: Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    from sparse24.demo import tiny_llama

    tok = make_tokenizer()
    model = tiny_llama(layers=layers, hidden=hidden, vocab=len(tok), seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "calib.txt").write_text(_calib_text())
    return folder


def _calib_text() -> str:
    from sparse24.texts import shipped_text

    return shipped_text()


def correlated_inputs(tokens: int, features: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[tokens, features]`` float64 with correlated columns and log-uniform column scales (like LLM activations)."""
    z = torch.randn(tokens, features, dtype=torch.float64, generator=generator)
    mix = torch.eye(features, dtype=torch.float64) + 0.5 * torch.randn(features, features, dtype=torch.float64,
                                                                       generator=generator) / features**0.5
    scales = torch.exp(torch.empty(features, dtype=torch.float64).uniform_(-1.5, 1.5, generator=generator))
    return (z @ mix) * scales
