"""compressed-tensors ``sparse-24-bitmask``: the committed fixtures were written by compressed-tensors 0.14.0.1
itself (benchmarks/ct_fixtures.sh), with the dense weights it compressed saved next to them as the reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sparse24 import MagnitudeConfig, load_sparse, save_sparse, sparsify
from sparse24.bitmask import decode_bitmask_24, encode_bitmask_24
from sparse24.cli import main
from sparse24.compressed_tensors import (
    compressed_tensors_to_sparse24,
    inspect_compressed_tensors,
    is_compressed_tensors,
    load_compressed_tensors,
    read_compressed_tensors,
    write_compressed_tensors,
)
from sparse24.io import CONFIG_NAME, read_sparse24_config
from sparse24.masks import magnitude_mask_24

FIX = Path(__file__).parent / "fixtures" / "ct"
FIXTURES = ["llama-bf16", "llama-fp16-sharded", "llama-bf16-dense"]  # the last: format "dense" (uncompressed)
BITMASK_FIXTURES = FIXTURES[:2]
UP = "model.layers.0.mlp.up_proj"  # [64, 32]: row 0 has an all-zero group and a one-non-zero group


def _bits(t: torch.Tensor, signed_zeros: bool = True) -> torch.Tensor:
    t = t if signed_zeros or not t.is_floating_point() else t + 0  # + 0 maps -0.0 to +0.0 only
    return t.contiguous().view(torch.uint8)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], signed_zeros: bool = True) -> list[str]:
    """Names whose dtype, shape or raw bits differ (plus names in only one dict)."""
    bad = sorted(set(a) ^ set(b))
    return bad + [k for k in a if k in b and (a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
                                              or not torch.equal(_bits(a[k], signed_zeros), _bits(b[k], signed_zeros)))]


def _folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _random_24(out: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    w = torch.randn(out, cols).to(dtype)
    w = torch.where(magnitude_mask_24(w.float()), w, torch.zeros_like(w))
    w[0, :4] = 0  # a group with no non-zero: the format still stores two (zero) values
    w[-1, -4:] = torch.tensor([0, 0, 0, 1.5]).to(dtype)  # and one with a single non-zero
    return w


@pytest.fixture
def bf16_copy(tmp_path) -> Path:
    dst = tmp_path / "ct"
    shutil.copytree(FIX / "llama-bf16", dst)
    return dst


def _edit_tensors(folder: Path, fn) -> None:
    path = folder / "model.safetensors"
    sd = load_file(str(path))
    fn(sd)
    save_file(sd, str(path), metadata={"format": "pt"})


def _edit_config(folder: Path, fn) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


# ---------------------------------------------------------------- the codec against numpy's packbits


@pytest.mark.parametrize("block", [None, 24], ids=["whole", "row-blocks"])
@pytest.mark.parametrize("cols", [4, 12, 32, 44])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_codec_matches_numpy_packbits(cols, dtype, block, monkeypatch):
    if block:  # code a few rows at a time, as big weights are
        monkeypatch.setattr("sparse24.bitmask._BLOCK", block)
    w = _random_24(int(torch.randint(2, 9, ())), cols, dtype)
    values, bitmask = encode_bitmask_24(w, "w")
    unpacked = np.unpackbits(bitmask.numpy(), axis=-1, count=cols, bitorder="little").astype(bool)  # [out, in]
    assert (unpacked.reshape(w.shape[0], -1, 4).sum(-1) == 2).all()  # exactly two flags per group
    assert (unpacked | (w == 0).numpy()).all()  # every non-zero is flagged
    assert torch.equal(bitmask, torch.from_numpy(np.packbits(unpacked, axis=-1, bitorder="little")))
    assert torch.equal(_bits(values), _bits(w[torch.from_numpy(unpacked)].reshape(w.shape[0], cols // 2)))
    assert torch.equal(_bits(decode_bitmask_24(values, bitmask, [w.shape[0], cols], "w"), False), _bits(w, False))


def test_encode_refuses_non_24(monkeypatch):
    monkeypatch.setattr("sparse24.bitmask._BLOCK", 16)  # one row per block: the error still counts whole-tensor rows
    w = _random_24(4, 16, torch.bfloat16)
    w[2, 4:8] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError, match=r"layer\.w is not 2:4: row 2, group 1"):
        encode_bitmask_24(w, "layer.w")


def test_decode_rejects_set_padding_bits():
    w = _random_24(3, 12, torch.float16)  # 12 columns -> 2 bytes, 4 padding bits
    values, bitmask = encode_bitmask_24(w, "w")
    bitmask[1, 1] |= 0x80
    with pytest.raises(ValueError, match="w.bitmask sets padding bits"):
        decode_bitmask_24(values, bitmask, [3, 12], "w")


# ---------------------------------------------------------------- import of the library's own fixtures


@pytest.mark.parametrize("name", FIXTURES)
def test_import_fixture_bit_exact(name, tmp_path):
    ref = load_file(str(FIX / f"{name}.reference.safetensors"))
    assert is_compressed_tensors(FIX / name)
    got = {}
    for _, shard in read_compressed_tensors(FIX / name):
        assert not set(got) & set(shard)
        got.update(shard)
    assert _same(got, ref) == []  # raw bits, signed zeros included
    out = compressed_tensors_to_sparse24(FIX / name, tmp_path / "s24")
    assert _same(_folder_tensors(out), ref) == []
    assert (out / "model.safetensors.index.json").exists() == ("sharded" in name)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and "compression_config" not in cfg
    assert not is_compressed_tensors(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).read_bytes() == (FIX / name / f).read_bytes()
    record = read_sparse24_config(out)
    sparse = sorted(k[: -len(".weight")] for k in ref if k.endswith("proj.weight"))
    assert record["modules"] == sparse and len(sparse) == 14


def test_reads_one_shard_at_a_time(monkeypatch):
    """Shards are read lazily, in order; a module split across two shards is decoded when its last part arrives."""
    import sparse24.compressed_tensors as ct

    index = json.loads((FIX / "llama-fp16-sharded" / "model.safetensors.index.json").read_text())["weight_map"]
    assert index[f"{UP}.compressed"] != index[f"{UP}.bitmask"]  # the fixture really splits a module across shards
    reads = []
    real = ct.read_shard
    monkeypatch.setattr(ct, "read_shard", lambda path, keys: reads.append(Path(path).name) or real(path, keys))
    gen = read_compressed_tensors(FIX / "llama-fp16-sharded")
    seen = {}
    for i, (fname, shard) in enumerate(gen):
        assert reads == sorted(set(index.values()))[: i + 1] and fname == reads[-1]
        seen.update(dict.fromkeys(shard, fname))
    assert seen[f"{UP}.weight"] == max(index[f"{UP}.compressed"], index[f"{UP}.bitmask"])


def test_imported_folder_loads_sparse_and_plain(tmp_path):
    from transformers import AutoModelForCausalLM

    from sparse24.linear import SparseLinear

    ref = load_file(str(FIX / "llama-fp16-sharded.reference.safetensors"))
    out = compressed_tensors_to_sparse24(FIX / "llama-fp16-sharded", tmp_path / "s24")
    plain = AutoModelForCausalLM.from_pretrained(out)  # current transformers: no quantizer involved
    assert _same(plain.state_dict(), ref) == []
    model = load_sparse(out)
    direct = load_compressed_tensors(FIX / "llama-fp16-sharded")
    for m in (model, direct):
        mods = {n: mod for n, mod in m.named_modules() if isinstance(mod, SparseLinear)}
        assert len(mods) == 14
        assert torch.equal(_bits(mods[UP].sparse_weight(), False), _bits(ref[f"{UP}.weight"], False))
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, direct(input_ids=ids).logits)


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_export_reimport_equals_ours(tiny_llama, tmp_path, dtype):
    model = sparsify(tiny_llama(layers=2, hidden=32, seed=int(torch.randint(0, 1000, ()))).to(dtype), MagnitudeConfig())
    s24 = save_sparse(model, tmp_path / "s24")
    ours = _folder_tensors(s24)
    ct = write_compressed_tensors(model, tmp_path / "ct")  # from the live model
    ct2 = write_compressed_tensors(s24, tmp_path / "ct2")  # and from the folder: same bytes
    assert _same(_folder_tensors(ct), _folder_tensors(ct2)) == []
    assert is_compressed_tensors(ct) and not any(k.endswith("proj.weight") for k in _folder_tensors(ct))
    back = compressed_tensors_to_sparse24(ct, tmp_path / "back")
    assert _same(_folder_tensors(back), ours, signed_zeros=False) == []  # the format drops the sign of pruned zeros
    assert read_sparse24_config(back)["modules"] == read_sparse24_config(s24)["modules"]


@pytest.mark.parametrize("name", BITMASK_FIXTURES)
def test_export_matches_what_the_library_wrote(name, tmp_path):
    """Our export of an imported fixture has the library's tensor names, dtypes, shapes and config."""
    s24 = compressed_tensors_to_sparse24(FIX / name, tmp_path / "s24")
    ct = write_compressed_tensors(s24, tmp_path / "ct")
    lib, ours = _folder_tensors(FIX / name), _folder_tensors(ct)
    assert {k: (v.dtype, v.shape) for k, v in ours.items()} == {k: (v.dtype, v.shape) for k, v in lib.items()}
    for k in lib:  # bitmasks agree except where a group has < 2 non-zeros (which zero gets flagged is arbitrary)
        if not k.startswith(UP):
            assert torch.equal(_bits(ours[k]), _bits(lib[k])), k
    qc_lib = json.loads((FIX / name / "config.json").read_text())["quantization_config"]
    qc_ours = json.loads((ct / "config.json").read_text())["quantization_config"]
    assert qc_ours["sparsity_config"].pop("global_sparsity") == pytest.approx(
        qc_lib["sparsity_config"].pop("global_sparsity"), abs=0.02)
    assert qc_ours == qc_lib


def test_export_refuses_a_weight_that_is_not_24(tiny_llama, tmp_path):
    s24 = save_sparse(sparsify(tiny_llama(layers=1, hidden=32), MagnitudeConfig()), tmp_path / "s24")
    sd = load_file(str(s24 / "model.safetensors"))
    sd["model.layers.0.mlp.down_proj.weight"][3, 8:12] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    save_file(sd, str(s24 / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.down_proj.weight is not 2:4: row 3, group 2"):
        write_compressed_tensors(s24, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


# ---------------------------------------------------------------- damaged and unsupported checkpoints


def test_corrupt_bitmask_named(bf16_copy, tmp_path):
    def flip(sd):  # toggle one bit of row 5: 15 or 17 flags where the row stores 16 values
        sd[f"{UP}.bitmask"][5, 0] ^= 1

    _edit_tensors(bf16_copy, flip)
    with pytest.raises(ValueError, match=rf"{UP}\.bitmask flags (15|17) positions in row 5 .*re-download"):
        compressed_tensors_to_sparse24(bf16_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half-written


@pytest.mark.parametrize("block", [None, 64], ids=["whole", "row-blocks"])
def test_non_24_group_named(bf16_copy, tmp_path, block, monkeypatch):
    if block:
        monkeypatch.setattr("sparse24.bitmask._BLOCK", block)
    def move(sd):  # row 7: move one flag from group 0 to group 1 (row total unchanged, groups keep 1 and 3)
        bits = np.unpackbits(sd[f"{UP}.bitmask"].numpy(), axis=-1, bitorder="little")  # [64, 32]
        g0, g1 = bits[7, 0:4], bits[7, 4:8]  # views into bits
        g0[np.flatnonzero(g0)[0]] = 0
        g1[np.flatnonzero(g1 == 0)[0]] = 1
        sd[f"{UP}.bitmask"] = torch.from_numpy(np.packbits(bits, axis=-1, bitorder="little"))

    _edit_tensors(bf16_copy, move)
    with pytest.raises(ValueError, match=rf"{UP} is not 2:4: row 7, group 0 \(columns 0..3\) keeps 1 of 4"):
        list(read_compressed_tensors(bf16_copy))


def test_wrong_shape_named(bf16_copy):
    _edit_config(bf16_copy, lambda c: c.update(intermediate_size=128))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.(down|gate|up)_proj.compressed has shape .* config.json"):
        inspect_compressed_tensors(bf16_copy)


def test_wrong_shape_tensor_named(bf16_copy):
    _edit_tensors(bf16_copy, lambda sd: sd.__setitem__(f"{UP}.shape", torch.tensor([[64], [36]])))
    with pytest.raises(ValueError, match=rf"{UP}.compressed has shape \(64, 16\) but {UP}.shape \[64, 36\]"):
        list(read_compressed_tensors(bf16_copy))


@pytest.mark.parametrize("key", [f"{UP}.bitmask", "model.layers.1.post_attention_layernorm.weight"])
def test_missing_tensor_named(bf16_copy, key):
    _edit_tensors(bf16_copy, lambda sd: sd.pop(key))
    with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')} is missing.*re-download"):
        inspect_compressed_tensors(bf16_copy)


def test_missing_shard_named(tmp_path):
    dst = shutil.copytree(FIX / "llama-fp16-sharded", tmp_path / "ct")
    (dst / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors is listed .* re-download"):
        inspect_compressed_tensors(dst)


def test_quantized_checkpoint_refused_by_name(bf16_copy, tmp_path):
    fp8 = {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
           "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}}
    _edit_config(bf16_copy, lambda c: c["quantization_config"].update(
        config_groups={"group_0": fp8}, format="float-quantized", quantization_status="compressed"))
    with pytest.raises(ValueError, match=r"quantized compressed-tensors checkpoint .*W8floatA8float channel.*never "
                                         r"half-reads"):
        compressed_tensors_to_sparse24(bf16_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt, words", [("marlin-24", "Marlin"), ("sparse-bitmask", "unstructured"),
                                        ("my.module:Evil", "no other format")])
def test_other_formats_refused_by_name(bf16_copy, fmt, words):
    _edit_config(bf16_copy, lambda c: c["quantization_config"]["sparsity_config"].update(format=fmt))
    with pytest.raises(ValueError, match=rf"sparsity format '{fmt}' is not imported.*{words}"):
        inspect_compressed_tensors(bf16_copy)


def test_detection_is_for_24_checkpoints_only(bf16_copy, capsys, tmp_path):
    """Quantized 2:4 is detected (and refused with its reason); quantization-only and unstructured are not ours."""
    assert not is_compressed_tensors(tmp_path) and not is_compressed_tensors(FIX / "llama-bf16" / "missing")
    _edit_config(bf16_copy, lambda c: c["quantization_config"].update(config_groups={"group_0": {"weights": {}}}))
    assert is_compressed_tensors(bf16_copy)
    _edit_config(bf16_copy, lambda c: c["quantization_config"].update(sparsity_config={}))  # FP8-only, say
    assert not is_compressed_tensors(bf16_copy)
    assert main(["convert", str(bf16_copy), "--out", str(tmp_path / "o")]) == 2
    assert "quantized compressed-tensors checkpoint" in capsys.readouterr().err
    _edit_config(bf16_copy, lambda c: c["quantization_config"].update(
        config_groups={}, sparsity_config={"format": "sparse-bitmask", "sparsity_structure": "unstructured"}))
    assert not is_compressed_tensors(bf16_copy)
    assert main(["convert", str(bf16_copy), "--out", str(tmp_path / "o")]) == 2
    assert "unstructured" in capsys.readouterr().err


def test_pickle_only_folder_refused(bf16_copy):
    (bf16_copy / "model.safetensors").rename(bf16_copy / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        inspect_compressed_tensors(bf16_copy)


def test_never_overwrites_without_asking(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        compressed_tensors_to_sparse24(FIX / "llama-bf16", out)
    assert (out / "mine.txt").read_text() == "keep"
    compressed_tensors_to_sparse24(FIX / "llama-bf16", out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / CONFIG_NAME).exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_compressed_tensors(load_sparse(out), out)
    assert not list(tmp_path.glob(".ct-export-*"))


# ---------------------------------------------------------------- the command line


def test_cli_convert_both_ways(tmp_path, capsys):
    ref = load_file(str(FIX / "llama-fp16-sharded.reference.safetensors"))
    s24, ct = tmp_path / "s24", tmp_path / "ct"
    assert main(["convert", str(FIX / "llama-fp16-sharded"), "--out", str(s24)]) == 0
    assert _same(_folder_tensors(s24), ref) == []
    assert main(["convert", str(s24), "--to", "compressed-tensors", "--out", str(ct)]) == 0
    assert main(["convert", str(ct), "--out", str(tmp_path / "again")]) == 0
    assert _same(_folder_tensors(tmp_path / "again"), ref, signed_zeros=False) == []
    capsys.readouterr()
    assert main(["convert", str(s24), "--out", str(tmp_path / "x")]) == 2  # already sparse24
    assert "--to compressed-tensors" in capsys.readouterr().err
    assert main(["convert", str(FIX / "llama-bf16"), "--out", str(s24)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err


def test_cli_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("sparse-24-bitmask", "quantization_config", "compressed-tensors<=0.14.0.1", "--overwrite",
                 "examples:"):
        assert word in out


# ---------------------------------------------------------------- format "dense" (2:4 saved uncompressed)


@pytest.fixture
def dense_copy(tmp_path) -> Path:
    return shutil.copytree(FIX / "llama-bf16-dense", tmp_path / "dense")


def test_dense_format_targets_follow_compressed_tensors_matching(dense_copy):
    _edit_config(dense_copy, lambda c: c["quantization_config"]["sparsity_config"].update(
        targets=["re:.*mlp\\.", "model.layers.1.self_attn.q_proj"], ignore=["re:.*down_proj$"]))
    mods = inspect_compressed_tensors(dense_copy).modules
    assert mods == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.gate_proj",
                    "model.layers.1.mlp.up_proj", "model.layers.1.self_attn.q_proj"]


def test_dense_format_refuses_a_target_that_is_not_24(dense_copy, tmp_path):
    _edit_tensors(dense_copy, lambda sd: sd["model.layers.1.mlp.gate_proj.weight"][9].fill_(0.25))
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.gate_proj.weight is not 2:4: row 9, group 0"):
        compressed_tensors_to_sparse24(dense_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, words", [({"sparsity_structure": "unstructured"}, "not 2:4 sparse"),
                                         ({"targets": None}, "no targets"),
                                         ({"targets": ["lm_head"], "ignore": ["lm_head"]}, "select no nn.Linear")])
def test_dense_format_config_errors(dense_copy, edit, words):
    _edit_config(dense_copy, lambda c: c["quantization_config"]["sparsity_config"].update(edit))
    with pytest.raises(ValueError, match=words):
        inspect_compressed_tensors(dense_copy)


def test_prune_format_compressed_tensors_writes_a_folder_that_imports_back_exactly(tmp_path):
    """`sparse24 prune --format compressed-tensors`: the bitmask folder decodes to the weights the sparse24 writer
    saves for the same run (same pruner, same calibration), and `sparse24.load` reads it through the registry."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "prune"))
    from prune_fixtures import make_model_dir

    import sparse24
    from sparse24.cli import main

    model = make_model_dir(tmp_path / "m")
    argv = ["prune", "--model", str(model), "--method", "sparsegpt", "--calib", str(model / "calib.txt"),
            "--nsamples", "4", "--seqlen", "32", "--batch-size", "4", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "s24")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ct"), "--format", "compressed-tensors"]) == 0
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert config["quantization_config"]["sparsity_config"]["format"] == "sparse-24-bitmask"
    ours, _, _ = sparse24.load(tmp_path / "s24")
    back, _, info = sparse24.load(tmp_path / "ct")
    assert info["loader"] == "compressed-tensors"
    want, got = ours.state_dict(), back.state_dict()
    for key, t in want.items():
        if key.endswith(".weight"):
            assert torch.equal(got[key], t), key
