"""The default checkpoint written from the plain HF model (no SparseLinear modules at the job's peak) is the one the
assembled-model path writes: the same tensors bit for bit, module configs, integrity record and compressed file."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from sparse24.prune import cli as prune_cli
from sparse24.prune.base import Pruner


def _job(model_dir, out, *extra: str) -> prune_cli.PruneJob:
    return prune_cli.parse_job(["--model", str(model_dir), "--method", "sparsegpt", "--calib",
                                str(model_dir / "calib.txt"), "--nsamples", "4", "--seqlen", "32", "--batch-size", "4",
                                "--out", str(out), "--no-progress", *extra])


def _record(folder):
    rec = json.loads((folder / "sparse24_config.json").read_text())
    rec["extra"].pop("prune_seconds")
    rec["integrity"].pop("files")  # fingerprints include file metadata the tensors are compared for directly
    return rec


def test_plain_export_writes_what_the_assembled_model_writes(tiny_model_dir, tmp_path, monkeypatch):
    extra = ["--compressed"]  # both weight files: the HF one (dense with zeros) and the packed 2:4 one
    plain = _job(tiny_model_dir, tmp_path / "plain", *extra).prune()
    assert plain.assembled is None  # nothing was assembled by the job
    monkeypatch.setattr(Pruner, "plain_export", property(lambda self: False))
    ref = _job(tiny_model_dir, tmp_path / "ref", *extra).prune()
    assert ref.assembled is not None
    assert (plain.ok, plain.total) == (ref.ok, ref.total) and plain.ok == plain.total > 0
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == names
    for name in names:
        if name.endswith(".safetensors"):
            a, b = load_file(tmp_path / "plain" / name), load_file(tmp_path / "ref" / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
            assert all(not ((t == 0) & t.signbit()).any() for t in a.values() if t.is_floating_point())  # +0 only
        elif name != "sparse24_config.json":
            assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert _record(tmp_path / "plain") == _record(tmp_path / "ref")
    # the lazily loaded model is the assembled one: same weights and masks in every 2:4 module
    from sparse24.api import sparse_modules

    got, want = dict(sparse_modules(plain.model)), dict(sparse_modules(ref.model))
    assert got.keys() == want.keys() and len(got) == plain.total
    for n in got:
        assert torch.equal(got[n].weight, want[n].weight) and torch.equal(got[n].mask, want[n].mask), n
