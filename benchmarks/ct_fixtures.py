"""compressed-tensors 0.14.0.1 side of benchmarks/ct_fixtures.sh (runs in ITS venv: compressed-tensors, transformers<5).

  python ct_fixtures.py make OUTDIR            # tiny Llama fixtures written by the library itself + dense references
  python ct_fixtures.py check FOLDER REF.safetensors LABEL
      # the library reads FOLDER (our sparse-24-bitmask export) two ways; each tensor must equal REF bit for bit
      # (pruned zeros compared as +0.0: the format cannot store the sign of a pruned zero)

Each fixture: LlamaConfig (vocab 64, hidden 32, 2 layers), random weights, every Linear but lm_head pruned 2:4 by
magnitude (one row with an all-zero group and a one-non-zero group: the library then flags zeros), compressed with
``ModelCompressor.compress_model`` + ``save_pretrained`` + ``update_config`` (what llm-compressor's save does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FIXTURES = {  # name -> (dtype, max_shard_size or None, sparsity format)
    "llama-bf16": (torch.bfloat16, None, "sparse-24-bitmask"),
    "llama-fp16-sharded": (torch.float16, "12KB", "sparse-24-bitmask"),
    "llama-bf16-dense": (torch.bfloat16, None, "dense"),  # llm-compressor's uncompressed save of a 2:4 model
}


def tiny_llama(dtype: torch.dtype, seed: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                g = mod.weight.reshape(-1, 4)  # [groups, 4]
                keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, g.float().abs().topk(2, dim=1).indices, True)
                mod.weight.copy_(torch.where(keep, g, torch.zeros_like(g)).reshape(mod.weight.shape))
        up = model.model.layers[0].mlp.up_proj.weight  # [64, 32]
        up[0, 0:4] = 0.0  # a group with no non-zero
        up[0, 4:8] = torch.tensor([0.0, 0.0, 0.5, 0.0], dtype=dtype)  # a group with one
    return model.eval()


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(60)} | {"<unk>": 60, "<s>": 61, "</s>": 62, "<pad>": 63}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def make(outdir: Path) -> None:
    import compressed_tensors
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import DenseSparsityConfig, Sparse24BitMaskConfig

    outdir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i, (name, (dtype, shard, fmt)) in enumerate(FIXTURES.items()):
        model = tiny_llama(dtype, seed=i)
        sd = model.state_dict()
        save_file({k: v.contiguous() for k, v in sd.items()}, str(outdir / f"{name}.reference.safetensors"))
        zeros = sum(int((v == 0).sum()) for v in sd.values()) / sum(v.numel() for v in sd.values())
        kind = Sparse24BitMaskConfig if fmt == "sparse-24-bitmask" else DenseSparsityConfig
        config = kind(targets=["Linear"], ignore=["lm_head"], global_sparsity=zeros, sparsity_structure="2:4")
        compressor = ModelCompressor.from_pretrained_model(model, sparsity_config_or_format=config)
        compressor.compress_model(model)
        folder = outdir / name
        model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
        compressor.update_config(str(folder))
        tokenizer().save_pretrained(folder)
        files = sorted(p.name for p in folder.iterdir())
        manifest.append(f"- `{name}`: {dtype}, format {fmt!r}, written by compressed-tensors "
                        f"{compressed_tensors.__version__}; files {files}")
    manifest.append("- `NAME.reference.safetensors`: the dense (pruned) weights each model had before compression")
    (outdir / "MANIFEST.md").write_text("\n".join(manifest) + "\n")


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t + 0 if t.is_floating_point() else t  # -0.0 -> +0.0, everything else unchanged
    return t.contiguous().view(torch.uint8)


def _compare(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], how: str, label: str) -> bool:
    bad = [k for k in ref if k not in got or got[k].dtype != ref[k].dtype or got[k].shape != ref[k].shape
           or not torch.equal(_bits(got[k]), _bits(ref[k]))]
    extra = sorted(set(got) - set(ref))
    ok = not bad and not extra
    print(f"| {label} | {how} | {len(ref)} | {'bit-exact' if ok else f'MISMATCH {bad[:3]} extra {extra[:3]}'} |")
    return ok


def check(folder: Path, ref_path: Path, label: str) -> bool:
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    ref = load_file(str(ref_path))
    dtype = next(v.dtype for k, v in ref.items() if k.endswith("proj.weight"))
    # 1. the library's own disk path: ModelCompressor.from_pretrained + decompress into a model built from config
    compressor = ModelCompressor.from_pretrained(str(folder))
    assert compressor is not None and compressor.sparsity_config.format == "sparse-24-bitmask", compressor
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("quantization_config")
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(dtype)
    compressor.decompress(str(folder), model)
    ok = _compare(model.state_dict(), ref, "ModelCompressor.decompress", label)
    # 2. what a pinned user runs: transformers 4.x from_pretrained -> CompressedTensorsHfQuantizer decompresses
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return _compare(loaded.state_dict(), ref, "transformers.from_pretrained", label) and ok


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    elif sys.argv[1] == "check":
        sys.exit(0 if check(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]) else 1)
    else:
        sys.exit(__doc__)
