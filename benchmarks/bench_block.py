"""One training step of a small Llama at real width, dense vs each 2:4 recipe: ms/step and peak memory.

    python benchmarks/bench_block.py                     # GPU: 2 Llama-2-7B-width layers, 2 micro-batches of 4x1024
    python benchmarks/bench_block.py --smoke             # CPU: a tiny Llama, same step

The step is what ``sparse24 train`` does: fp32 master weights, ``torch.autocast`` (bf16/fp16 compute, so the 2:4
GEMMs run on the 16-bit sparse kernels), ``--micro`` micro-batches, SR-STE's masked decay before the optimizer,
AdamW, then ``update_masks`` (mask refresh; the next forward re-packs once).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import _harness as H  # noqa: E402

GPU_MODEL = {"hidden": 4096, "intermediate": 11008, "layers": 2, "heads": 32, "kv": 32, "vocab": 1024}
SMOKE_MODEL = {"hidden": 64, "intermediate": 128, "layers": 1, "heads": 4, "kv": 2, "vocab": 64}


def recipes() -> dict[str, object]:
    from sparse24.config import SRSTEConfig, SSTEConfig

    return {"dense": None, "srste-t": SRSTEConfig(transposable=True), "sste": SSTEConfig(),
            "sste-mvue": SSTEConfig(mvue=True)}


def build(spec: dict, device: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
                      num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                      num_key_value_heads=spec["kv"], max_position_embeddings=4096, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).to(device)


def make_step(model: torch.nn.Module, batches: list[torch.Tensor], dtype: torch.dtype | None, device: str):
    from sparse24.api import apply_masked_decay, update_masks

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        for ids in batches:
            with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = model(input_ids=ids, labels=ids).loss / len(batches)
            loss.backward()
        apply_masked_decay(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_masks(model)

    return step


def run(args: argparse.Namespace) -> tuple[str, list[dict]]:
    from sparse24.api import sparsify

    device = H.device_for(args)
    dtype = H.DTYPES[args.dtype] if args.dtype != "fp32" else torch.bfloat16
    spec = SMOKE_MODEL if args.smoke else GPU_MODEL
    batch, seq, micro = (1, 8, 1) if args.smoke else (4, 1024, 2)
    if args.smoke and device == "cpu":
        dtype = None  # CPU bf16 GEMMs are slow and the smoke run checks the script: fp32, no autocast
    torch.manual_seed(0)
    base = build(spec, device)
    batches = [torch.randint(0, spec["vocab"], (batch, seq), device=device) for _ in range(micro)]
    stamp, rows = H.env_stamp(device), []
    shape = f"llama-{spec['hidden']}x{spec['layers']}"
    for name, cfg in recipes().items():
        model = copy.deepcopy(base)
        if cfg is not None:
            sparsify(model, {"_default": None, "*.mlp.*": cfg, "*.self_attn.*": cfg})
        step = make_step(model, batches, dtype, device)
        step()  # warm-up: packing, cuSPARSELt search
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        q = H.bench(step, device, args.smoke)
        tokens = batch * seq * micro
        rows.append(H.row("train_step", name, shape, tokens, args.dtype, "ms", q, stamp))
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
            rows.append(H.row("train_step", name, shape, tokens, args.dtype, "peak_MB", (peak, peak, peak), stamp))
        del model, step
        H.write_csv(H.csv_path(args, "block", device), rows)  # partial: survives a timeout
    return device, rows


def main(argv: list[str] | None = None) -> int:
    return H.main(__doc__, run, "block", "ms", argv)


if __name__ == "__main__":
    sys.exit(main())
