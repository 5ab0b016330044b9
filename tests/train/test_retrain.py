"""AST retraining (``sparse24 retrain``) against independent references: float64 formulas, torch's AdamW, an
uninterrupted run, the one-shot model it starts from."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch
from sparse24.prune.slorb import SLoRBLinear, load_slorb_model, merge_slorb, save_slorb_model, without_slorb
from sparse24.train.ast_trainer import ASTConfig, DistillLoss, distill_kl, lambda_at, make_ast_trainer, make_student
from sparse24.train.data import batch_at
from sparse24.train.loop import TrainConfig
from torch import nn

from sparse24 import MagnitudeConfig, SparseLinear
from sparse24.api import sparse_modules
from sparse24.masks import magnitude_mask_24
from sparse24.texts import byte_tokens, shipped_text

TOKENS = byte_tokens(shipped_text())


def random_mask_24(out_f: int, in_f: int) -> torch.Tensor:
    """A random (not magnitude) 2:4 mask: 2 of every 4 chosen uniformly."""
    keep = torch.rand(out_f, in_f // 4, 4).argsort(-1) < 2  # [out, in/4, 4]
    return keep.reshape(out_f, in_f)


def softmax64(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kl_matches_float64_formula():
    b, t, v = random.randint(1, 3), random.randint(1, 7), random.randint(2, 50)
    temp = random.choice([1.0, 2.0, 3.7])
    zs, zt = torch.randn(b, t, v) * 3, torch.randn(b, t, v) * 3
    ps, pt = softmax64(zs.double().numpy() / temp), softmax64(zt.double().numpy() / temp)
    ref = sum(float(np.sum(pt[i, j] * (np.log(pt[i, j]) - np.log(ps[i, j])))) for i in range(b) for j in range(t))
    ref *= temp**2 / (b * t)
    assert distill_kl(zs, zt, temp).item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert distill_kl(zt, zt, temp).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_loss_matches_formula(tiny_llama):
    teacher = tiny_llama(2, 64, 256, seed=random.randrange(1000))
    student = make_student(copy.deepcopy(teacher), ASTConfig(slorb_group=8))
    cfg = ASTConfig(alpha_task=random.random(), alpha_kl=random.random(), alpha_hid=random.random(), temperature=2.0)
    ids = torch.randint(0, 256, (2, 12))
    labels = torch.randint(0, 256, (2, 12))
    got = DistillLoss(teacher, cfg)(student, {"input_ids": ids, "labels": labels})
    with torch.no_grad():
        s = student(input_ids=ids, output_hidden_states=True)
        t = teacher(input_ids=ids, output_hidden_states=True)
    zs, zt = s.logits.double().reshape(-1, 256).numpy(), t.logits.double().reshape(-1, 256).numpy()
    ce = float(np.mean(-np.log(softmax64(zs)[np.arange(24), labels.reshape(-1).numpy()])))
    ps, pt = softmax64(zs / 2), softmax64(zt / 2)
    kl = 4.0 * float(np.sum(pt * (np.log(pt) - np.log(ps)))) / 24
    hid = sum(float(((a.double() - b.double()) ** 2).mean() / (b.double() ** 2).mean())
              for a, b in zip(s.hidden_states[1:], t.hidden_states[1:]))
    ref = cfg.alpha_task * ce + cfg.alpha_kl * kl + cfg.alpha_hid * hid
    assert got.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("trainable", [True, False])
def test_slorb_initial_output_is_group_mean_of_removed_weights(trainable):
    k = random.choice([4, 8, 16])
    n, d, tokens = random.randint(3, 9), k * random.randint(1, 4), random.randint(1, 6)
    lin = nn.Linear(d, n, bias=True)
    sparse = SparseLinear.from_dense(lin, MagnitudeConfig())
    mask = random_mask_24(n, d)
    sparse.mask.copy_(mask)
    mod = SLoRBLinear(sparse, k, "mean", trainable)
    x = torch.randn(tokens, d)
    w, m, xb, b = (t.detach().double().numpy() for t in (lin.weight, mask, x, lin.bias))
    ref = np.zeros((tokens, n))
    for i in range(n):
        for r in range(d // k):
            cols = range(r * k, (r + 1) * k)
            s_ir = sum(w[i, c] * (1 - m[i, c]) for c in cols) / k
            for tk in range(tokens):
                ref[tk, i] += s_ir * sum(xb[tk, c] for c in cols)
        ref[:, i] += xb @ (w[i] * m[i]) + b[i]
    np.testing.assert_allclose(mod(x).detach().double().numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose((x @ mod.merged_weight().t() + lin.bias).detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_lambda_ramp_formula():
    lam, ramp = random.uniform(1e-6, 1e-3), random.randint(1, 50)
    for t in [1, ramp // 2, ramp, ramp + 1, 10 * ramp]:
        assert lambda_at(t, lam, ramp) == pytest.approx(lam * min(1.0, t / ramp), rel=1e-12)
    assert lambda_at(1, lam, 0) == lam


def _build(tiny_llama, cfg: ASTConfig, tc: TrainConfig, optimizer_fn=None):
    model = tiny_llama(2, 64, 256, seed=0)
    teacher = copy.deepcopy(model)
    make_student(model, cfg)
    opt = optimizer_fn(model) if optimizer_fn else None
    return make_ast_trainer(model, teacher, cfg, tc, TOKENS[:-3000], TOKENS[-3000:], optimizer=opt), teacher


ADAM_EPS = 1e-4


def test_decay_before_optimizer_step_on_pruned_weights_only(tiny_llama):
    """One AdamW step equals torch's AdamW fed ∇L + λ(1)(1−M)⊙W; decay after the step or on kept weights fails.

    AdamW's eps is 1e-4 in both runs: with 1e-8 an element whose gradient is ~eps turns a last-bit difference of the
    gradient into a 1e-6 step difference (d step/d g = lr·eps/(|g|+eps)² up to lr/eps), which made the comparison
    flaky; at 1e-4 that gain is at most 10 while Adam still normalises every gradient above ~1e-4."""
    cfg = ASTConfig(lambda_max=random.uniform(0.1, 1.0), ramp_steps=4, slorb_group=8)
    tc = TrainConfig(steps=1, batch_size=2, seq_len=16, lr=1e-3, warmup=0, weight_decay=0.0, clip=0.0,
                     eval_batches=1, progress=False)

    def adamw(model):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95),
                                 eps=ADAM_EPS, weight_decay=0.0)

    trainer, teacher = _build(tiny_llama, cfg, tc, optimizer_fn=adamw)
    ref = copy.deepcopy(trainer.model)
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    trainer.fit()
    assert trainer.history[0]["lambda"] == pytest.approx(cfg.lambda_max / 4)
    lam = cfg.lambda_max / 4
    results = {}
    for decay in (lam, 0.0):
        model = copy.deepcopy(ref)
        DistillLoss(teacher, cfg)(model, batch_at(TOKENS[:-3000], 0, 2, 16, tc.seed)).backward()
        with torch.no_grad():
            for _, m in sparse_modules(model):
                m.weight.grad += decay * m.weight * ~m.mask
        adamw(model).step()
        results[decay] = dict(model.named_parameters())
    got = dict(trainer.model.named_parameters())
    for name, p in got.items():
        torch.testing.assert_close(p.detach(), results[lam][name].detach(), rtol=0, atol=1e-6)
    pruned_moved = kept_moved = 0.0
    for fqn, m in sparse_modules(trainer.model):
        w = fqn + ".weight"
        diff = (results[lam][w] - results[0.0][w]).abs().detach()
        pruned_moved = max(pruned_moved, float(diff[~m.mask].max()))
        kept_moved = max(kept_moved, float(diff[m.mask].max()))
        assert not torch.equal(got[w].detach(), before[w])
    assert pruned_moved > 1e-5 and kept_moved == 0.0  # the decay changes pruned weights and nothing else


class _Kill(Exception):
    pass


def _losses(path) -> dict[int, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.parametrize("score", ["magnitude", "wanda"])
def test_resumed_run_is_bit_identical(tiny_llama, tmp_path, score):
    cfg = ASTConfig(lambda_max=0.05, ramp_steps=3, mask_refresh=2, mask_score=score, slorb_group=8)

    def tc(out):
        return TrainConfig(steps=6, batch_size=2, seq_len=16, lr=3e-3, warmup=0.2, weight_decay=0.0, ckpt_every=2,
                           eval_batches=1, out_dir=out, progress=False)

    full, _ = _build(tiny_llama, cfg, tc(tmp_path / "a"))
    full.fit()
    assert [r["lambda"] for r in full.history] == pytest.approx([0.05 * min(1, t / 3) for t in range(1, 7)])
    for _, m in sparse_modules(full.model):  # step 6 refreshed every mask from the dense weights
        assert torch.equal(m.mask, magnitude_mask_24(m.weight.detach())) == (score == "magnitude")
    assert [r.get("flip_rate") is not None for r in full.history] == [False, True] * 3
    killed, _ = _build(tiny_llama, cfg, tc(tmp_path / "b"))

    def kill(t):
        if t.step == 5:
            raise _Kill

    killed.after_step.append(kill)
    with pytest.raises(_Kill):
        killed.fit()
    resumed, _ = _build(tiny_llama, cfg, tc(tmp_path / "b"))
    resumed.fit(resume="auto")
    assert resumed.history[0]["step"] == 5
    a, b = _losses(tmp_path / "a" / "metrics.jsonl"), _losses(tmp_path / "b" / "metrics.jsonl")
    assert list(a) == list(range(1, 7)) and a == b
    sa, sb = full.unwrapped.state_dict(), resumed.unwrapped.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_wanda_mask_refresh_matches_a_hand_computed_score(tiny_llama):
    """A refresh step's masks are ``magnitude_mask_24(|W|·‖x‖)`` with ``‖x_j‖ = sqrt(mean_tokens x_j²)`` of that
    step's inputs; for layer 0's q/k/v the input is computed here by hand (float64 RMSNorm of the embeddings)."""
    from sparse24.train.ast_trainer import wanda_mask_24

    cfg = ASTConfig(lambda_max=0.0, mask_refresh=1, slorb_group=0)
    tc = TrainConfig(steps=1, batch_size=3, seq_len=16, lr=1e-2, warmup=0, weight_decay=0.0, clip=0.0,
                     eval_batches=1, progress=False, seed=random.randrange(1000))
    trainer, _ = _build(tiny_llama, cfg, tc)
    before = copy.deepcopy(trainer.unwrapped)
    trainer.fit()
    ids = batch_at(TOKENS[:-3000], 0, 3, 16, tc.seed)["input_ids"]  # the batch of step 1
    layer = before.model.layers[0]
    h = before.model.embed_tokens.weight.double()[ids].reshape(-1, 64)  # [tokens, d]
    x = h / torch.sqrt(h.square().mean(-1, keepdim=True) + layer.input_layernorm.variance_epsilon)
    x = x * layer.input_layernorm.weight.double()  # [tokens, d], the q/k/v input
    norm = x.square().mean(0).sqrt()  # [d]
    flips = 0
    for proj in ("q_proj", "k_proj", "v_proj"):
        m = trainer.unwrapped.model.layers[0].self_attn.get_submodule(proj)
        ref = magnitude_mask_24(m.weight.detach().double().abs() * norm[None, :])
        assert torch.equal(m.mask, ref), proj
        flips += int((ref != magnitude_mask_24(m.weight.detach())).sum())
        with pytest.raises(ValueError, match="col_norm"):
            wanda_mask_24(m.weight, norm[:-1])
    assert flips > 0  # the score is not |W| alone on this input


def test_fixed_mask_and_magnitude_score(tiny_llama):
    """``mask_refresh=0`` keeps the initial masks through training; ``mask_score='magnitude'`` refreshes to |W|."""
    tc = TrainConfig(steps=3, batch_size=2, seq_len=16, lr=3e-2, warmup=0, weight_decay=0.0, eval_batches=1,
                     progress=False)
    for refresh, score in ((0, "wanda"), (3, "magnitude")):
        trainer, _ = _build(tiny_llama, ASTConfig(mask_refresh=refresh, mask_score=score, slorb_group=0), tc)
        init = {n: m.mask.clone() for n, m in sparse_modules(trainer.unwrapped)}
        trainer.fit()
        for n, m in sparse_modules(trainer.unwrapped):
            want = init[n] if refresh == 0 else magnitude_mask_24(m.weight.detach())
            assert torch.equal(m.mask, want), (refresh, n)
        assert refresh == 0 or any(not torch.equal(init[n], m.mask) for n, m in sparse_modules(trainer.unwrapped))
    with pytest.raises(ValueError, match="mask_score"):
        ASTConfig(mask_score="random")


def test_save_load_roundtrip_and_plain_hf_part(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_student(tiny_llama(2, 64, 256, seed=random.randrange(1000)), ASTConfig(slorb_group=8))
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with without_slorb(model):
            bare = model(input_ids=ids).logits
        save_slorb_model(model, tmp_path / "ast", compressed=True)
        got = load_slorb_model(tmp_path / "ast")(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ast")(input_ids=ids).logits
        merged = merge_slorb(copy.deepcopy(model))(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain, bare, rtol=1e-5, atol=1e-5)  # plain HF: the 2:4 part only
    assert not math.isclose(float((want - bare).abs().max()), 0.0, abs_tol=1e-6)


def _tiny_model_and_text(tiny_llama, tmp_path):
    """A tiny local HF model with a BPE tokenizer, and a training text file."""
    from sparse24.train.data import train_bpe
    from transformers import PreTrainedTokenizerFast

    text = shipped_text()
    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe(text.split("\n\n"), 300))
    model = tiny_llama(2, 64, len(tok), seed=1)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "text.txt").write_text(text)
    return tmp_path / "m", tmp_path / "text.txt"


def _retrain_argv(model, text, out, *extra):
    return ["--model", str(model), "--data", str(text), "--seq-len", "16", "--batch-size", "2", "--slorb-group", "8",
            "--eval-text", str(text), "--eval-windows", "2", "--out", str(out), "--no-progress", "--init", "magnitude",
            *extra]


def test_default_start_is_the_one_shot_model_pruned_once(tiny_llama, tmp_path, capsys, monkeypatch):
    """No --init: ONESHOT_METHOD prunes the model first; step 0 is that pruned model's perplexity exactly (the same
    `sparse24 prune` run by hand), and a restart after a crash reuses the pruned start instead of pruning again."""
    import sparse24.prune.cli as prune_cli
    from sparse24.train.loop import Trainer
    from sparse24.train.retrain import ONESHOT_METHOD, main
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse24.cli import main as cli_main
    from sparse24.io import read_sparse24_config
    from sparse24.perplexity import perplexity
    from sparse24.texts import tokenize_text

    model, text = _tiny_model_and_text(tiny_llama, tmp_path)
    pargs = ["--calib", str(text), "--nsamples", "4", "--seqlen", "16"]
    argv = [a for a in _retrain_argv(model, text, tmp_path / "out", "--steps", "3", "--eval-seq-len", "24")
            if a not in ("--init", "magnitude")] + ["--init-prune-args", " ".join(pargs), "--no-slorb"]
    calls = []
    real_prune, real_fit = prune_cli.prune_checkpoint, Trainer.fit

    def counting(*a, **k):
        calls.append(1)
        return real_prune(*a, **k)

    def crash(self, resume=None):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(prune_cli, "prune_checkpoint", counting)
    monkeypatch.setattr(Trainer, "fit", crash)
    assert main(argv) == 2 and len(calls) == 1
    assert (tmp_path / "out.retrain-work" / f"init-{ONESHOT_METHOD}" / "sparse24_config.json").is_file()
    monkeypatch.setattr(Trainer, "fit", real_fit)
    assert main(argv) == 0 and len(calls) == 1  # the start was reused
    assert "(reused)" in capsys.readouterr().out
    assert cli_main(["prune", "--model", str(model), "--method", ONESHOT_METHOD, *pargs, "--out",
                     str(tmp_path / "p"), "--no-progress"]) == 0
    extra = read_sparse24_config(tmp_path / "out")["extra"]
    ids = tokenize_text(AutoTokenizer.from_pretrained(model), text.read_text())
    ref = perplexity(AutoModelForCausalLM.from_pretrained(tmp_path / "p"), ids, 24, max_windows=2)["ppl"]
    assert extra["baselines_ppl"]["start"] == pytest.approx(ref, rel=1e-6)
    assert extra["init"].startswith(f"oneshot:{ONESHOT_METHOD}") and extra["ast"]["slorb_group"] == 0
    assert main([*argv[:-3], "--init", "magnitude", "--init-prune-args", "--nsamples 4", "--overwrite"]) == 2
    assert "only applies to --init oneshot" in capsys.readouterr().err
    assert main([*argv[:-3], "--init-prune-args", "--out x", "--overwrite"]) == 2
    assert "may not set --out" in capsys.readouterr().err


def test_retrain_command_end_to_end(tiny_llama, tmp_path, capsys):
    """``sparse24 retrain`` on a tiny local model: a 2:4 + SLoRB folder, a token budget, clear refusals."""
    from sparse24.train.retrain import main

    from sparse24.io import read_sparse24_config
    from sparse24.masks import is_24

    model, text = _tiny_model_and_text(tiny_llama, tmp_path)
    argv = _retrain_argv(model, text, tmp_path / "out", "--tokens", "90", "--ckpt-every", "2")
    assert main(argv) == 0
    extra = read_sparse24_config(tmp_path / "out")["extra"]
    assert extra["method"] == "ast" and extra["slorb"]["modules"]
    assert extra["tokens_trained"] == 3 * 2 * 16  # 90 tokens -> 3 steps of 32, rounded up
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and str(tmp_path / "out") in printed
    loaded = load_slorb_model(tmp_path / "out")
    assert all(is_24(m.sparse_weight()) for _, m in sparse_modules(loaded))
    assert any(isinstance(m, SLoRBLinear) for m in loaded.modules())
    from sparse24.loaders import load

    evaluated, _, info = load(tmp_path / "out")  # `sparse24 eval` sees the SLoRB terms too
    assert info["method"] == "ast" and any(isinstance(m, SLoRBLinear) for m in evaluated.modules())
    assert not (tmp_path / "out.retrain-work").exists()
    assert main(argv) == 2  # the folder exists: refuses without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv[:-4], "--steps", "2", "--tokens", "64"]) == 2
    assert "not both" in capsys.readouterr().err
    for flag, value in (("--batch-size", "0"), ("--eval-windows", "-3"), ("--tokens", "0")):
        assert main([*argv[:-4], flag, value]) == 2
        assert f"{flag} must be" in capsys.readouterr().err


def test_retrain_resume_after_a_crash_is_bit_identical_and_checks_settings(tiny_llama, tmp_path, capsys, monkeypatch):
    from sparse24.train.loop import Trainer
    from sparse24.train.retrain import main
    from sparse24.train.telemetry import read_jsonl

    model, text = _tiny_model_and_text(tiny_llama, tmp_path)
    common = ["--steps", "5", "--ckpt-every", "2", "--lambda-max", "0.05", "--mask-every", "2"]
    assert main(_retrain_argv(model, text, tmp_path / "full", *common)) == 0
    real = Trainer.train_step

    def crash_at_4(self):
        if self.step == 3:
            raise RuntimeError("simulated crash")
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_4)
    assert main(_retrain_argv(model, text, tmp_path / "cut", *common)) == 2
    monkeypatch.setattr(Trainer, "train_step", real)
    work = tmp_path / "cut.retrain-work"
    assert (work / "step-000002").is_dir() and not (tmp_path / "cut").exists()
    capsys.readouterr()
    assert main(_retrain_argv(model, text, tmp_path / "cut", *common, "--lr", "1e-3")) == 2  # other settings
    assert "--lr" in capsys.readouterr().err and (work / "step-000002").is_dir()
    assert main(_retrain_argv(model, text, tmp_path / "cut", *common)) == 0
    keys = ("step", "loss", "lambda", "flip_rate", "val_loss", "loss_kl")
    a, b = (read_jsonl(tmp_path / f / "retrain_metrics.jsonl") for f in ("full", "cut"))
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in b]


def test_retrain_command_from_a_pruned_folder_draws_the_curve(tiny_llama, tmp_path, capsys, monkeypatch):
    """``sparse24 prune`` then ``sparse24 retrain --init``: the curve starts at the pruned model's perplexity (step 0
    is the one-shot model), the dense line is the dense model's, points every --eval-tokens and at the end."""
    import csv

    from sparse24.train.retrain import main as retrain_main
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse24.cli import main
    from sparse24.perplexity import perplexity
    from sparse24.texts import tokenize_text

    model, text = _tiny_model_and_text(tiny_llama, tmp_path)
    assert main(["prune", "--model", str(model), "--method", "magnitude", "--out", str(tmp_path / "p"),
                 "--no-progress"]) == 0
    argv = _retrain_argv(model, text, tmp_path / "out", "--init", str(tmp_path / "p"), "--steps", "4",
                         "--eval-tokens", "64", "--eval-seq-len", "24")
    assert retrain_main(argv) == 0
    rows = list(csv.reader((tmp_path / "out" / "retrain_curve.csv").open()))
    points = [(int(t), int(s), float(p)) for t, s, p in rows[1:] if not t.startswith("#")]
    lines = {name[2:]: float(p) for name, _, p in rows[1:] if name.startswith("#")}
    assert [(t, s) for t, s, _ in points] == [(0, 0), (64, 2), (128, 4)]  # 32 tokens per step
    ids = tokenize_text(AutoTokenizer.from_pretrained(model), text.read_text())
    one_shot = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    want = {"dense": AutoModelForCausalLM.from_pretrained(model), "start": one_shot}
    for name, net in want.items():
        ref = perplexity(net, ids, 24, max_windows=2)["ppl"]
        got = points[0][2] if name == "start" else lines["dense"]
        assert got == pytest.approx(ref, rel=1e-5), name
    assert any(k.startswith("one-shot start") for k in lines)
    assert (tmp_path / "out" / "retrain_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "retrain_curve.csv" in capsys.readouterr().out
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "retraining_quality.py"
    spec = importlib.util.spec_from_file_location("retraining_quality", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = [f"AST={tmp_path / 'out'}", "--out", str(tmp_path / "r" / "q.md"), "--text", str(text), "--seqlens",
              "24", "--windows", "2", "--tasks", "", "--work", str(tmp_path / "w")]

    def in_process(cmd, log):  # the same `sparse24 eval` argv, run here instead of in a child (seconds, not a minute)
        assert cmd[1:4] == ["-m", "sparse24", "eval"]
        assert main(cmd[3:]) == 0
        log.write_text("")
        return {"wall_s": 0.0, "peak_rss_mb": 0}

    monkeypatch.setattr(bench.E, "run_child", in_process)
    assert bench.main(report) == 0
    saved = json.loads((tmp_path / "r" / "q.json").read_text())
    (row,) = saved["runs"]
    start, dense, last = points[0][2], lines["dense"], points[-1][2]
    assert row["closed"] == pytest.approx((start - last) / (start - dense)) and row["tokens"] == 128
    assert (tmp_path / "r" / "q.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "r" / "q.md").read_text()
    assert "| **AST** |" in md
    # the evaluation pass (`sparse24 eval` children) on the same windows: the dense model, the --init folder and the
    # saved run (SLoRB terms loaded back) score what the run scored in memory
    got = {k: saved["baselines"][k]["ev"]["ppl"]["24"]["ppl"] for k in ("dense", "start")}
    got["run"] = row["ev"]["ppl"]["24"]["ppl"]
    assert got == pytest.approx({"dense": dense, "start": start, "run": last}, rel=1e-5)
    assert f"{(start - last) / (start - dense):.1%}" in md.split("## Perplexity curve")[0]
    monkeypatch.setattr(bench.E, "run_child", None)  # a rerun reuses every cached evaluation (no child started)
    assert bench.main(report) == 0
    assert json.loads((tmp_path / "r" / "q.json").read_text())["runs"][0]["ev"] == row["ev"]


def test_retrain_from_a_pruned_folder_starts_at_the_one_shot_model(tiny_llama, tmp_path):
    """``--init FOLDER``: the student is the pruned model exactly (masks and updated weights), SLoRB adds 0."""
    from sparse24.train.retrain import load_init
    from transformers import AutoModelForCausalLM

    from sparse24 import save_sparse, sparsify

    dense = tiny_llama(2, 64, 256, seed=random.randrange(1000))
    pruned = sparsify(copy.deepcopy(dense), MagnitudeConfig())
    for _, m in sparse_modules(pruned):  # a random pattern with other weights: not what magnitude would pick
        m.mask.copy_(random_mask_24(*m.mask.shape))
        with torch.no_grad():
            m.weight.mul_(1 + torch.rand_like(m.weight))
    save_sparse(pruned, tmp_path / "p")
    student, masks = load_init(tmp_path / "p", dense, torch.float32)
    make_student(student, ASTConfig(slorb_group=8), masks, lambda mod, fqn: fqn in masks)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tmp_path / "p")(input_ids=ids).logits
        got = student(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert any(isinstance(m, SLoRBLinear) for m in student.modules())
    with torch.no_grad():  # a folder whose weights are not 2:4 is refused, naming the module
        AutoModelForCausalLM.from_pretrained(tmp_path / "p").save_pretrained(tmp_path / "q")
        (tmp_path / "q" / "model.safetensors").unlink()
        dense.save_pretrained(tmp_path / "q")
    (tmp_path / "q" / "sparse24_config.json").write_text((tmp_path / "p" / "sparse24_config.json").read_text())
    with pytest.raises(ValueError, match="is not 2:4"):
        load_init(tmp_path / "q", dense, torch.float32)


def test_initial_masks_from_a_pruned_folder(tiny_llama, tmp_path):
    """Kept = non-zeros of the pruned weight; groups short of 2 (a kept weight exactly 0) filled by dense |W|."""
    from sparse24.train.ast_trainer import masks_from_pruned

    from sparse24 import save_sparse, sparsify

    dense = tiny_llama(2, 64, 256, seed=random.randrange(1000))
    pruned = sparsify(copy.deepcopy(dense), MagnitudeConfig())
    names = [n for n, _ in sparse_modules(pruned)]
    for _, m in sparse_modules(pruned):
        m.mask.copy_(random_mask_24(*m.mask.shape))
        with torch.no_grad():  # zero some kept weights: their groups keep fewer than 2 non-zeros
            m.weight[(torch.rand_like(m.weight) < 0.1) & m.mask] = 0.0
    save_sparse(pruned, tmp_path / "p")
    masks = masks_from_pruned(dense, tmp_path / "p")
    assert sorted(masks) == sorted(names)
    for name in random.sample(names, 2):
        w = dense.get_submodule(name).weight.detach().numpy()
        nz = (pruned.get_submodule(name).sparse_weight() != 0).numpy()
        ref = np.zeros_like(nz)
        for i in range(w.shape[0]):
            for g in range(0, w.shape[1], 4):
                keep = [c for c in range(g, g + 4) if nz[i, c]]
                rest = sorted((c for c in range(g, g + 4) if not nz[i, c]), key=lambda c: abs(w[i, c]), reverse=True)
                for c in (keep + rest)[:2]:
                    ref[i, c] = True
        assert np.array_equal(masks[name].numpy(), ref)


def test_switches_turn_each_ast_part_off():
    """--no-kl / --no-decay / --no-slorb / --mask-every 0 / --mask-score zero exactly their part of ASTConfig."""
    import argparse

    from sparse24.train.retrain import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = config_from_args(p.parse_args(["--out", "x"]), 100)
    assert (base.alpha_kl, base.lambda_max, base.slorb_group, base.mask_refresh, base.mask_score) == (
        0.5, 6e-5, 16, 10, "wanda")
    assert base.ramp_steps == 25
    cases = {"--no-kl": {"alpha_kl": 0.0}, "--no-decay": {"lambda_max": 0.0}, "--no-slorb": {"slorb_group": 0}}
    for flag, want in cases.items():
        got = config_from_args(p.parse_args(["--out", "x", flag]), 100)
        assert got == dataclasses.replace(base, **want), flag
    got = config_from_args(p.parse_args(["--out", "x", "--mask-every", "0", "--mask-score", "magnitude"]), 100)
    assert got == dataclasses.replace(base, mask_refresh=0, mask_score="magnitude")


def test_retrain_refuses_cpu_autocast_before_the_one_shot_prune(tiny_llama, tmp_path, capsys, monkeypatch):
    """``--precision bf16`` on the CPU is refused with the fix before anything runs: no on-the-fly prune (the default
    --init oneshot), no work folder, no output."""
    import sparse24.prune.cli as prune_cli
    from sparse24.train.retrain import main

    model, text = _tiny_model_and_text(tiny_llama, tmp_path)
    monkeypatch.setattr(prune_cli, "prune_checkpoint", None)  # would fail if the one-shot prune started
    argv = [a for a in _retrain_argv(model, text, tmp_path / "out", "--steps", "2") if a not in ("--init", "magnitude")]
    for precision in ("bf16", "fp16"):
        assert main([*argv, "--device", "cpu", "--precision", precision]) == 2
        assert "--precision no" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.retrain-work").exists()


def test_ast_loss_under_bf16_autocast_follows_fp32(tiny_llama):
    """The GPU default is bf16 autocast (fp32 master weights). The same AST loss (2:4 student with SLoRB, KL to the
    teacher, CE) under CPU bf16 autocast runs in bf16 and stays within bf16 rounding of the fp32 loss and gradients."""
    cfg = ASTConfig(slorb_group=8, alpha_kl=0.5)
    model = tiny_llama(2, 64, 256, seed=random.randrange(1000))
    teacher = copy.deepcopy(model)
    make_student(model, cfg)
    loss_fn = DistillLoss(teacher, cfg)
    batch = batch_at(TOKENS, random.randrange(100), 2, 16, 0)
    grads, losses = {}, {}
    for mode in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            logits = model(input_ids=batch["input_ids"]).logits
            loss = loss_fn(model, batch)
        assert logits.dtype == (torch.bfloat16 if mode == "bf16" else torch.float32)
        loss.backward()
        losses[mode] = float(loss.detach())
        grads[mode] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
    assert grads["bf16"].keys() == grads["fp32"].keys() and any("S" in n.split(".")[-1] for n in grads["fp32"])
    for name, g in grads["fp32"].items():
        h = grads["bf16"][name]
        assert torch.isfinite(h).all(), name
        if g.norm() > 1e-6:
            cos = float(torch.nn.functional.cosine_similarity(g.flatten(), h.flatten(), dim=0))
            assert cos > 0.97, (name, cos)
