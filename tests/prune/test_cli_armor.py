"""``sparse24 prune --method armor`` end to end on a tiny Llama: the saved cores are 2:4, the saved dense equivalent is
``blockdiag(A)·core·blockdiag(B)`` (exactly the one-shot layer where ARMOR could not improve it), ``sparse24 eval``
reproduces a hand-computed perplexity of the in-memory model, and a killed run resumes to bit-identical files."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from prune_fixtures import make_model_dir
from safetensors.torch import load_file
from sparse24.prune import cli as prune_cli

from sparse24.cli import main
from sparse24.compress import unpack_24_disk


def _args(model_dir, out, *extra: str) -> prune_cli.PruneJob:
    return prune_cli.parse_job(["--model", str(model_dir), "--method", "armor", "--calib", str(model_dir / "calib.txt"),
                         "--nsamples", "4", "--seqlen", "32", "--batch-size", "4", "--block-size", "auto",
                         "--armor-iters", "3", "--armor-lr", "1e-3", "--out", str(out), "--no-progress", *extra])


class Killed(Exception):
    pass


def _kill_after_first(i: int) -> None:
    if i == 0:
        raise Killed


def _hand_ppl(model, ids: torch.Tensor, seqlen: int, windows: int) -> float:
    """exp(mean NLL) over the first ``windows`` non-overlapping windows, float64 log-softmax."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0)  # [1, T]
            logp = F.log_softmax(model(input_ids=x).logits.double(), -1)[0, :-1]  # [T-1, V]
            nll -= float(logp.gather(1, x[0, 1:, None]).sum())
            count += seqlen - 1
    return math.exp(nll / count)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One full run, one run killed after layer 0 and resumed (module-scoped: ARMOR is the slow part)."""
    tmp = tmp_path_factory.mktemp("armor_cli")
    model_dir = make_model_dir(tmp / "m", layers=2)
    full = _args(model_dir, tmp / "full").prune()
    with pytest.raises(Killed):
        _args(model_dir, tmp / "cut").prune(on_layer_done=_kill_after_first)
    assert sorted(p.name for p in (tmp / "cut.partial").glob("layer_*")) == ["layer_00000.safetensors"]
    resumed: list[int] = []
    _args(model_dir, tmp / "cut").prune(on_layer_done=resumed.append)
    assert resumed == [1] and not (tmp / "cut.partial").exists()
    return {"tmp": tmp, "model_dir": model_dir, "full": full}


def test_armor_cores_are_24_and_dense_equivalent_matches(runs):
    out = runs["tmp"] / "full"
    record = json.loads((out / "sparse24_config.json").read_text())
    layers = record["extra"]["armor"]["layers"]
    assert record["method"] == "armor" and len(layers) == 14 and record["extra"]["check_24"] == "14/14"
    raw, dense = load_file(str(out / "armor.safetensors")), load_file(str(out / "model.safetensors"))
    orig = load_file(str(runs["model_dir"] / "model.safetensors"))
    rows = {r["name"]: r for r in record["extra"]["report"]}
    assert sum(rows[f]["armor_err"] < rows[f]["armor_err_init"] for f in layers) >= 7  # ARMOR changed most layers
    for fqn, spec in layers.items():
        core = unpack_24_disk(raw[f"{fqn}.core.values"], raw[f"{fqn}.core.meta"], fqn).double()  # [out, in]
        assert list(core.shape) == spec["shape"]
        assert ((core.reshape(-1, 4) != 0).sum(-1) == 2).all(), fqn  # exactly 2 of every 4 kept
        a = torch.block_diag(*raw[f"{fqn}.a_blocks"].double())  # [out, out]
        b = torch.block_diag(*raw[f"{fqn}.b_blocks"].double())  # [in, in]
        w_eff, w = dense[f"{fqn}.weight"].double(), orig[f"{fqn}.weight"].double()
        torch.testing.assert_close(w_eff, a @ core @ b, rtol=1e-4, atol=1e-5)
        assert (w_eff - w).norm() < 0.8 * w.norm()  # an approximation of W, not something unrelated
        assert rows[fqn]["armor_err"] <= rows[fqn]["armor_err_init"], fqn  # never worse than its start
        if rows[fqn]["armor_err"] < rows[fqn]["armor_err_init"]:
            assert (w_eff != 0).float().mean() > 0.9  # W_eff is dense: the 2:4 structure lives in the core only
        else:  # ARMOR kept its start: exactly the one-shot layer, A' = B' = I
            assert torch.equal(a, torch.eye(a.shape[0], dtype=a.dtype)) and torch.equal(w_eff, core), fqn


def test_armor_eval_cli_matches_in_memory_model(runs, capsys):
    from sparse24.prune.armor_linear import ArmorLinear

    from sparse24.loaders import load
    from sparse24.texts import read_text, tokenize_text

    tmp, model_dir, res = runs["tmp"], runs["model_dir"], runs["full"]
    calib = model_dir / "calib.txt"
    ids = tokenize_text(res.tokenizer, read_text(calib))
    expected = _hand_ppl(res.model, ids, 64, 3)
    out_json = tmp / "ppl.json"
    assert main(["eval", str(tmp / "full"), "--ppl", str(calib), "--seqlen", "64", "--max-windows", "3",
                 "--out", str(out_json), "--no-progress"]) == 0
    got = json.loads(out_json.read_text())
    assert got["info"]["method"] == "armor"
    assert math.isclose(next(iter(got["perplexity"].values()))["ppl"], expected, rel_tol=1e-5)
    loaded, _, _ = load(str(tmp / "full"))
    assert sum(isinstance(m, ArmorLinear) for m in loaded.modules()) == 14
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert not math.isclose(_hand_ppl(dense, ids, 64, 3), expected, rel_tol=1e-3)  # pruning changed the model


def test_armor_resume_is_bit_identical(runs):
    tmp = runs["tmp"]
    for name in ("armor.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp / "full" / name)), load_file(str(tmp / "cut" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_prune_refuses_to_replace_a_users_folder(runs):
    target = runs["tmp"] / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        _args(runs["model_dir"], target).prune()
    assert (target / "notes.txt").read_text() == "keep me" and not (target.with_name("mine.partial")).exists()


def test_output_tokenizer_is_the_sources_verbatim(runs):
    """The job copies the tokenizer files (it never loads a tokenizer at its memory peak): the same bytes, and the
    result's lazily loaded tokenizer encodes like the source's."""
    from transformers import AutoTokenizer

    from sparse24.fileio import TOKENIZER_COMPANIONS, TOKENIZER_FILES

    src, out = runs["model_dir"], runs["full"].out
    names = [n for n in TOKENIZER_FILES + TOKENIZER_COMPANIONS if (src / n).is_file()]
    assert "tokenizer.json" in names
    for n in names:
        assert (out / n).read_bytes() == (src / n).read_bytes(), n
    text = (src / "calib.txt").read_text()[:2000]
    assert runs["full"].tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(src)(text)["input_ids"]
