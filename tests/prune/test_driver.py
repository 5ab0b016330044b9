"""The layer-sequential driver on a tiny Llama: data flow between layers, 2:4 output, target selection, errors."""

from __future__ import annotations

import pytest
import torch
from sparse24.prune.base import get_pruner
from sparse24.prune.driver import DriverArgs, matches, prune_layers
from sparse24.prune.resume import WorkState
from sparse24.prune.wanda import WandaPruner
from torch import nn


class SpyWanda(WandaPruner):
    """Wanda that records the statistics it was handed, in call order."""

    def __init__(self, sequential: bool = True) -> None:
        self.seen: list = []
        self.sequential = sequential

    def prune(self, weight, stats):
        self.seen.append(stats)
        return super().prune(weight, stats)


def _q_inputs(model: nn.Module, calib: torch.Tensor, layer: int) -> torch.Tensor:
    """Inputs of layer ``layer``'s q_proj for every calibration sample, from a plain full-model forward."""
    got = []
    h = model.model.layers[layer].self_attn.q_proj.register_forward_hook(lambda m, i, o: got.append(i[0]))
    with torch.no_grad():
        for s in range(calib.shape[0]):
            model(input_ids=calib[s : s + 1])
    h.remove()
    return torch.cat(got).reshape(-1, got[0].shape[-1]).double()  # [tokens, hidden]


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("sequential", [True, False])
def test_next_layer_is_fed_by_the_pruned_or_dense_layer(tiny_model_dir, tmp_path, sequential):
    from sparse24.prune.export import assemble

    calib = torch.randint(0, 300, (6, 24))
    spy = SpyWanda(sequential)
    out = prune_layers(tiny_model_dir, spy, calib, DriverArgs(batch_size=4, progress=False),
                       WorkState(tmp_path / "w", {"t": 1}))
    per_layer = len(spy.seen) // 2  # 7 linears per layer, 2 layers
    q_stats_layer1 = spy.seen[per_layer]  # first linear of layer 1 is q_proj
    pruned, dense = assemble(tiny_model_dir, out), _load(tiny_model_dir)
    x_pruned, x_dense = _q_inputs(pruned, calib, 1), _q_inputs(dense, calib, 1)
    ref = (x_pruned if sequential else x_dense).square().sum(0) / calib.shape[0]
    other = (x_dense if sequential else x_pruned).square().sum(0) / calib.shape[0]
    torch.testing.assert_close(q_stats_layer1.sqnorm, ref, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(q_stats_layer1.sqnorm, other, rtol=1e-3)
    # layer 0 sees the embeddings either way
    torch.testing.assert_close(spy.seen[0].sqnorm, _q_inputs(dense, calib, 0).square().sum(0) / 6, rtol=1e-4,
                               atol=1e-6)


def test_every_target_is_24_and_the_rest_untouched(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    calib = torch.randint(0, 300, (4, 16))
    opts = DriverArgs(targets=["*.mlp.*", "*.q_proj"], ignore=["*.1.mlp.down_proj"], progress=False)
    out = prune_layers(tiny_model_dir, get_pruner("sparsegpt"), calib, opts, WorkState(tmp_path / "w", {}))
    names = sorted(out.weights)
    assert "model.layers.1.mlp.down_proj" not in names and "model.layers.0.mlp.down_proj" in names
    assert all(n.endswith(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "q_proj")) for n in names)
    assert len(names) == 7
    dense = load_file(str(tiny_model_dir / "model.safetensors"))
    for n, w in out.weights.items():
        assert ((w != 0).reshape(-1, 4).sum(-1) <= 2).all() and (out.masks[n].reshape(-1, 4).sum(-1) == 2).all()
        assert not torch.equal(w, dense[n + ".weight"])
    assert all(r["is_24"] and r["out_err"] > 0 for r in out.report)


def test_matches_globs_and_regex():
    assert matches("model.layers.0.mlp.up_proj", ["*.mlp.*"], [])
    assert not matches("model.layers.0.mlp.up_proj", ["*"], ["re:.*up_proj"])
    assert matches("model.layers.0.self_attn.k_proj", ["re:.*[qk]_proj"], [])


def test_no_target_and_unknown_architecture_errors(tiny_model_dir, tmp_path):
    opts = DriverArgs(targets=["*.nothing"], progress=False)
    with pytest.raises(ValueError, match="select no linear"):
        prune_layers(tiny_model_dir, get_pruner("magnitude"), None, opts, WorkState(tmp_path / "w", {}))
    from sparse24.prune.model_io import decoder_layers

    class Odd(nn.Module):
        config = type("C", (), {"model_type": "gpt2"})()
        transformer = nn.Module()

    with pytest.raises(ValueError, match="gpt2.*not supported.*lacks model.layers"):
        decoder_layers(Odd())


def test_driver_keeps_the_extras_a_pruner_declares_and_refuses_others(tiny_model_dir, tmp_path):
    """The driver names no method: extra tensors travel by the names the pruner class declares."""
    from sparse24.prune.base import PruneResult
    from sparse24.prune.magnitude import MagnitudePruner

    class Scaled(MagnitudePruner):
        extra_tensors = ("scale",)

        def prune(self, weight, stats):
            res = super().prune(weight, stats)
            return PruneResult(res.weight, res.mask, {"scale": weight.abs().amax(1)}, info={"rows": weight.shape[0]})

    out = prune_layers(tiny_model_dir, Scaled(), None, DriverArgs(progress=False), WorkState(tmp_path / "w", {}))
    from safetensors.torch import load_file

    dense = load_file(str(tiny_model_dir / "model.safetensors"))
    assert sorted(out.extras) == sorted(out.weights) and len(out.extras) == 14
    for name, t in out.extras.items():
        assert torch.equal(t["scale"], dense[name + ".weight"].abs().amax(1))
    assert all(r["rows"] == r["shape"][0] for r in out.report)

    class Undeclared(MagnitudePruner):
        def prune(self, weight, stats):
            res = super().prune(weight, stats)
            return PruneResult(res.weight, res.mask, {"scale": weight[:, 0]})

    with pytest.raises(RuntimeError, match=r"extra tensors \['scale'\].*extra_tensors=\(\)"):
        prune_layers(tiny_model_dir, Undeclared(), None, DriverArgs(progress=False), WorkState(tmp_path / "w2", {}))


def test_statistics_pass_stops_after_the_last_input_and_keeps_the_statistics(tiny_model_dir):
    """With stop_when_done the forward ends at the last hooked linear's input: same statistics, no down_proj call."""
    from sparse24.prune.stats import StatsCollector, StatsDone

    layer = _load(tiny_model_dir).model.layers[0]
    lin = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    x = torch.randn(3, 16, layer.self_attn.q_proj.in_features)
    pos = torch.arange(16)[None]
    emb = _load(tiny_model_dir).model.rotary_emb(x, pos)
    calls = []
    hook = lin["mlp.down_proj"].register_forward_hook(lambda *a: calls.append(1))
    got = {}
    for stop in (False, True):
        col = StatsCollector(lin, "hessian", stop_when_done=stop)
        col.begin_batch(3)
        try:
            with torch.no_grad():
                layer(x, position_embeddings=emb)
            assert not stop
        except StatsDone:
            assert stop
        col.remove()
        got[stop] = col.stats()
    hook.remove()
    assert calls == [1]  # only the pass without the stop ran down_proj
    for name in lin:
        assert torch.equal(got[True][name].hessian, got[False][name].hessian)
    assert got[True]["self_attn.q_proj"] is got[True]["self_attn.v_proj"]  # shared input, shared statistics


def test_bfloat16_forwards_change_the_statistics_only_by_rounding(tiny_model_dir, tmp_path):
    """--forward-dtype bfloat16: the statistics stay float64 and within bf16
    rounding of the float32 pass, and the result is still exactly 2:4."""
    calib = torch.randint(0, 300, (4, 32))
    seen = {}
    for ac in (None, torch.bfloat16):
        spy = SpyWanda(True)
        out = prune_layers(tiny_model_dir, spy, calib, DriverArgs(batch_size=2, progress=False, autocast=ac),
                           WorkState(tmp_path / f"w{ac}", {"t": 1}))
        seen[ac] = spy.seen
        assert all((m.reshape(-1, 4).sum(-1) == 2).all() for m in out.masks.values())
    rels = []
    for a, b in zip(seen[None], seen[torch.bfloat16]):
        assert b.sqnorm.dtype == torch.float64
        rels.append(float((a.sqnorm - b.sqnorm).norm() / a.sqnorm.norm()))
    assert rels[0] == 0  # layer 0's q/k/v see the embeddings: no matmul before them
    assert 0 < max(rels) < 3e-2, rels  # bf16 matmuls change later statistics, but only by rounding


def test_cpu_bf16_detection_matches_the_cpu_flags():
    """cpu_has_bf16 (which makes --forward-dtype auto pick bf16) agrees with the kernel's CPU flags."""
    from pathlib import Path

    from sparse24.prune.cli import forward_autocast

    from sparse24.runtime import cpu_has_bf16

    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo on this OS")
    flags = set(info.read_text().split())
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    want = torch.bfloat16 if cpu_has_bf16() else None
    assert forward_autocast("auto", "cpu", torch.float32) == want
    assert forward_autocast("auto", "cpu", torch.bfloat16) is None  # already bf16 layers
    assert forward_autocast("float32", "cpu", torch.float32) is None
    assert forward_autocast("bfloat16", "cuda", torch.float16) == torch.bfloat16
    assert forward_autocast("auto", "cpu", torch.float32, method_allows=False) is None
    from sparse24.prune.base import get_pruner

    assert get_pruner("sparsegpt").bf16_forwards and not get_pruner("admm").bf16_forwards
    assert not get_pruner("armor").bf16_forwards and get_pruner("armor", init="wanda").bf16_forwards


def test_report_output_error_matches_the_float64_formula(tiny_model_dir, tmp_path):
    """The report's out_err of layer 0's q_proj is ‖XΔWᵀ‖²/‖XWᵀ‖² on its calibration inputs, in float64."""
    calib = torch.randint(0, 300, (3, 20))  # 60 tokens: all of them are probe rows
    out = prune_layers(tiny_model_dir, get_pruner("sparsegpt"), calib, DriverArgs(batch_size=3, progress=False,
                       autocast=None), WorkState(tmp_path / "w", {"t": 1}))
    name = "model.layers.0.self_attn.q_proj"
    row = next(r for r in out.report if r["name"] == name)
    dense = _load(tiny_model_dir)
    x = _q_inputs(dense, calib, 0)  # [60, hidden] float64
    w = dense.get_submodule(name).weight.detach().double()
    d = w - out.weights[name].double()
    ref = float((x @ d.t()).square().sum() / (x @ w.t()).square().sum())
    assert row["out_err"] == pytest.approx(ref, rel=1e-4)
