"""Subprocess entry for the FSDP2 tests: every shipped recipe (and transposable SR-STE with MVUE) for a few steps in
one process group, checkpointing every 2 steps; per run the main process dumps the whole (gathered) state, the
telemetry rows and the exported HF folder; every rank dumps its mask buffers.

usage: python _fsdp_recipes.py OUT GRAD_ACCUM [--only NAME] [--slow-after N] [--cut DIR]
(``accelerate launch --config_file train/accelerate/fsdp2.yaml`` runs the same file on two processes.)
``--cut DIR`` first continues the killed MVUE run in ``DIR`` (``resume="auto"``, as the first run of the process),
then trains OUT's runs: one launch instead of two.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from sparse24.train.distributed import full_state_dict, mvue_stream_seed
from sparse24.train.export import save_final
from sparse24.train.pretrain import make_trainer, whole_model
from sparse24.train.recipe import list_recipes, load_recipe

from sparse24.api import sparse_modules

STEPS = 4
MVUE_RUN = "srste_mvue"  # every kind of state at once: transposable masks, masked decay, MVUE, dense switch


def recipe_for(name: str):
    if name == MVUE_RUN:
        return load_recipe("srste_decay_ft").replace(name=MVUE_RUN, config={
            "decay": 0.01, "decay_placement": "grad", "transposable": True, "mask_refresh": 1, "mvue": True})
    recipe = load_recipe(name)
    if recipe.method == "dense":
        return recipe
    # masks every step, but every 2nd step for SR-STE (steps without a refresh must still renew packed-W̃ caches)
    over = {"mask_refresh": 2 if name == "srste_decay_ft" else 1} if "mask_refresh" in recipe.config else {}
    return recipe.replace(lr=3e-3, config={**recipe.config, **over})


def main() -> None:
    torch.set_num_threads(1)
    out, ga = Path(sys.argv[1]), int(sys.argv[2])
    names = [sys.argv[sys.argv.index("--only") + 1]] if "--only" in sys.argv else [*list_recipes(), MVUE_RUN]
    slow_after = int(sys.argv[sys.argv.index("--slow-after") + 1]) if "--slow-after" in sys.argv else None
    cut = [(MVUE_RUN, Path(sys.argv[sys.argv.index("--cut") + 1]) / MVUE_RUN)] if "--cut" in sys.argv else []
    for name, run in [*cut, *((name, out / name) for name in names)]:
        trainer, tokens = make_trainer(recipe_for(name), model="llama-tiny", data="shipped", tokenizer="byte",
                                       steps=STEPS, batch_size=2, seq_len=32, grad_accum=ga, eval_batches=1,
                                       ckpt_every=2, keep_checkpoints=0, out_dir=run, progress=False)
        if slow_after is not None:  # time for the test to kill us mid-run; touches no number
            trainer.after_step.append(lambda tr: (print(f"step={tr.step}", flush=True), time.sleep(1.0))
                                      if tr.step >= slow_after else None)
        if trainer.accelerator.is_main_process:
            run.mkdir(parents=True, exist_ok=True)
        keys: list = []  # (step, the versions a packed-W̃ cache is keyed on) at every training forward
        for fqn, m in sparse_modules(trainer.unwrapped):
            m.register_forward_pre_hook(lambda mod, args, fqn=fqn: keys.append(
                (trainer.step, fqn, bool(mod.dense_mode), mod.weight._version, mod.mask._version)) if mod.training
                else None)
        trainer.accelerator.wait_for_everyone()
        trainer.fit(resume="auto")
        full = full_state_dict(trainer.unwrapped, keep=trainer.accelerator.is_main_process)  # collective
        plain = whole_model(trainer)  # collective
        rank = trainer.accelerator.process_index
        masks = {n: m.mask.clone() for n, m in sparse_modules(trainer.unwrapped)}
        if masks:
            save_file(masks, run / f"masks-rank{rank}.safetensors")
            streams = {n: mvue_stream_seed(m) for n, m in sparse_modules(trainer.unwrapped)}
            (run / f"streams-rank{rank}.json").write_text(json.dumps(streams))
        if trainer.accelerator.is_main_process:
            save_file({k: v.detach().contiguous().cpu() for k, v in full.items() if v.is_floating_point()},
                      run / "state.safetensors")
            save_final(plain, run / "final", {"recipe": name}, tokens.tokenizer)
            (run / "cache-keys.json").write_text(json.dumps(keys))
            (run / "world.json").write_text(json.dumps({"world": trainer.accelerator.num_processes,
                                                        "type": str(trainer.accelerator.distributed_type)}))


if __name__ == "__main__":
    main()
