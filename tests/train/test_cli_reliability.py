"""``sparse24 train`` as careless and hostile users run it: nothing a user had is lost, nothing silently wrong, no
pickle, and every refusal names the file or setting and the fix."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from sparse24.train.telemetry import read_jsonl

from sparse24.cli import main

RUN4 = ["--steps", "4", "--ckpt-every", "2", "--keep", "0"]
TINY = ["--model", "llama-tiny", "--data", "shipped", "--tokenizer", "byte", "--batch-size", "2", "--seq-len", "16",
        "--eval-batches", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE24_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def _finished(tmp_path_factory):
    """One finished 4-step run with checkpoints at steps 2 and 4 (trained once, copied by each test)."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSE24_CACHE", str(root / "cache"))
        assert _train(root / "run", *RUN4) == 0
    return root / "run"


@pytest.fixture
def finished(_finished, tmp_path):
    shutil.copytree(_finished, tmp_path / "run")
    return tmp_path / "run"


def _train(out: Path, *extra: str) -> int:
    return main(["train", "--recipe", "sste", "--out", str(out), *TINY, *extra])


def _digest(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder`` (to prove nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class _Plant:
    """Unpickling this creates ``marker``: what a planted checkpoint would do if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_pickle_checkpoint_never_runs(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    (out / "step-000004").mkdir(parents=True)
    (out / "step-000004" / "trainer_state.pt").write_bytes(pickle.dumps({"step": _Plant(marker)}))
    assert _train(out, "--steps", "6") == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "trainer_state.pt" in err and "pickle" in err and "--overwrite" in err


def test_checkpoints_hold_no_pickle(finished):
    files = {p.name for p in (finished / "step-000002").iterdir()}
    assert files == {"model.safetensors", "trainer_state.safetensors", "trainer_state.json", "run.json"}
    sources = Path(__file__).parents[2]
    for folder in ("train", "benchmarks"):
        for f in (sources / folder).rglob("*.py"):
            text = f.read_text()
            assert "import pickle" not in text and "weights_only=False" not in text, f
            loads = re.findall(r"torch\.load\(([^\n]*)", text)
            assert all("weights_only=True" in args for args in loads), f  # tensors only, no code on load


def test_resume_no_over_finished_run_refuses_then_overwrite(finished, capsys):
    out = finished
    before = _digest(out)
    assert _train(out, *RUN4, "--resume", "no") == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "final" in err and "metrics.jsonl" in err
    assert _digest(out) == before  # final/ and metrics.jsonl untouched
    for p in out.glob("step-*"):  # a finished run without checkpoints: auto must not retrain it silently either
        shutil.rmtree(p)
    before = _digest(out)
    assert _train(out, *RUN4) == 2
    assert "finished run" in capsys.readouterr().err and _digest(out) == before
    assert _train(out, "--steps", "3", "--ckpt-every", "0", "--resume", "no", "--overwrite") == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    printed = capsys.readouterr().out  # the run ends by saying where its results are
    assert "step 3: train loss" in printed and "validation loss" in printed
    assert f"metrics (one JSON row per step): {out / 'metrics.jsonl'}" in printed
    assert f"python -m sparse24.train.plot {out}" in printed and "s/step on this machine" not in printed


@pytest.mark.parametrize("change, named", [
    (["--lr", "0.01"], ["--lr", "recipe.lr"]),
    (["--seed", "1", "--batch-size", "3"], ["--seed", "--batch-size"]),
    (["--seq-len", "24"], ["--seq-len"]),
    (["--recipe", "ste"], ["recipe.method", "recipe.name"]),
    (["--model", "gpt2-tiny"], ["model"]),
])
def test_resume_auto_refuses_other_settings_before_writing(finished, capsys, change, named):
    out = finished
    for p in ("final", "step-000004"):  # the run looks interrupted after step 2
        shutil.rmtree(out / p)
    before = _digest(out)
    capsys.readouterr()
    assert _train(out, *RUN4, *change) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in named), err
    assert "other settings" in err and "--overwrite" in err
    assert _digest(out) == before  # run.json, metrics and checkpoints untouched


def test_corrupt_newest_checkpoint_falls_back_bit_identically(finished, capsys):
    out = finished
    want = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_jsonl(out / "metrics.jsonl")]
    shutil.rmtree(out / "final")
    weights = out / "step-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a torn write on a full disk
    capsys.readouterr()
    assert _train(out, *RUN4) == 0
    err = capsys.readouterr().err
    assert "step-000004" in err and "falling back to step-000002" in err
    got = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_jsonl(out / "metrics.jsonl")]
    assert [r["step"] for r in got] == [1, 2, 3, 4] and got == want  # steps 3-4 retrained from step 2: same numbers
    assert (out / "final" / "sparse24_train.json").is_file()


def test_eta_is_printed_after_the_first_steps(tmp_path, capsys):
    assert _train(tmp_path / "run", "--steps", "6", "--ckpt-every", "0") == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "s/step on this machine" in x]
    assert len(line) == 1 and "remaining 2 steps" in line[0]


@pytest.mark.parametrize("text, message", [
    ("method: sste\nconfig: {fp8: 'no'}\n", "config.fp8' must be true or false"),
    ("method: srste\nconfig: {mask_refresh: 1.5}\n", "config.mask_refresh' must be a whole number"),
    ("method: srste\nconfig: {decay_placement: after}\n", "config.decay_placement' must be one of"),
    ("", "'method' is required"),
    ("description: just a note\n", "'method' is required"),
    ("method: dense\nconfig: {fp8: true}\n", "must be empty for method 'dense'"),
])
def test_recipe_fields_type_checked(tmp_path, capsys, text, message):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(text)
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run"), *TINY, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(recipe) in err
    assert not (tmp_path / "run").exists()


def test_shipped_recipe_name_is_not_shadowed_by_a_folder(tmp_path, monkeypatch, capsys):
    from sparse24.train.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sste").mkdir()  # a run folder named like the recipe
    (tmp_path / "ste").write_text("method: dense\n")  # and a file named like another one
    assert load_recipe("sste").name == "sste" and load_recipe("ste").name == "ste"
    (tmp_path / "mine").write_text("method: magnitude\nconfig: {mask_refresh: 2}\n")
    assert load_recipe("mine").method == "magnitude"  # not a shipped name: the file
    assert load_recipe("./ste").method == "dense"  # written as a path: the path
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_recipe("./sste")
    assert _train(tmp_path / "run", "--steps", "1") == 0


def test_gpt2_seq_len_beyond_positions_is_refused(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=1, n_head=2).save_pretrained(tmp_path / "g")
    args = ["train", "--recipe", "sste", "--model", str(tmp_path / "g"), "--data", "shipped", "--tokenizer", "byte",
            "--batch-size", "2", "--eval-batches", "1", "--steps", "1", "--no-progress", "--out", str(tmp_path / "r")]
    assert main([*args, "--seq-len", "64"]) == 2
    assert "n_positions 32" in capsys.readouterr().err
    assert main([*args, "--seq-len", "32"]) == 0


def test_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"text": "a fine first document " * 20}) + "\n{not json\n")
    assert main(["train", "--recipe", "sste", "--data", str(data), "--tokenizer", "byte", "--steps", "1",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert f"{data}:2: not valid JSON" in capsys.readouterr().err


def test_bad_sizes_are_refused(tmp_path, capsys):
    for flag, value in (("--batch-size", "0"), ("--eval-batches", "-3"), ("--keep", "-1")):
        assert _train(tmp_path / "run", flag, value) == 2
        assert f"{flag} must be" in capsys.readouterr().err


def test_gpt2_tied_embeddings_resume_bit_identically(tmp_path):
    """GPT-2 ties its embedding and head: the checkpoint stores the tensor once and restores both names."""
    from sparse24.train.checkpoint import read_checkpoint

    out, args = tmp_path / "run", [*RUN4, "--model", "gpt2-tiny"]
    assert _train(out, *args) == 0
    want = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_jsonl(out / "metrics.jsonl")]
    ckpt = read_checkpoint(out / "step-000002")
    assert ckpt.meta["model_aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "step-000004")
    assert _train(out, *args) == 0
    got = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_jsonl(out / "metrics.jsonl")]
    assert got == want


def test_rotary_seq_len_beyond_positions_warns(tmp_path):
    from sparse24.train.model import build_model
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32).save_pretrained(tmp_path / "l")
    with pytest.warns(UserWarning, match="max_position_embeddings 32"):
        build_model(str(tmp_path / "l"), 256, seq_len=64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model(str(tmp_path / "l"), 256, seq_len=32)  # within range: silent
