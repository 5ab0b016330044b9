"""Run llm-compressor 0.14 oneshot 2:4 (inside its own venv) on sparse24's calibration windows; print wall time.

    python llmcompressor_compare.py CALIB.pt {sparsegpt,wanda} OUT_DIR THREADS
"""

import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    calib_path, method, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(threads)
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.obcq import SparseGPTModifier

    blob = torch.load(calib_path)
    ids = blob["ids"]
    model = AutoModelForCausalLM.from_pretrained(blob["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(blob["model"])
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    mod = (SparseGPTModifier if method == "sparsegpt" else WandaPruningModifier)(
        sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=["re:.*lm_head"])
    t0 = time.time()
    oneshot(model=model, dataset=ds, recipe=[mod], max_seq_length=ids.shape[1], num_calibration_samples=ids.shape[0])
    wall = time.time() - t0
    model.save_pretrained(out, save_compressed=False)
    tok.save_pretrained(out)
    print(f"llm-compressor {method}: oneshot wall {wall:.1f}s with {threads} threads")


if __name__ == "__main__":
    main()
