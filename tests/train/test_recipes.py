"""Recipes parse (with clear errors), select the right layers, and the CLI teaches its flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sparse24.train.recipe import RecipeError, list_recipes, load_recipe

from sparse24.api import sparse_modules, sparsify
from sparse24.config import MagnitudeConfig, SRSTEConfig, SSTEConfig


def test_shipped_recipes_match_the_spec():
    assert set(list_recipes()) >= {"dense", "srste_decay_ft", "sste", "sste_mvue", "sste_mvue_fp8", "ste"}
    assert load_recipe("dense").sparse_config() is None
    sr = load_recipe("srste_decay_ft")
    assert sr.sparse_config() == SRSTEConfig(transposable=True, mask_refresh=40, decay_placement="grad",
                                             decay=sr.config["decay"])
    assert abs(sr.dense_finetune - 1 / 6) < 1e-6 and sr.layers == "ffn"
    assert load_recipe("sste").sparse_config() == SSTEConfig()
    assert load_recipe("sste_mvue").sparse_config() == SSTEConfig(mvue=True)
    assert load_recipe("sste_mvue_fp8").sparse_config() == SSTEConfig(mvue=True, fp8=True)
    assert load_recipe("ste").sparse_config() == MagnitudeConfig(mask_refresh=1)
    for name in list_recipes():
        r = load_recipe(name)
        assert (r.betas, r.weight_decay, r.clip) == ([0.9, 0.95], 0.1, 1.0)


def test_srste_default_decay_is_the_pick_of_the_committed_sweep():
    # the recipe's λ follows from the λ sweep in benchmarks/results/pretrain_quality.json by its stated rule
    from sparse24.train.sweep import pick_decay

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "pretrain_quality.json"
    sweep = json.loads(results.read_text())["meta"]["sweep"]
    assert len(sweep) >= 3 and any(r["decay"] == 0.0 for r in sweep)
    assert load_recipe("srste_decay_ft").config["decay"] == pick_decay(sweep)[0]


@pytest.mark.parametrize("text, field", [
    ("method: sste\nlernrate: 0.1\n", "lernrate"),
    ("method: sste\nlr: fast\n", "'lr'"),
    ("method: sste\nlayers: attention\n", "'layers'"),
    ("method: srste\nconfig: {decay: -1}\n", "'config'"),
    ("method: sste\nconfig: {mvue: true, bogus: 1}\n", "'config'"),
    ("method: sste\nbetas: [0.9]\n", "'betas'"),
])
def test_bad_recipe_names_field_and_file(tmp_path, text, field):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert field in str(e.value) and str(path) in str(e.value)


def test_unknown_recipe_lists_choices():
    with pytest.raises(ValueError, match="srste_decay_ft"):
        load_recipe("no_such_recipe")


def _sparse_names(model):
    return {n.rsplit(".", 1)[-1] for n, _ in sparse_modules(model)}


def test_layer_selection(tiny_llama):
    ffn = sparsify(tiny_llama(layers=1, hidden=32, vocab=64), load_recipe("sste").sparsify_spec())
    assert _sparse_names(ffn) == {"gate_proj", "up_proj", "down_proj"}
    spec = load_recipe("sste").replace(layers="all").sparsify_spec()
    every = sparsify(tiny_llama(layers=1, hidden=32, vocab=64), spec)
    assert _sparse_names(every) == {"gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj"}


def test_gpt2_ffn_becomes_sparse():
    from sparse24.train.model import build_model

    model = sparsify(build_model("gpt2-tiny", vocab=64, max_len=64), load_recipe("sste").sparsify_spec())
    names = {n for n, _ in sparse_modules(model)}
    assert names == {f"transformer.h.{i}.mlp.{k}" for i in range(2) for k in ("c_fc", "c_proj")}


def test_cli_help_and_list(capsys):
    from sparse24.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--recipe", "--resume", "--ckpt-every", "--data", "--grad-accum", "srste_decay_ft"):
        assert flag in out
    assert main(["train", "--recipe", "list"]) == 0
    assert "sste_mvue_fp8" in capsys.readouterr().out
    assert main(["train", "--recipe", "dense", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
