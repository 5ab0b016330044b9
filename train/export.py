"""Save a finished model in the core formats.

- 2:4 models: :func:`sparse24.save_sparse` (HF dense-with-zeros folder + ``sparse24_config.json`` + compressed file);
- dense models (the dense baseline, and T-SR-STE after its dense fine-tune, whose weights are no longer 2:4):
  plain ``save_pretrained`` — loadable by ``transformers`` as is;
A ``tokenizer.json`` (when the run trained one) and ``sparse24_train.json`` (recipe, steps, final losses) go with it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from sparse24.api import sparse_modules, unsparsify
from sparse24.fileio import atomic_folder, atomic_write_json
from sparse24.io import save_sparse

__all__ = ["save_final"]


def save_final(model: nn.Module, folder: str | Path, record: dict[str, Any], tokenizer: Any = None) -> str:
    """Write ``folder`` (replacing it); returns the format: ``"sparse24"`` or ``"dense"``."""
    folder = Path(folder)
    sparse = [m for _, m in sparse_modules(model)]
    is_dense = not sparse or all(bool(m.dense_mode) for m in sparse)
    if sparse and not is_dense:
        save_sparse(model, folder, compressed=True, overwrite=True, extra={"train": record})
        kind = "sparse24"
    else:
        plain = copy.deepcopy(model)
        unsparsify(plain)  # GPT-2 layers go back to Conv1D
        with atomic_folder(folder, overwrite=True) as tmp:
            plain.save_pretrained(tmp)
        kind = "dense"
    atomic_write_json(folder / "sparse24_train.json", {"saved_as": kind, **record})
    if tokenizer is not None:
        from transformers import PreTrainedTokenizerFast

        PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)
    return kind
