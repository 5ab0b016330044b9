"""Causal LMs to train: an HF model built from a named size preset (random init, no download) or loaded from a folder.

GPT-2's ``Conv1D`` layers need nothing special: ``sparsify`` converts them and the core saves them in their own layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["PRESETS", "build_model", "check_seq_len"]

# name -> (family, layers, hidden, heads). Llama presets use SwiGLU with intermediate = 8/3 hidden (multiple of 64).
PRESETS: dict[str, tuple[str, int, int, int]] = {
    "llama-tiny": ("llama", 2, 64, 4),
    "llama-mini": ("llama", 4, 128, 4),
    "llama-small": ("llama", 4, 256, 4),
    "llama-base": ("llama", 6, 512, 8),
    "gpt2-tiny": ("gpt2", 2, 64, 4),
    "gpt2-small": ("gpt2", 4, 256, 4),
    "gpt2-124m": ("gpt2", 12, 768, 12),
}


def _config(preset: str, vocab: int, max_len: int):
    from transformers import GPT2Config, LlamaConfig

    family, layers, hidden, heads = PRESETS[preset]
    if family == "llama":
        inter = max(64, (hidden * 8 // 3 + 63) // 64 * 64) if hidden >= 128 else hidden * 8 // 3 // 4 * 4
        return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_len,
                           tie_word_embeddings=False, bos_token_id=None, eos_token_id=0, pad_token_id=None)
    return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_len,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)


def check_seq_len(model: nn.Module, seq_len: int, name: str) -> None:
    """Refuse ``seq_len`` beyond learned position embeddings (GPT-2's ``n_positions``: an index error deep inside
    the model otherwise); warn beyond a rotary model's ``max_position_embeddings`` (it runs, but untrained)."""
    import warnings

    cfg = model.config
    learned = getattr(cfg, "n_positions", None)
    if learned is not None and seq_len > learned:
        raise ValueError(f"--seq-len {seq_len} is longer than --model {name}'s n_positions {learned} (learned "
                         f"position embeddings); use --seq-len {learned} or less")
    rope = getattr(cfg, "max_position_embeddings", None)
    if learned is None and rope is not None and seq_len > rope:
        warnings.warn(f"--seq-len {seq_len} is longer than --model {name}'s max_position_embeddings {rope}: "
                      "positions beyond it were never trained", stacklevel=2)


def build_model(spec: str, vocab: int, max_len: int = 1024, seed: int = 0, seq_len: int | None = None) -> nn.Module:
    """``spec``: a preset name (see ``PRESETS``) or an HF folder (weights, or only ``config.json`` = random init);
    ``seq_len`` (the training window) is checked against the model's positions."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    if spec in PRESETS:
        cfg = _config(spec, vocab, max_len)
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        folder = Path(spec)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--model {spec}: not a preset ({', '.join(PRESETS)}) and not a folder with "
                                    "config.json")
        has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
        try:
            config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"--model {spec}: {folder / 'config.json'} is not a valid transformers config ({e})") \
                from None
        model = (AutoModelForCausalLM.from_pretrained(folder, config=config) if has_weights
                 else AutoModelForCausalLM.from_config(config))
        n = model.get_input_embeddings().num_embeddings
        if n < vocab:
            raise ValueError(f"--model {spec} has {n} token embeddings but the tokenizer has {vocab} tokens; "
                             "use the model's own tokenizer (--tokenizer FOLDER)")
    if seq_len is not None:
        check_seq_len(model, seq_len, spec)
    return model
