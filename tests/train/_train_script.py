"""Subprocess entry for the resume and DDP tests: a tiny deterministic run of the real trainer.

usage: python _train_script.py OUT STEPS [--slow-after N] [--dump-masks] [--reference DIR]
(``accelerate launch`` runs the same file on several processes.) ``--reference DIR`` first trains the same run,
uninterrupted, into ``DIR`` (the first run of the process), then OUT's: one process start instead of two.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from sparse24.train.loop import Trainer
from sparse24.train.pretrain import make_trainer
from sparse24.train.recipe import load_recipe

from sparse24.api import sparse_modules

torch.set_num_threads(1)
out, steps = Path(sys.argv[1]), int(sys.argv[2])
slow_after = int(sys.argv[sys.argv.index("--slow-after") + 1]) if "--slow-after" in sys.argv else None
reference = Path(sys.argv[sys.argv.index("--reference") + 1]) if "--reference" in sys.argv else None
# every kind of state at once: transposable masks refreshed every 3 steps, masked decay, MVUE generators, dense switch
recipe = load_recipe("srste_decay_ft").replace(
    lr=3e-3, config={"decay": 0.01, "decay_placement": "grad", "transposable": True, "mask_refresh": 3, "mvue": True})


def make(folder: Path) -> Trainer:
    """The run's trainer, writing into ``folder``."""
    return make_trainer(recipe, model="llama-tiny", data="shipped", tokenizer="byte", steps=steps, batch_size=4,
                        seq_len=32, grad_accum=2, ckpt_every=4, keep_checkpoints=0, out_dir=folder, eval_every=4,
                        eval_batches=1, progress=False)[0]


if reference is not None:
    make(reference).fit(resume="auto")
trainer = make(out)
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
