"""``sparse24 convert``: move a 2:4 checkpoint between sparse24's folder and compressed-tensors' sparse-24-bitmask."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Convert a 2:4 checkpoint between two on-disk formats.

  sparse24           a plain Hugging Face folder (dense weights with exact zeros, config.json WITHOUT a
                     quantization_config) plus sparse24_config.json. Every current engine loads it as a dense
                     model; sparse24 (load_sparse, `sparse24 eval`) loads it 2:4 and runs the sparse backends.
  compressed-tensors the legacy `sparse-24-bitmask` format (llm-compressor 0.x, RedHatAI/Sparse-Llama-3.1-8B-2of4
                     and its fine-tunes). Only compressed-tensors<=0.14.0.1 with transformers<5 and vLLM<=0.18
                     (sm90 for the sparse kernels) load it; newer releases removed it. Import also reads the
                     uncompressed variant (sparsity_config format "dense", sparsity_structure "2:4").

The input format is detected from the folder. Import validates every tensor (shapes against config.json,
exactly two kept values in every group of 4) and refuses quantized (FP8/INT8) checkpoints by name. Work goes
shard by shard, so memory stays at one shard; the output appears only when complete and an existing folder is
never replaced without --overwrite.
"""

EPILOG = """examples:
  sparse24 convert Sparse-Llama-3.1-8B-2of4 --out sl8b-s24          # import; then: sparse24 eval sl8b-s24
  sparse24 convert pruned --to compressed-tensors --out pruned-ct   # export for a pinned vLLM<=0.18 stack
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("folder", type=Path, help="input folder: compressed-tensors sparse-24-bitmask, or sparse24")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--to", choices=("sparse24", "compressed-tensors"), default="sparse24",
                   help="output format (default: sparse24)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (atomically, after success)")


def run(args: argparse.Namespace) -> int:
    from sparse24.compressed_tensors import (
        compressed_tensors_to_sparse24,
        is_compressed_tensors,
        write_compressed_tensors,
    )
    from sparse24.ct_checkpoint import ct_section
    from sparse24.io import CONFIG_NAME

    src = Path(args.folder)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}/config.json not found: pass a checkpoint folder")
    if Path(args.out).resolve() == src.resolve():
        raise ValueError("--out is the input folder; choose a new output folder")
    is_s24 = (src / CONFIG_NAME).is_file()
    if args.to == "sparse24":
        if is_s24:
            raise ValueError(f"{src} is already a sparse24 checkpoint; to export it use --to compressed-tensors")
        if not is_compressed_tensors(src) and ct_section(json.loads((src / "config.json").read_text())) is None:
            raise ValueError(f"{src} is neither a compressed-tensors checkpoint nor a sparse24 one; to make a dense HF "
                             "model 2:4 use `sparse24 prune`")  # other compressed-tensors folders: inspect says why
        out = compressed_tensors_to_sparse24(src, args.out, overwrite=args.overwrite)
    else:
        if is_compressed_tensors(src):
            raise ValueError(f"{src} is already a compressed-tensors checkpoint; to import it use --to sparse24")
        if not is_s24:
            raise ValueError(f"{src} has no {CONFIG_NAME}, so sparse24 does not know which layers are 2:4; prune it "
                             "with `sparse24 prune` (or save it with sparse24.save_sparse) first")
        out = write_compressed_tensors(src, args.out, overwrite=args.overwrite)
    print(f"wrote {out} ({args.to})")
    return 0
