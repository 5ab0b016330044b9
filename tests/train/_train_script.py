"""Subprocess entry for the resume and DDP tests: a tiny deterministic run of the real trainer.

usage: python _train_script.py OUT STEPS [--slow-after N] [--dump-masks]
(``accelerate launch`` runs the same file on several processes.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from sparse24.train.pretrain import make_trainer
from sparse24.train.recipe import load_recipe

from sparse24.api import sparse_modules

torch.set_num_threads(1)
out, steps = Path(sys.argv[1]), int(sys.argv[2])
slow_after = int(sys.argv[sys.argv.index("--slow-after") + 1]) if "--slow-after" in sys.argv else None
# every kind of state at once: transposable masks refreshed every 3 steps, masked decay, MVUE generators, dense switch
recipe = load_recipe("srste_decay_ft").replace(
    lr=3e-3, config={"decay": 0.01, "decay_placement": "grad", "transposable": True, "mask_refresh": 3, "mvue": True})
trainer, _ = make_trainer(recipe, model="llama-tiny", data="shipped", tokenizer="byte", steps=steps, batch_size=4,
                          seq_len=32, grad_accum=2, ckpt_every=4, keep_checkpoints=0, out_dir=out, eval_every=4,
                          eval_batches=1, progress=False)
if slow_after is not None:  # give the test time to kill us mid-run; does not touch any numbers
    trainer.after_step.append(lambda tr: time.sleep(0.5) if tr.step >= slow_after else None)
first: list[int] = []


def _first_step(tr) -> None:
    if not first:
        first.append(tr.step)
        print(f"first_step={tr.step}", flush=True)


trainer.after_step.append(_first_step)
trainer.fit(resume="auto")
if "--dump-masks" in sys.argv:
    rank = trainer.accelerator.process_index
    save_file({n: m.mask.clone() for n, m in sparse_modules(trainer.unwrapped)}, out / f"masks-rank{rank}.safetensors")
    save_file({n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()},
              out / f"params-rank{rank}.safetensors")
