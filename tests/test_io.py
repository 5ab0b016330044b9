"""Checkpoints: round trips are bit-exact; bad files and unsafe writes fail with clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from sparse24 import SRSTEConfig, SSTEConfig, load_sparse, pack_24_disk, save_sparse, sparsify, unpack_24_disk
from sparse24.io import COMPRESSED_NAME, CONFIG_NAME, read_sparse24_config
from sparse24.masks import magnitude_mask_24


@pytest.fixture
def sparse_model(tiny_llama):
    model = tiny_llama(layers=2, hidden=32)
    sparsify(model, SSTEConfig())
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("compressed", [False, True], ids=["dense", "compressed"])
def test_round_trip_bit_exact(sparse_model, tmp_path, compressed):
    save_sparse(sparse_model, tmp_path / "ck", compressed=compressed)
    loaded = load_sparse(tmp_path / "ck")
    a, b = dict(sparse_model.named_modules()), dict(loaded.named_modules())
    for name, m in a.items():
        if hasattr(m, "sparse_weight"):
            assert torch.equal(m.sparse_weight(), b[name].sparse_weight()), name
    ids = torch.randint(0, 256, (1, 16))
    assert torch.equal(_logits(sparse_model, ids), _logits(loaded, ids))


def test_plain_transformers_loads_dense_with_zeros(sparse_model, tmp_path):
    from transformers import AutoModelForCausalLM

    save_sparse(sparse_model, tmp_path / "ck")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    w = plain.model.layers[0].mlp.up_proj.weight
    assert ((w.reshape(-1, 4) != 0).sum(-1) <= 2).all()
    ids = torch.randint(0, 256, (1, 16))
    torch.testing.assert_close(_logits(sparse_model, ids), _logits(plain, ids), rtol=1e-5, atol=1e-5)
    rec = json.loads((tmp_path / "ck" / CONFIG_NAME).read_text())
    assert rec["method"] == "sste" and len(rec["modules"]) == 14 and rec["format_version"] == 2


def test_refuses_to_overwrite(sparse_model, tmp_path):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_sparse(sparse_model, out)
    assert (out / "mine.txt").read_text() == "keep me"
    save_sparse(sparse_model, out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / CONFIG_NAME).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_unknown_version_and_missing_checkpoint(sparse_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a sparse24 checkpoint"):
        load_sparse(tmp_path / "nothing")
    save_sparse(sparse_model, tmp_path / "ck")
    path = tmp_path / "ck" / CONFIG_NAME
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "format_version": 7}))
    with pytest.raises(ValueError, match="newer than this sparse24"):
        read_sparse24_config(tmp_path / "ck")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        read_sparse24_config(tmp_path / "ck")


@pytest.mark.parametrize("damage", ["shape", "meta-values", "truncated", "missing-meta"])
def test_corrupt_compressed_file_errors(sparse_model, tmp_path, damage):
    save_sparse(sparse_model, tmp_path / "ck", compressed=True)
    f = tmp_path / "ck" / COMPRESSED_NAME
    key = "model.layers.0.mlp.up_proj.weight"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
    else:
        from safetensors import safe_open

        with safe_open(str(f), "pt") as h:
            meta = h.metadata()
        t = load_file(str(f))
        if damage == "shape":
            t[key + ".values"] = t[key + ".values"][:, :-2].contiguous()
        elif damage == "meta-values":
            t[key + ".meta"] = t[key + ".meta"].clone().fill_(15)
        else:
            del t[key + ".meta"]
        save_file(t, str(f), metadata=meta)
    with pytest.raises(ValueError, match="corrupt"):
        load_sparse(tmp_path / "ck")


def test_compress_refuses_non_24_with_name_and_group():
    w = torch.randn(8, 16) * magnitude_mask_24(torch.randn(8, 16))
    w[5, 9] = w[5, 8] = w[5, 10] = 1.0  # 3 non-zeros in row 5, group 2
    with pytest.raises(ValueError, match=r"layer.w is not 2:4: row 5, group 2"):
        pack_24_disk(w, "layer.w")
    with pytest.raises(TypeError, match="floating"):
        pack_24_disk(torch.zeros(4, 8, dtype=torch.int32))


def test_save_requires_sparse_modules(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="sparsify"):
        save_sparse(tiny_llama(layers=1, hidden=32), tmp_path / "x")


def test_srste_checkpoint_holds_masked_weights(tiny_llama, tmp_path):
    model = tiny_llama(layers=1, hidden=32)
    sparsify(model, SRSTEConfig())
    save_sparse(model, tmp_path / "ck", compressed=True)
    sd = load_file(str(tmp_path / "ck" / "model.safetensors"))
    m = model.model.layers[0].mlp.down_proj
    assert torch.equal(sd["model.layers.0.mlp.down_proj.weight"], m.weight.detach() * m.mask)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=0, max_size=2), groups=st.integers(1, 8),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
       seed=st.integers(0, 2**31 - 1), zeros=st.booleans())
def test_property_compress_round_trip(shape, groups, dtype, seed, zeros):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, 4 * groups, generator=g).to(dtype)
    if zeros:  # groups with fewer than 2 non-zeros, and -0.0
        w = w * (torch.rand(w.shape, generator=g) > 0.5)
    w = w * magnitude_mask_24(w)
    values, meta = pack_24_disk(w)
    assert values.shape == (*shape, 2 * groups) and meta.shape == (*shape, groups) and meta.dtype == torch.uint8
    back = unpack_24_disk(values, meta)
    assert back.dtype == w.dtype and torch.equal(back, w)
