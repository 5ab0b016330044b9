"""Peak memory of `sparse24 convert` on a sharded sparse-24-bitmask checkpoint: one shard, not the whole model.

  python benchmarks/ct_memory.py [--layers 8,16] [--hidden 1024] [--work out/ct_mem]

Builds a synthetic Llama checkpoint (random 2:4 weights, bf16) with one shard per decoder layer, written in the
sparse-24-bitmask layout by sparse24's exporter, then imports it in a fresh process and reads that process's peak RSS
(VmHWM, reset after the imports and validation, so the number is what the conversion itself adds).
Writes benchmarks/results/ct_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(work: Path, layers: int, hidden: int) -> tuple[Path, int]:
    """A sparse24 folder with one shard per layer, exported to sparse-24-bitmask; returns (ct folder, dense bytes)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from sparse24 import __version__
    from sparse24.compressed_tensors import write_compressed_tensors
    from sparse24.config import MagnitudeConfig

    cfg = LlamaConfig(vocab_size=8192, hidden_size=hidden, intermediate_size=hidden * 11 // 4 // 8 * 8,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
                      tie_word_embeddings=False, dtype="bfloat16")
    s24 = work / "s24"
    shutil.rmtree(s24, ignore_errors=True)
    s24.mkdir(parents=True)
    cfg.save_pretrained(s24)
    inter, kv = cfg.intermediate_size, cfg.num_key_value_heads * 64
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
              "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
              "mlp.down_proj": (hidden, inter)}
    weight_map, modules, total = {}, [], 0
    n = layers + 1
    for i in range(n):
        sd = {}
        if i == layers:
            sd["model.embed_tokens.weight"] = torch.randn(cfg.vocab_size, hidden).bfloat16()
            sd["lm_head.weight"] = torch.randn(cfg.vocab_size, hidden).bfloat16()
            sd["model.norm.weight"] = torch.ones(hidden).bfloat16()
        else:
            for leaf, shape in shapes.items():
                keep = torch.rand(shape[0], shape[1] // 4, 4).argsort(-1) < 2  # [out, in/4, 4], two per group
                sd[f"model.layers.{i}.{leaf}.weight"] = (torch.randn(shape) * keep.reshape(shape)).bfloat16()
                modules.append(f"model.layers.{i}.{leaf}")
            for norm in ("input_layernorm", "post_attention_layernorm"):
                sd[f"model.layers.{i}.{norm}.weight"] = torch.ones(hidden).bfloat16()
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(sd, str(s24 / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(sd, fname))
        total += sum(t.numel() * t.element_size() for t in sd.values())
    (s24 / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    record = {"format": "sparse24", "format_version": 1, "sparse24_version": __version__, "method": "magnitude",
              "config": MagnitudeConfig().to_dict(), "modules": sorted(modules), "compressed": None, "extra": {}}
    (s24 / "sparse24_config.json").write_text(json.dumps(record))
    return write_compressed_tensors(s24, work / "ct", overwrite=True), total


CHILD = """
import sys
from pathlib import Path
from sparse24.compressed_tensors import compressed_tensors_to_sparse24, inspect_compressed_tensors
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
inspect_compressed_tensors(sys.argv[1])  # imports torch + transformers, builds the meta model, reads headers
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
compressed_tensors_to_sparse24(sys.argv[1], sys.argv[2], overwrite=True)
print(before, status("VmHWM"))
"""


def peak_mib(ct: Path, out: Path) -> tuple[float, float]:
    """(RSS before the conversion, peak RSS during it) in MiB, in a fresh process."""
    r = subprocess.run([sys.executable, "-c", CHILD, str(ct), str(out)], capture_output=True, text=True,
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    before, peak = r.stdout.split()[-2:]
    return int(before) / 1024, int(peak) / 1024  # /proc reports KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="8,16", help="comma-separated layer counts: the peak must not grow with them")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--work", type=Path, default=ROOT / "out" / "ct_mem")
    args = p.parse_args()
    rows = []
    for layers in (int(x) for x in args.layers.split(",")):
        work = args.work / f"l{layers}"
        ct, dense = build(work, layers, args.hidden)
        files = sorted(ct.glob("*.safetensors"))
        base, peak = peak_mib(ct, work / "imported")
        out_largest = max(f.stat().st_size for f in (work / "imported").glob("*.safetensors"))
        disk = sum(f.stat().st_size for f in files)
        rows.append(f"| {layers} | {dense / 2**20:.0f} | {len(files)} | {disk / 2**20:.0f} "
                    f"| {out_largest / 2**20:.0f} | {base:.0f} | {peak:.0f} | **{peak - base:.0f}** |")
        shutil.rmtree(work)
    lines = [
        "# Peak memory of `sparse24 convert` (sparse-24-bitmask -> sparse24), one shard at a time",
        "",
        f"Synthetic Llama (hidden {args.hidden}, vocab 8192, bf16, random 2:4 weights), one shard per decoder layer "
        f"plus one for embeddings and head: `python benchmarks/ct_memory.py --layers {args.layers}`. A fresh process "
        "imports torch and transformers and validates the folder (meta model, headers); then its peak RSS (VmHWM) is "
        "reset and `compressed_tensors_to_sparse24` runs. MiB throughout.",
        "",
        "| layers | dense model | shards | on disk | largest dense output shard | RSS before | peak during | "
        "**added by the conversion** |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Reading: what the conversion adds depends on the largest shard (decoded, plus the previous one while it is "
        "written, plus allocator slack), not on the number of layers.",
    ]
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "results" / "ct_memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
