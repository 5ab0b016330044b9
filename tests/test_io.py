"""Checkpoints: round trips are bit-exact; bad files and unsafe writes fail with clear errors."""

from __future__ import annotations

import dataclasses
import json
import random
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from sparse24 import (
    MagnitudeConfig,
    SRSTEConfig,
    SSTEConfig,
    load_sparse,
    pack_24_disk,
    save_sparse,
    set_dense_finetune,
    sparse_modules,
    sparsify,
    unpack_24_disk,
    update_masks,
)
from sparse24.config import SparseConfig
from sparse24.integrity import IntegrityError
from sparse24.io import COMPRESSED_NAME, CONFIG_NAME, InferenceExportWarning, read_sparse24_config
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


# ---- format 2: per-module configs, producing method, integrity (issues 12.1, 11, 14.5, 14.10, 14.12) -------------
def _save(model, folder, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceExportWarning)
        return save_sparse(model, folder, **kw)


def _rewrite_compressed(f, edit):
    """Apply ``edit(tensors, metadata)`` to a compressed file in place (what a bit flip or a hostile edit does)."""
    from safetensors import safe_open

    with safe_open(str(f), "pt") as h:
        meta = dict(h.metadata())
    t = load_file(str(f))
    edit(t, meta)
    save_file(t, str(f), metadata=meta)


def test_mixed_configs_recorded_per_module_and_rebuilt(tiny_llama, tmp_path):
    model = tiny_llama(layers=2, hidden=32)
    spec = {"*.mlp.*": SRSTEConfig(decay=1e-4, transposable=False), "*.self_attn.q_proj": SSTEConfig(mvue=True),
            "*.self_attn.*": MagnitudeConfig(mask_refresh=3)}
    sparsify(model, spec)
    want = {n: m.config for n, m in sparse_modules(model)}
    assert len({type(c) for c in want.values()}) == 3
    _save(model, tmp_path / "ck", compressed=True)
    rec = read_sparse24_config(tmp_path / "ck")
    assert rec["method"] == "mixed" and rec["loader"] == "sparse24"
    assert {n: SparseConfig.from_dict(d) for n, d in rec["module_configs"].items()} == want
    loaded = load_sparse(tmp_path / "ck", backend="dense")
    got = {n: m.config for n, m in sparse_modules(loaded)}
    assert got == {n: dataclasses.replace(c, backend="dense") for n, c in want.items()}
    ids = torch.randint(0, 256, (2, 12))
    assert torch.equal(_logits(model.eval(), ids), _logits(loaded, ids))


def test_method_recorded_top_level(sparse_model, tmp_path):
    _save(sparse_model, tmp_path / "a", method="sparsegpt", extra={"method": "ignored-when-given"})
    _save(sparse_model, tmp_path / "b", extra={"method": "wanda", "nsamples": 4})  # the pruning protocol's record
    _save(sparse_model, tmp_path / "c")
    assert [read_sparse24_config(tmp_path / x)["method"] for x in "abc"] == ["sparsegpt", "wanda", "sste"]


def test_stale_compressed_file_after_plain_save_pretrained_is_refused(tiny_llama, tmp_path):
    """Before format 2 the compressed file of the first model won over the second model's weights, silently."""
    first = sparsify(tiny_llama(layers=1, hidden=32, seed=1), MagnitudeConfig())
    _save(first, tmp_path / "ck", compressed=True)
    second = tiny_llama(layers=1, hidden=32, seed=2)
    second.save_pretrained(tmp_path / "ck")  # a plain HF save into the same folder
    for prefer in (True, False):
        with pytest.raises(IntegrityError, match=r"model\.safetensors changed after"):
            load_sparse(tmp_path / "ck", prefer_compressed=prefer)


def test_non_24_weights_are_never_re_pruned(sparse_model, tmp_path):
    set_dense_finetune(sparse_model, True)  # dense fine-tune mode: the weights are not 2:4
    with pytest.raises(ValueError, match="dense fine-tune mode"):
        _save(sparse_model, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    set_dense_finetune(sparse_model, False)
    _save(sparse_model, tmp_path / "ck")
    # an old (format 1, no integrity record) folder whose weights were replaced by dense ones
    path = tmp_path / "ck" / CONFIG_NAME
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in rec.items() if k not in ("loader", "module_configs", "integrity")}
                               | {"format_version": 1, "config": SSTEConfig().to_dict()}))
    sd = load_file(str(tmp_path / "ck" / "model.safetensors"))
    key = "model.layers.1.mlp.down_proj.weight"
    sd[key] = torch.randn_like(sd[key])
    save_file(sd, str(tmp_path / "ck" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.weight is not 2:4.*dense model"):
        load_sparse(tmp_path / "ck")


@pytest.mark.parametrize("damage", ["transposed", "alias", "tensor-swap"])
def test_compressed_edits_that_decode_cleanly_are_refused(sparse_model, tmp_path, damage):
    _save(sparse_model, tmp_path / "ck", compressed=True)
    key = "model.layers.0.self_attn.q_proj.weight"  # square: a flipped transposed flag keeps the shape

    def edit(t, meta):
        if damage == "transposed":
            sparse = json.loads(meta["sparse"])
            sparse[key]["transposed"] = True
            meta["sparse"] = json.dumps(sparse)
        elif damage == "alias":
            meta["aliases"] = json.dumps({key: "model.layers.0.self_attn.o_proj.weight"})
        else:
            other = "model.layers.0.self_attn.o_proj.weight"
            for s in (".values", ".meta"):
                t[key + s], t[other + s] = t[other + s], t[key + s]

    _rewrite_compressed(tmp_path / "ck" / COMPRESSED_NAME, edit)
    with pytest.raises(IntegrityError, match=r"tensor model\.layers\.0\.self_attn\.(q|o)_proj\.weight"):
        load_sparse(tmp_path / "ck")


def test_every_metadata_bit_flip_is_refused(sparse_model, tmp_path):
    """About a quarter of single-bit flips of a metadata byte give another valid index pair; all must be refused."""
    from sparse24.compress import VALID_META
    from sparse24.io import build_sparse_model

    _save(sparse_model, tmp_path / "ck", compressed=True)
    f = tmp_path / "ck" / COMPRESSED_NAME
    clean = f.read_bytes()
    record = read_sparse24_config(tmp_path / "ck")
    t = load_file(str(f))
    metas = [k for k in t if k.endswith(".meta")]
    for _ in range(6):
        key = random.choice(metas)
        flat = t[key].reshape(-1)
        i = random.randrange(flat.numel())
        bit = random.randrange(8)

        def edit(tt, meta, key=key, i=i, bit=bit):
            m = tt[key].reshape(-1).clone()
            m[i] ^= 1 << bit
            tt[key] = m.reshape(tt[key].shape)

        _rewrite_compressed(f, edit)
        with pytest.raises(ValueError, match=rf"corrupt|{key[: -len('.meta')]}"):
            build_sparse_model(tmp_path / "ck", record)
        f.write_bytes(clean)
    # the flips that decode to another valid pair are the ones only the content hash catches: make one for sure
    key = metas[0]
    m0 = int(t[key].reshape(-1)[0])
    bit = next(b for b in range(8) if m0 ^ (1 << b) in VALID_META)
    _rewrite_compressed(f, lambda tt, meta: tt[key].reshape(-1).__setitem__(0, m0 ^ (1 << bit)))
    with pytest.raises(IntegrityError, match=rf"tensor {key[: -len('.meta')]} does not match"):
        load_sparse(tmp_path / "ck")


@pytest.mark.parametrize("case", ["list", "missing-keys", "not-utf8", "bad-module-config", "garbage-config-json",
                                  "truncated-weights"])
def test_broken_files_give_messages_naming_file_and_fix(sparse_model, tmp_path, case):
    _save(sparse_model, tmp_path / "ck")
    cfg = tmp_path / "ck" / CONFIG_NAME
    rec = json.loads(cfg.read_text())
    if case == "list":
        cfg.write_text(json.dumps([rec]))
        want = r"sparse24_config\.json holds a JSON list.*delete sparse24_config\.json"
    elif case == "missing-keys":
        cfg.write_text(json.dumps({k: v for k, v in rec.items() if k not in ("modules", "integrity")}))
        want = r"sparse24_config\.json lacks the keys \['modules', 'integrity'\]"
    elif case == "not-utf8":
        cfg.write_bytes(b"\xff\xfe" + cfg.read_bytes()[:20])
        want = r"sparse24_config\.json is not UTF-8"
    elif case == "bad-module-config":
        rec["module_configs"]["model.layers.0.mlp.up_proj"]["method"] = "nope"
        cfg.write_text(json.dumps(rec))
        want = r"sparse24_config\.json: module model\.layers\.0\.mlp\.up_proj: unknown sparse24 method"
    elif case == "garbage-config-json":
        (tmp_path / "ck" / "config.json").write_text("{garbage")
        want = r"config\.json is not a valid transformers config.*copy config\.json"
    else:
        w = tmp_path / "ck" / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        want = r"model\.safetensors is truncated or corrupt"
    with pytest.raises((ValueError, FileNotFoundError), match=want):
        load_sparse(tmp_path / "ck")
    if case == "truncated-weights":
        from sparse24.io import read_hf_weights

        with pytest.raises(ValueError, match=r"model\.safetensors is truncated or corrupt"):
            read_hf_weights(tmp_path / "ck")


def test_unknown_module_names_in_checkpoint_warn(sparse_model, tmp_path, caplog):
    _save(sparse_model, tmp_path / "ck")
    cfg = tmp_path / "ck" / CONFIG_NAME
    rec = json.loads(cfg.read_text())
    ghost = "model.layers.7.mlp.up_proj"
    rec["modules"].append(ghost)
    rec["module_configs"][ghost] = SSTEConfig().to_dict()
    cfg.write_text(json.dumps(rec))
    loaded = load_sparse(tmp_path / "ck")
    assert ghost in caplog.text and "does not have" in caplog.text
    assert len(list(sparse_modules(loaded))) == 14


def test_format_1_folders_still_load(sparse_model, tmp_path, caplog):
    _save(sparse_model, tmp_path / "ck", compressed=True)
    path = tmp_path / "ck" / CONFIG_NAME
    rec = json.loads(path.read_text())
    old = {k: v for k, v in rec.items() if k not in ("loader", "module_configs", "integrity", "kind")}
    path.write_text(json.dumps({**old, "format_version": 1, "method": "sste", "config": SSTEConfig().to_dict()}))
    ids = torch.randint(0, 256, (1, 16))
    assert torch.equal(_logits(load_sparse(tmp_path / "ck"), ids), _logits(sparse_model, ids))
    assert "without an integrity record" in caplog.text


def test_inference_export_warns_only_when_training_state_is_dropped(tiny_llama, tmp_path):
    pruned = sparsify(tiny_llama(layers=1, hidden=32), MagnitudeConfig())
    with torch.no_grad():  # a one-shot pruned model: the dense weight already carries the zeros
        for _, m in sparse_modules(pruned):
            m.weight.mul_(m.mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InferenceExportWarning)
        save_sparse(pruned, tmp_path / "a")
    trained = sparsify(tiny_llama(layers=1, hidden=32), SRSTEConfig())
    update_masks(trained)  # one optimizer step happened: latent weights and the step counter exist
    with pytest.warns(InferenceExportWarning, match="inference export.*sparse24 train --resume"):
        save_sparse(trained, tmp_path / "b")
    assert "inference export" in read_sparse24_config(tmp_path / "b")["kind"]


def test_export_weight_is_the_masked_weight_and_copies_only_when_needed():
    """effective_state_dict's weight equals W * mask with +0 zeros bit for bit; a weight that already is exactly that
    (a pruned model's) is written as the parameter itself, without a copy."""
    import torch

    from sparse24.api import sparse_modules, sparsify
    from sparse24.config import MagnitudeConfig
    from sparse24.io import effective_state_dict

    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(16, 8))
    sparsify(model, {"_default": MagnitudeConfig()})
    (_, clean), (_, dirty) = sparse_modules(model)
    with torch.no_grad():
        for mod in (clean, dirty):
            mod.weight.copy_(torch.randn(8, 16, generator=g))
        clean.weight.mul_(clean.mask).add_(0.0)  # +0 where pruned
        dirty.weight.mul_(dirty.mask)  # -0.0 where a negative weight was pruned
    sd, _ = effective_state_dict(model)
    for key, mod in (("0.weight", clean), ("1.weight", dirty)):
        ref = mod.weight.detach().double() * mod.mask + 0.0
        assert torch.equal(sd[key].double(), ref) and not bool(sd[key].signbit()[sd[key] == 0].any())
    assert sd["0.weight"].data_ptr() == clean.weight.data_ptr()  # no copy
    assert sd["1.weight"].data_ptr() != dirty.weight.data_ptr()
    assert bool(dirty.weight.signbit()[dirty.weight == 0].any())  # the model itself is untouched
