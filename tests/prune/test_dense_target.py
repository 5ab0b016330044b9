"""Dense-target pruning (``--admm-dense-target``): the driver's paired statistics against hooks on a plain forward of
the pruned and the dense model, the refit of the dense outputs against a float64 ``lstsq``, ADMM's objective, and a
killed run that resumes bit-identically."""

from __future__ import annotations

import pytest
import torch
from prune_fixtures import correlated_inputs, make_model_dir
from safetensors.torch import load_file
from sparse24.prune import cli as prune_cli
from sparse24.prune.admm import AdmmPruner
from sparse24.prune.base import LayerStats, get_pruner
from sparse24.prune.driver import DriverArgs, prune_layers
from sparse24.prune.refit import damped_hessian, fit_error, refit_rows
from sparse24.prune.resume import WorkState
from sparse24.prune.sparsegpt import sparsegpt_24


class SpyAdmm(AdmmPruner):
    """ADMM (dense target) that records the statistics it is handed, in call order."""

    def __init__(self, **kw) -> None:
        super().__init__(dense_target=1.0, iters=4, **kw)
        self.seen: list[LayerStats] = []

    def prune(self, weight, stats):
        self.seen.append(stats)
        return super().prune(weight, stats)


def _inputs(model, calib: torch.Tensor, module: str) -> torch.Tensor:
    """Inputs of ``module`` for every calibration sample from a plain full-model forward, float64 ``[tokens, in]``."""
    got = []
    h = model.get_submodule(module).register_forward_hook(lambda m, i, o: got.append(i[0]))
    with torch.no_grad():
        for s in range(calib.shape[0]):
            model(input_ids=calib[s : s + 1])
    h.remove()
    return torch.cat(got).reshape(-1, got[0].shape[-1]).double()


def test_cross_statistics_pair_the_pruned_and_the_dense_models_inputs(tiny_model_dir, tmp_path):
    from sparse24.prune.export import assemble
    from transformers import AutoModelForCausalLM

    calib = torch.randint(0, 300, (5, 24))
    spy = SpyAdmm()
    spy.rows_independent = False  # one prune call per linear, so spy.seen follows the module order
    out = prune_layers(tiny_model_dir, spy, calib, DriverArgs(batch_size=2, progress=False),
                       WorkState(tmp_path / "w", {"t": 1}))
    pruned = assemble(tiny_model_dir, out)
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    per_layer = len(spy.seen) // 2
    for layer, module in ((0, "self_attn.o_proj"), (1, "self_attn.q_proj"), (1, "mlp.down_proj")):
        name = f"model.layers.{layer}.{module}"
        k = per_layer * layer + [n for n, m in dense.model.layers[0].named_modules()
                                 if isinstance(m, torch.nn.Linear)].index(module)
        st = spy.seen[k]
        xd = _inputs(dense, calib, name)  # [tokens, in]
        # the pruned stream's input: through the pruned earlier layers, this layer still dense
        mixed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        for i in range(layer):
            mixed.model.layers[i] = pruned.model.layers[i]
        xs = _inputs(mixed, calib, name)
        n = calib.shape[0]
        torch.testing.assert_close(st.hessian, 2 * xs.t() @ xs / n, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(st.cross, 2 * xs.t() @ xd / n, rtol=1e-4, atol=1e-6)
        if layer == 0:  # nothing pruned before layer 0: both streams are the same
            torch.testing.assert_close(st.cross, st.hessian, rtol=1e-5, atol=1e-7)
        else:
            assert not torch.allclose(st.cross, st.hessian, rtol=1e-2)


def _pair(seed: int, tokens: int = 1024, cols: int = 64):
    g = torch.Generator().manual_seed(seed)
    xs = correlated_inputs(tokens, cols, g)  # [T, in] the pruned model's inputs
    mix = torch.eye(cols, dtype=xs.dtype) + 0.3 * torch.randn(cols, cols, dtype=xs.dtype, generator=g) / cols ** 0.5
    xd = xs @ mix + 0.05 * correlated_inputs(tokens, cols, g)  # the dense model's: related, not equal
    w = torch.randn(24, cols, dtype=torch.float32, generator=g)
    n = 4
    st = LayerStats(n, tokens, sqnorm=xs.square().sum(0) / n, hessian=2 * xs.t() @ xs / n, cross=2 * xs.t() @ xd / n)
    return xs, xd, w, st


@pytest.mark.parametrize("seed", [0, 1])
def test_refit_of_the_dense_outputs_equals_float64_lstsq(seed):
    xs, xd, w, st = _pair(seed)
    n, percdamp = st.nsamples, 0.01
    h, _ = damped_hessian(st.hessian, percdamp)
    lam = percdamp * float(torch.diagonal(st.hessian).mean())
    mask = get_pruner("magnitude").prune(w, None).mask
    w64 = w.double()
    rhs = w64 @ st.cross.t() + lam * w64  # [out, in]
    got = refit_rows(w64, mask, h, rhs=rhs, tol=1e-12, max_iters=500)
    for r in range(w.shape[0]):
        s = mask[r]
        a = torch.cat([(2 / n) ** 0.5 * xs[:, s], lam ** 0.5 * torch.eye(int(s.sum()), dtype=torch.float64)])
        b = torch.cat([(2 / n) ** 0.5 * xd @ w64[r], lam ** 0.5 * w64[r, s]])
        ref = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(got[r, s], ref, rtol=1e-6, atol=1e-8)
        assert (got[r, ~s] == 0).all()


def test_fit_error_is_the_dense_output_error_up_to_a_row_constant():
    xs, xd, w, st = _pair(2)
    new = torch.randn(w.shape, dtype=torch.float64)
    rhs = w.double() @ st.cross.t()
    brute = (2 / st.nsamples) * (xd @ w.double().t() - xs @ new.t()).square().sum(0)  # [out]
    const = (2 / st.nsamples) * (xd @ w.double().t()).square().sum(0)
    torch.testing.assert_close(fit_error(new, st.hessian, rhs) + const, brute, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_admm_dense_target_fits_the_dense_outputs_and_never_loses_to_sparsegpt(seed):
    xs, xd, w, st = _pair(seed)
    w64 = w.double()

    def dense_err(new):  # ‖X_d w − X_s ŵ‖² per row
        return (xd @ w64.t() - xs @ new.double().t()).square().sum(0)

    plain = get_pruner("admm").prune(w, st)
    fitted = get_pruner("admm", dense_target=1.0).prune(w, st)
    sg, _ = sparsegpt_24(w, st.hessian)
    assert (fitted.mask.reshape(-1, 4).sum(-1) == 2).all() and ((fitted.weight != 0) <= fitted.mask).all()
    assert (dense_err(fitted.weight) <= dense_err(sg) * (1 + 1e-6)).all()  # SparseGPT stays a candidate per row
    assert dense_err(fitted.weight).sum() < 0.9 * dense_err(plain.weight).sum()
    # mix 0 is the plain method bit for bit, cross given or not
    nocross = LayerStats(st.nsamples, st.tokens, sqnorm=st.sqnorm, hessian=st.hessian)
    zero = get_pruner("admm", dense_target=0.0).prune(w, st)
    assert torch.equal(zero.weight, get_pruner("admm").prune(w, nocross).weight)
    # no cross (no dense stream): the dense model's inputs are these inputs, i.e. the plain objective, bit for bit
    assert torch.equal(get_pruner("admm", dense_target=0.5).prune(w, nocross).weight, zero.weight)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_pruner("admm", dense_target=1.5)


class Killed(Exception):
    pass


def test_dense_target_run_resumes_bit_identically(tmp_path):
    model_dir = make_model_dir(tmp_path / "m", layers=3)

    def job(out):
        return prune_cli.parse_job(["--model", str(model_dir), "--method", "admm", "--admm-dense-target", "1",
                                    "--admm-iters", "4", "--calib", str(model_dir / "calib.txt"), "--nsamples", "4",
                                    "--seqlen", "32", "--batch-size", "2", "--out", str(out), "--no-progress"])

    def die_after_1(i: int) -> None:
        if i == 1:
            raise Killed

    job(tmp_path / "full").prune()
    with pytest.raises(Killed):
        job(tmp_path / "cut").prune(on_layer_done=die_after_1)
    acts = load_file(str(tmp_path / "cut.partial" / "acts.safetensors"))
    assert set(acts) == {"hidden", "dense"} and not torch.equal(acts["hidden"], acts["dense"])
    done: list[int] = []
    job(tmp_path / "cut").prune(on_layer_done=done.append)
    assert done == [2]
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_target_turns_the_mixed_objective_into_the_plain_one():
    """``W'`` of a dense-target ADMM: the plain damped objective of ``W'`` and the mixed damped objective differ by
    the same constant for any ``ŵ`` (so ARMOR, which measures the plain one, refines what ADMM fitted)."""
    xs, xd, w, st = _pair(3)
    mix, percdamp = 0.5, 0.01
    pruner = get_pruner("admm", dense_target=mix, percdamp=percdamp)
    target = pruner.fit_target(w.double(), st)  # float64 in, float64 out
    h, _ = damped_hessian(st.hessian, percdamp)
    lam = percdamp * float(torch.diagonal(st.hessian).mean())
    t = (1 - mix) * st.hessian + mix * st.cross.t()
    w64 = w.double()

    def plain(v):
        d = target - v
        return ((d @ h) * d).sum(1)

    def mixed(v):
        return fit_error(v, st.hessian, w64 @ t) + lam * (v - w64).square().sum(1)

    a, b = torch.randn(w.shape, dtype=torch.float64), torch.randn(w.shape, dtype=torch.float64)
    torch.testing.assert_close(plain(a) - plain(b), mixed(a) - mixed(b), rtol=1e-6, atol=1e-6)
    assert torch.equal(get_pruner("admm", dense_target=0.0).fit_target(w, st), w)


def test_armor_from_a_dense_target_admm_starts_at_it_and_never_loses():
    xs, xd, w, st = _pair(4)
    admm = get_pruner("admm", dense_target=0.5)
    one = admm.prune(w, st)

    def armor(iters):
        p = get_pruner("armor", block_size=8, iters=iters)
        p.init_pruner, p.dense_target = admm, admm.dense_target
        return p.prune(w, st)

    zero = armor(0)
    assert torch.equal(zero.weight, one.weight) and torch.equal(zero.mask, one.mask)
    target = admm.fit_target(w, st).double()
    h, _ = damped_hessian(st.hessian, 0.01)

    def err(v):  # the objective ARMOR and the dense-target ADMM share (plain, on the fit target)
        d = target - v.double()
        return float(((d @ h) * d).sum())

    res = armor(6)
    assert err(res.weight) <= err(one.weight) and res.info["armor_err"] <= res.info["armor_err_init"]
