"""sparsify / unsparsify on HF models built from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sparse24 import MagnitudeConfig, SparseLinear, SRSTEConfig, SSTEConfig, sparse_modules, sparsify, unsparsify
from sparse24.config import SparseConfig


def test_default_keeps_embeddings_and_head_dense(tiny_llama):
    model = tiny_llama(layers=2, hidden=32)
    sparsify(model, SSTEConfig())
    names = [n for n, _ in sparse_modules(model)]
    assert len(names) == 2 * 7
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, SparseLinear)
    assert isinstance(model.model.embed_tokens, nn.Embedding)


def test_fqn_overrides_and_patterns(tiny_llama):
    model = tiny_llama(layers=2, hidden=32)
    sparsify(model, {"_default": None, "*.mlp.*": SRSTEConfig(), "model.layers.0.self_attn.q_proj": SSTEConfig()})
    got = {n: type(m.config) for n, m in sparse_modules(model)}
    assert got["model.layers.0.self_attn.q_proj"] is SSTEConfig
    assert sum(c is SRSTEConfig for c in got.values()) == 6 and len(got) == 7


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def test_gpt2_conv1d_layers_sparsify_save_and_load(tmp_path):
    from transformers import AutoModelForCausalLM

    from sparse24 import load_sparse, save_sparse

    model, ref = _gpt2(), _gpt2()
    ref.load_state_dict(model.state_dict())
    sparsify(model, MagnitudeConfig())
    names = [n for n, _ in sparse_modules(model)]
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
                     "transformer.h.0.mlp.c_proj"]
    with torch.no_grad():  # reference: Conv1D weights [in, out], 2:4 along `in` = dim 0, done by hand
        for n, m in sparse_modules(model):
            conv = ref.get_submodule(n)
            conv.weight.mul_(m.mask.t())
            assert ((conv.weight.t().reshape(-1, 4) != 0).sum(-1) <= 2).all()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        save_sparse(model, tmp_path / "ck", compressed=True)
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
        torch.testing.assert_close(plain(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(load_sparse(tmp_path / "ck")(input_ids=ids).logits, model(input_ids=ids).logits)
        unsparsify(model)
        assert type(model.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="not an nn.Linear"):
        sparsify(_gpt2(), {"transformer.h.0.mlp.act": MagnitudeConfig()})


def test_output_matches_masked_dense_model_and_unsparsify_round_trips(tiny_llama):
    model = tiny_llama(layers=1, hidden=32)
    ref = tiny_llama(layers=1, hidden=32)
    sparsify(model, MagnitudeConfig())
    with torch.no_grad():  # the reference: the same model with W := W * M done by hand
        for n, m in sparse_modules(model):
            ref.get_submodule(n).weight.mul_(m.mask)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, ref(input_ids=ids).logits
        unsparsify(model)
        c = model(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(a, c)
    assert not list(sparse_modules(model))


def test_indivisible_linear_kept_dense_with_warning(caplog):
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    sparsify(model, MagnitudeConfig())
    assert type(model[0]) is nn.Linear and isinstance(model[1], SparseLinear)
    assert "not divisible by 4" in caplog.text
    with pytest.raises(ValueError, match="0: .*divisible by 4"):
        sparsify(nn.Sequential(nn.Linear(6, 8)), {"0": MagnitudeConfig()})


def test_config_round_trip_and_errors():
    for cfg in (MagnitudeConfig(mask_refresh=3), SRSTEConfig(decay=1e-4, decay_placement="weight"),
                SSTEConfig(fp8=True)):
        assert SparseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown sparse24 method"):
        SparseConfig.from_dict({"method": "nope"})
    with pytest.raises(ValueError, match="newer than this sparse24"):
        SparseConfig.from_dict({**SSTEConfig().to_dict(), "version": 99})
    with pytest.raises(ValueError, match="unknown fields"):
        SparseConfig.from_dict({**SSTEConfig().to_dict(), "lamda": 1})
    with pytest.raises(ValueError, match="decay_placement"):
        SRSTEConfig(decay_placement="optimizer")
    with pytest.raises(TypeError, match="SparseConfig"):
        sparsify(nn.Linear(4, 4), "sste")


def test_resparsify_refuses_or_reconfigures_from_dense_weights(tiny_llama):
    """Issue 11: a second sparsify of an already-2:4 model silently did nothing."""
    from sparse24.masks import sste_scale, transposable_mask_24

    model = sparsify(tiny_llama(layers=1, hidden=32), SSTEConfig())
    for again in (SSTEConfig(), {"_default": None, "*.mlp.*": SRSTEConfig()}):
        with pytest.raises(ValueError, match=r"already 2:4 \(SSTEConfig\).*reconfigure=True.*unsparsify"):
            sparsify(model, again)
    before = {n: m for n, m in sparse_modules(model)}
    sparsify(model, {"_default": None, "*.mlp.*": SRSTEConfig()}, reconfigure=True)
    after = dict(sparse_modules(model))
    assert sorted(after) == sorted(before)
    for n, m in after.items():
        old = before[n]
        assert m.weight is old.weight  # the same parameter: an optimizer keeps working
        if ".mlp." in n:  # rebuilt from the dense weight with the new config (transposable mask, β unused)
            assert isinstance(m.config, SRSTEConfig) and m is not old
            assert torch.equal(m.mask, transposable_mask_24(m.weight.detach()))
        else:
            assert m is old and isinstance(m.config, SSTEConfig)
            torch.testing.assert_close(m.scale if hasattr(m, "scale") else m.beta, sste_scale(m.weight.detach()))


def test_names_and_patterns_that_match_nothing_warn(tiny_llama, caplog):
    model = tiny_llama(layers=1, hidden=32)
    sparsify(model, {"_default": None, "*.mlp.*": SRSTEConfig(), "*.feed_forward.*": SSTEConfig(),
                     "model.layers.3.self_attn.q_proj": SSTEConfig(), "*.act_fn": SSTEConfig()})
    assert len(list(sparse_modules(model))) == 3
    text = caplog.text
    assert "matched no linear layer" in text
    for key in ("*.feed_forward.*", "model.layers.3.self_attn.q_proj", "*.act_fn"):
        assert repr(key) in text
    assert "'*.mlp.*'" not in text


def _readme_snippet() -> str:
    """The first python block under the README's "## Library" heading, exactly as a user copies it."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Library"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_library_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with pytest.warns(UserWarning, match="inference export"):
        exec(compile(_readme_snippet(), "README.md", "exec"), scope)
    assert scope["info"]["loader"] == "sparse24" and len(list(sparse_modules(scope["model"]))) == 14
