"""``sparse24 prune`` the way careless and hostile users run it (issue 14 points 1, 6, 8, 10-12; issue 11): every case
goes through the command line (``sparse24.cli.main``) on tiny Llamas built from configs, and checks that nothing the
user had is lost and that every error names the culprit and the fix."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prune_fixtures import make_model_dir
from safetensors.torch import load_file, save_file

from sparse24.cli import main


class Killed(BaseException):
    """Stands in for kill -9 (not an Exception, so nothing on the way catches it)."""


def _argv(model: Path, out: Path, *extra: str, method: str = "sparsegpt") -> list[str]:
    return ["prune", "--model", str(model), "--method", method, "--calib", str(model / "calib.txt"), "--nsamples", "4",
            "--seqlen", "32", "--batch-size", "4", "--out", str(out), "--no-progress", *extra]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _kill_after_layer(monkeypatch, layer: int) -> None:
    """Make the run die right after layer ``layer`` is saved (as a kill -9 there would)."""
    from sparse24.prune.resume import WorkState

    save = WorkState.save_acts

    def dying(self, next_layer, hidden, dense=None):
        save(self, next_layer, hidden, dense)
        if next_layer == layer + 1:
            raise Killed

    monkeypatch.setattr(WorkState, "save_acts", dying)


def _partial_run(model, out, monkeypatch) -> None:
    """A default prune of ``model`` into ``out`` killed after its first layer: ``<out>.partial`` holds layer 0."""
    _kill_after_layer(monkeypatch, 0)
    with pytest.raises(Killed):
        main(_argv(model, out))
    monkeypatch.undo()


@pytest.fixture
def model(tmp_path) -> Path:
    return make_model_dir(tmp_path / "m", layers=2)


# ---- 14.1: --out may never be, contain or sit inside --model -------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_out_never_touches_the_source_even_with_overwrite(tmp_path, capsys, where):
    parent = tmp_path / "models"
    src = make_model_dir(parent / "llama", layers=2)
    (parent / "sibling.txt").write_text("another user's file")
    before, sibling = _digest(src), (parent / "sibling.txt").read_text()
    out = {"same": src, "parent": parent, "inside": src / "pruned"}[where]
    assert main(_argv(src, out, "--overwrite", method="magnitude")) == 2
    err = capsys.readouterr().err
    assert "input" in err and "outside" in err
    assert _digest(src) == before and (parent / "sibling.txt").read_text() == sibling
    assert not (parent.parent / "models.partial").exists() and not (src / "pruned").exists()


# ---- 14.6: resume fingerprints the source by content -----------------------------------------------------------------
def test_resume_refuses_a_different_source_of_the_same_size(model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    _partial_run(model, out, monkeypatch)
    other = make_model_dir(tmp_path / "other", layers=2, seed=1)  # same architecture, other weights
    size = (model / "model.safetensors").stat().st_size
    assert (other / "model.safetensors").stat().st_size == size
    (model / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    capsys.readouterr()
    assert main(_argv(model, out)) == 2
    err = capsys.readouterr().err
    assert "model_files.model.safetensors:" in err and "--overwrite" in err
    assert not out.exists() and (tmp_path / "o.partial" / "layer_00000.safetensors").is_file()


# ---- 14.8: failures leave nothing that blocks the corrected rerun ---------------------------------------------------
def test_failure_before_the_first_layer_leaves_no_partial(model, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_argv(model, out, "--block-size", "128", "--armor-iters", "2", method="armor")) == 2  # 64 % 128
    err = capsys.readouterr().err
    assert "--block-size" in err and "auto" in err
    assert not (tmp_path / "o.partial").exists() and not out.exists()
    assert main(_argv(model, out, "--block-size", "auto", "--armor-iters", "2", method="armor")) == 0  # not blocked
    assert json.loads((out / "sparse24_config.json").read_text())["extra"]["check_24"] == "14/14"


def test_partial_run_with_other_arguments_names_each_difference(model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    _partial_run(model, out, monkeypatch)
    partial = _digest(tmp_path / "o.partial")
    capsys.readouterr()
    assert main([*_argv(model, out), "--seed", "3", "--percdamp", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "seed: 0 (partial run) vs 3 (now)" in err and "settings.percdamp: 0.01 (partial run) vs 0.05" in err
    assert "--overwrite" in err
    assert _digest(tmp_path / "o.partial") == partial  # refused without touching anything
    assert main(_argv(model, out)) == 0 and not (tmp_path / "o.partial").exists()  # same arguments: resumes


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_folder_of_a_killed_save_is_cleaned(model, tmp_path, capsys):
    out = tmp_path / "o"
    stale = tmp_path / f".o.tmp-{_dead_pid()}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a model")
    assert main(_argv(model, out, method="magnitude")) == 0
    assert not stale.exists() and f"removed {stale}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()


# ---- 14.11: NaN/Inf name the module and the culprit ------------------------------------------------------------------
def _plant(model: Path, key: str, value: float, where: slice = slice(0, 3)) -> None:
    path = model / "model.safetensors"
    sd = load_file(str(path))
    sd[key] = sd[key].clone()
    sd[key].view(-1)[where] = value
    save_file(sd, str(path), metadata={"format": "pt"})


def test_nan_weights_are_blamed_on_the_checkpoint(model, tmp_path, capsys):
    _plant(model, "model.layers.1.mlp.up_proj.weight", float("nan"))
    assert main(_argv(model, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "model.layers.1.mlp.up_proj.weight" in err and "weights contain 3 NaN/Inf" in err
    assert not (tmp_path / "o").exists()


def test_overflowing_activations_are_not_blamed_on_weights_or_hessian(model, tmp_path, capsys):
    _plant(model, "model.layers.0.input_layernorm.weight", 1e30, slice(None))  # finite, but x·xᵀ overflows
    assert main(_argv(model, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "model.layers.0.self_attn.q_proj" in err and "activations are at fault" in err
    assert "positive definite" not in err and "--nsamples" not in err  # not the Hessian, not "more samples"


# ---- 14.10 / 14.12: counts refused by name, warnings ----------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--nsamples", "-3"), ("--seqlen", "0"),
                                        ("--eval-windows", "-1"), ("--armor-iters", "-2"), ("--threads", "-1")])
def test_bad_counts_are_refused_by_name(model, tmp_path, capsys, flag, value):
    assert main([*_argv(model, tmp_path / "o"), flag, value]) == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_warns_on_seqlen_beyond_positions_and_on_a_reused_short_text(model, tmp_path, capsys):
    argv = _argv(model, tmp_path / "o", method="wanda")
    argv[argv.index("--nsamples") + 1], argv[argv.index("--seqlen") + 1] = "1", "520"  # tiny Llama: 512 positions
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "--seqlen 520 exceeds the model's max_position_embeddings (512)" in err and "read every token" not in err
    short = tmp_path / "short.txt"
    short.write_text((model / "calib.txt").read_text()[:1000])  # a few hundred tokens, read ~5 times over
    argv = [*_argv(model, tmp_path / "o2", method="wanda"), "--calib", str(short), "--nsamples", "60"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "read every token about" in err and "max_position" not in err


# ---- issue 11: --quick only fills what was not given; the command says what it did -----------------------------------
def test_quick_keeps_the_values_the_user_gave(model, tmp_path):
    out = tmp_path / "q"
    assert main(_argv(model, out, "--quick", "--nsamples", "128", method="wanda")) == 0
    cal = json.loads((out / "sparse24_config.json").read_text())["extra"]["calibration"]
    assert (cal["nsamples"], cal["seqlen"]) == (128, 32)  # 128 is also the non-quick default: still kept
    from sparse24.prune.cli import parse_job

    job = parse_job(["--quick", "--method", "armor"])
    assert (job.calib.nsamples, job.calib.seqlen, job.eval.windows, job.output.out) == (32, 512, 32,
                                                                                        Path("out/quick-armor"))
    from sparse24.prune.armor import ArmorArgs

    assert job.method_args.iters < ArmorArgs().iters and job.method_args.block_size == "auto"
    assert parse_job(["--quick", "--method", "armor", "--armor-iters", "8"]).method_args.iters == 8


def test_prints_every_file_it_wrote_and_the_expected_time(model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = _argv(model, out, "--compressed", "--eval", "--eval-text", str(model / "calib.txt"), "--eval-windows", "2",
                 method="wanda")
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("should take about" in line for line in lines)
    head = lines.index(f"wrote {out.resolve()}/:")
    listed = {line.split()[0] for line in lines[head + 1:] if line.startswith("  ")}
    assert listed == {p.name for p in out.iterdir()} - {"quick_eval.json"}  # every file of the checkpoint
    assert f"wrote {(out / 'quick_eval.json').resolve()}" in lines
    rows = json.loads((out / "quick_eval.json").read_text())
    assert set(rows) == {"dense", "wanda"} and rows["dense"]["windows"] == 2


def test_method_ast_points_to_retrain_and_unknown_format_is_refused(model, tmp_path, capsys):
    assert main(_argv(model, tmp_path / "o", method="ast")) == 2
    assert "sparse24 retrain" in capsys.readouterr().err
    assert main([*_argv(model, tmp_path / "o"), "--format", "nope"]) == 2
    assert "--format 'nope'" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_format_registry_hands_the_writer_the_whole_job(model, tmp_path):
    from sparse24.prune import formats

    seen = {}

    @formats.register_writer("probe", "test writer")
    def probe(job: formats.WriteJob) -> list[str]:
        seen.update(method=job.pruner.name, out=job.out, record=job.record)
        job.out.mkdir()
        (job.out / "probe.txt").write_text("x")
        return ["probe wrote it"]

    try:
        assert main(_argv(model, tmp_path / "o", "--format", "probe", method="magnitude")) == 0
    finally:
        formats.WRITERS.pop("probe")
    assert seen["method"] == "magnitude" and seen["record"]["check_24"] == "14/14"
    assert (tmp_path / "o" / "probe.txt").is_file() and (tmp_path / "o" / "tokenizer.json").is_file()


def test_a_format_the_method_cannot_fill_is_refused_before_work(model, tmp_path, capsys):
    from sparse24.prune import formats

    formats.register_writer("plain-24", "test writer")(lambda job: [])
    try:
        assert main(_argv(model, tmp_path / "o", "--format", "plain-24", method="armor")) == 2
    finally:
        formats.WRITERS.pop("plain-24")
    assert "--method armor cannot be written as --format plain-24" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_saved_method_is_the_real_method(model, tmp_path):
    import inspect

    from sparse24.io import save_sparse

    out = tmp_path / "o"
    assert main(_argv(model, out)) == 0
    record = json.loads((out / "sparse24_config.json").read_text())
    assert record["extra"]["method"] == "sparsegpt"
    if "method" not in inspect.signature(save_sparse).parameters:
        pytest.skip("the top-level method needs save_sparse(method=) from the checkpoint branch")
    assert record["method"] == "sparsegpt"


def test_armor_quick_defaults_fit_smollm2_shapes(tmp_path):
    """SmolLM2-135M's attention shapes (hidden 576, k/v 192; its MLP is cut to 576 for speed): the paper's block 128
    divides neither, --quick's defaults must fit (auto: 96, as on the real model). One iteration: the block size is
    what failed; --quick's iteration count is checked in test_quick_keeps_the_values_the_user_gave."""
    from prune_fixtures import _calib_text, make_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=576, num_hidden_layers=1,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    src = tmp_path / "smol"
    LlamaForCausalLM(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    (src / "calib.txt").write_text(_calib_text())
    out = tmp_path / "o"
    argv = ["prune", "--model", str(src), "--method", "armor", "--quick", "--calib", str(src / "calib.txt"),
            "--nsamples", "2", "--seqlen", "16", "--armor-iters", "1", "--armor-init", "sparsegpt", "--out", str(out),
            "--no-progress"]  # the init is not what this checks; sparsegpt is the fast one
    assert main(argv) == 0
    record = json.loads((out / "sparse24_config.json").read_text())["extra"]
    assert record["check_24"] == "7/7" and record["settings"]["block_size"] == "auto"
    assert {spec["block_size"] for spec in record["armor"]["layers"].values()} == {96}
