"""``sparse24.load``: one loader for every checkpoint kind, dispatched by the recorded loader; clear refusals."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparse24 import MagnitudeConfig, SparseLinear, SSTEConfig, load, load_sparse, save_sparse, sparse_modules, sparsify
from sparse24.io import CONFIG_NAME, InferenceExportWarning
from sparse24.loaders import detect_format, register_loader
from sparse24.masks import magnitude_mask_24
from sparse24.runtime import set_module


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _tiny_text(tmp_path):
    """A small text file for `sparse24 eval --ppl` (the failures under test happen before it is scored)."""
    path = tmp_path / "text.txt"
    path.write_text("A short text to score. " * 50, encoding="utf-8")
    return path


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from sparse24.texts import shipped_text

    words = sorted(set(shipped_text().split()))[:250]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<unk>")


def test_prune_cli_records_the_method_that_produced_the_weights(tiny_llama, tmp_path):
    """Issue 11: a SparseGPT run's checkpoint said "magnitude"."""
    from sparse24.cli import main
    from sparse24.io import read_sparse24_config
    from sparse24.texts import shipped_text

    src = tmp_path / "m"
    tiny_llama(layers=1, hidden=32).save_pretrained(src)
    _tokenizer().save_pretrained(src)
    (tmp_path / "calib.txt").write_text(shipped_text()[:4000])
    out = tmp_path / "out"
    assert main(["prune", "--model", str(src), "--method", "sparsegpt", "--calib", str(tmp_path / "calib.txt"),
                 "--nsamples", "2", "--seqlen", "16", "--out", str(out), "--no-progress"]) == 0
    assert read_sparse24_config(out)["method"] == "sparsegpt"
    model, tok, info = load(out)
    assert info["method"] == "sparsegpt" and tok is not None and len(list(sparse_modules(model))) == 7


def _armor_model(tiny_llama):
    from sparse24.prune.armor_linear import ArmorLinear

    model = tiny_llama(layers=1, hidden=32).eval()
    for fqn in ("model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"):
        lin = model.get_submodule(fqn)
        mod = ArmorLinear(lin.in_features, lin.out_features, 4, bias=False, backend="dense")
        with torch.no_grad():
            mod.a_blocks.add_(0.1 * torch.randn_like(mod.a_blocks))
            mod.b_blocks.add_(0.1 * torch.randn_like(mod.b_blocks))
            w = torch.randn_like(mod.core)
            mod.core.copy_(w * magnitude_mask_24(w))
        set_module(model, fqn, mod)
    return model


def _slorb_model(tiny_llama):
    from sparse24.prune.slorb import add_slorb, slorb_modules

    model = sparsify(tiny_llama(layers=1, hidden=32), MagnitudeConfig()).eval()
    add_slorb(model, group_size=4)
    with torch.no_grad():
        for _, m in slorb_modules(model):
            m.S.add_(torch.randn_like(m.S))
    return model


def test_load_dispatches_every_kind_and_load_sparse_refuses_foreign_ones(tiny_llama, tmp_path):
    from sparse24.prune.armor_linear import ArmorLinear, save_armor
    from sparse24.prune.slorb import SLoRBLinear, save_slorb_model

    ids = torch.randint(0, 256, (2, 10))
    armor, slorb = _armor_model(tiny_llama), _slorb_model(tiny_llama)
    plain = tiny_llama(layers=1, hidden=32, seed=3).eval()
    sparse = sparsify(tiny_llama(layers=1, hidden=32), SSTEConfig()).eval()
    save_armor(armor, tmp_path / "armor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceExportWarning)
        save_slorb_model(slorb, tmp_path / "slorb", compressed=True)
        save_sparse(sparse, tmp_path / "sparse", compressed=True)
    plain.save_pretrained(tmp_path / "plain")
    cases = {"armor": (armor, ArmorLinear), "slorb": (slorb, SLoRBLinear), "sparse24": (sparse, SparseLinear),
             "hf": (plain, None)}
    folders = {"armor": "armor", "slorb": "slorb", "sparse24": "sparse", "hf": "plain"}
    for name, (ref, cls) in cases.items():
        model, tok, info = load(tmp_path / folders[name], backend="dense")
        assert info["loader"] == name and info["sparse24"] == (name != "hf") and tok is None
        if cls is not None:
            assert any(isinstance(m, cls) for m in model.modules()), name
        assert torch.equal(_logits(model, ids), _logits(ref, ids)), name
    for name in ("armor", "slorb"):
        with pytest.raises(ValueError, match=rf"'{name}' checkpoint.*sparse24\.load\(folder\)"):
            load_sparse(tmp_path / folders[name])
    assert detect_format(tmp_path / "plain") == ("hf", None)


def test_armor_integrity_is_verified(tiny_llama, tmp_path):
    from sparse24.prune.armor_linear import ARMOR_FILE, save_armor

    from sparse24.integrity import IntegrityError

    save_armor(_armor_model(tiny_llama), tmp_path / "a")
    f = tmp_path / "a" / ARMOR_FILE
    t = load_file(str(f))
    key = "model.layers.0.mlp.down_proj.a_blocks"
    t[key] = t[key] * 1.001
    save_file(t, str(f), metadata={"format": "sparse24-armor"})
    with pytest.raises(IntegrityError, match=key):
        load(tmp_path / "a")


def test_register_loader_hook_claims_foreign_folders(tiny_llama, tmp_path, monkeypatch):
    import sparse24.loaders as loaders

    monkeypatch.setattr(loaders, "_LOADERS", dict(loaders._LOADERS))
    plain = tiny_llama(layers=1, hidden=32)
    plain.save_pretrained(tmp_path / "ct")
    (tmp_path / "ct" / "marker.json").write_text("{}")
    calls = []

    def load_fn(folder, *, backend, device, dtype):
        calls.append((folder, backend))
        return plain

    register_loader("foreign", lambda folder: (folder / "marker.json").is_file(), load_fn)
    model, _, info = load(tmp_path / "ct", backend="dense")
    assert model is plain and info["loader"] == "foreign" and calls == [(tmp_path / "ct", "dense")]


def test_tokenizer_recorded_as_hub_id_is_refused_without_download(tiny_llama, tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    from sparse24.cli import main

    def no_network(*a, **k):
        raise AssertionError("tried to load a tokenizer")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_network)
    model = sparsify(tiny_llama(layers=1, hidden=32), MagnitudeConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceExportWarning)
        save_sparse(model, tmp_path / "ck", extra={"model_dir": "HuggingFaceTB/SmolLM2-135M"})
    with pytest.raises(FileNotFoundError, match="hub id.*never downloads"):
        load(tmp_path / "ck")
    assert main(["eval", str(tmp_path / "ck"), "--ppl", str(_tiny_text(tmp_path)), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "never download" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["config-list", "garbage-config-json", "truncated-weights", "pickle-only"])
def test_eval_cli_broken_folders_exit_with_a_message(tiny_llama, tmp_path, capsys, case):
    from sparse24.cli import main

    folder = tmp_path / "ck"
    if case == "pickle-only":
        tiny_llama(layers=1, hidden=32).config.save_pretrained(folder)
        torch.save({}, folder / "pytorch_model.bin")
        want = "pickled weights are never loaded"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InferenceExportWarning)
            save_sparse(sparsify(tiny_llama(layers=1, hidden=32), MagnitudeConfig()), folder)
        if case == "config-list":
            (folder / CONFIG_NAME).write_text(json.dumps([1, 2]))
            want = "holds a JSON list"
        elif case == "garbage-config-json":
            (folder / "config.json").write_bytes(b"\x00garbage")
            want = "config.json"
        else:
            (folder / CONFIG_NAME).unlink()  # a plain HF folder with a truncated weights file
            w = folder / "model.safetensors"
            w.write_bytes(w.read_bytes()[:-64])
            want = "model.safetensors: the weights are truncated or corrupt"
    _tokenizer().save_pretrained(folder)  # the folder is complete but for the damage
    assert main(["eval", str(folder), "--ppl", str(_tiny_text(tmp_path)), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err
