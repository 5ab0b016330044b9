"""Layer-sequential calibration driver (the Wanda/SparseGPT protocol): the loop every one-shot pruner runs inside.

For each decoder layer ``l``: load only that layer (from the safetensors shards) onto the device, hook its target
linears, run the calibration inputs through it to collect the statistics the pruner asked for, prune every target
linear, then produce the inputs of layer ``l+1``: re-run the *pruned* layer (``pruner.sequential``, Wanda/SparseGPT)
or keep the dense outputs of the statistics pass (layers independent; no built-in method today). The layer then goes
back to the meta device; only one layer plus the activations ``[nsamples, seqlen, hidden]`` live on the device at once.
Progress is written after every layer (:mod:`sparse24.prune.resume`). The driver names no method: what a pruner
returns besides weight and mask is declared by its ``extra_tensors`` (see :mod:`sparse24.prune.base`).

NaN/Inf are caught where they enter: every parameter of a loaded layer is checked (an error names the parameter and
blames the checkpoint), the calibration activations entering every layer and the statistics of every linear's input
are checked (an error names the module and blames the activations, never the weights or the Hessian), and so is every
pruner's output.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sparse24.prune.base import LayerStats, Pruner
from sparse24.prune.model_io import ShardReader, decoder_layers
from sparse24.prune.resume import WorkState
from sparse24.prune.stats import StatsCollector, StatsDone
from torch import Tensor, nn

from sparse24.masks import is_exact_24
from sparse24.runtime import release_memory

__all__ = ["DriverArgs", "PruneOutcome", "StoredTensors", "NonFiniteError", "prune_layers", "matches", "skeleton"]


class NonFiniteError(RuntimeError):
    """NaN/Inf met while pruning; the message names the module and whether weights or activations are at fault."""


@dataclass
class DriverArgs:
    """Everything about a run except the pruner, resolved: what to prune, where, in which dtype and batches."""

    targets: list[str] = field(default_factory=lambda: ["*"])
    ignore: list[str] = field(default_factory=list)
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    batch_size: int = 8
    progress: bool = True
    autocast: torch.dtype | None = None  # lower-precision autocast of the calibration forwards (None: ``dtype``)


@dataclass
class PruneOutcome:
    """Pruned weights and masks by linear name, and one report row per pruned linear.

    ``weights``/``masks``/``extras`` are mappings; :func:`prune_layers` returns them as :class:`StoredTensors` that read
    each tensor from the run's per-layer files when it is looked up, so the whole model's pruned weights are never
    all in memory at once (assembling the model copies them one at a time)."""

    weights: Mapping[str, Tensor]
    masks: Mapping[str, Tensor]
    report: list[dict[str, Any]]
    extras: Mapping[str, dict[str, Tensor]] = field(default_factory=dict)  # {name: {leaf: tensor}}: extra_tensors


class StoredTensors(Mapping):
    """``name -> tensor`` (or ``name -> {leaf: tensor}`` when ``leaves`` is given) read on lookup from a
    :class:`~sparse24.prune.resume.WorkState` (``index``: name -> layer)."""

    def __init__(self, state: WorkState, index: dict[str, int], leaf: str = "", leaves: tuple[str, ...] = ()) -> None:
        self.state, self.index, self.leaf, self.leaves = state, index, leaf, leaves

    def __getitem__(self, name: str) -> Any:
        layer = self.index[name]
        if self.leaves:
            return {k: self.state.load_tensor(layer, f"{name}.{k}") for k in self.leaves}
        return self.state.load_tensor(layer, f"{name}.{self.leaf}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)


def matches(name: str, targets: list[str], ignore: list[str]) -> bool:
    """Glob patterns (``*.mlp.*``) or regexes (``re:.*down_proj``) on full module names; ignore wins."""

    def hit(pat: str) -> bool:
        return bool(re.fullmatch(pat[3:], name)) if pat.startswith("re:") else fnmatch.fnmatchcase(name, pat)

    return any(hit(p) for p in targets) and not any(hit(p) for p in ignore)


def skeleton(model_dir: Path) -> nn.Module:
    """The model built on the meta device from its config (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for a decoder layer while capturing its call: saves kwargs (and layer 0's input), passes through."""

    def __init__(self, index: int, last: bool, sink: dict) -> None:
        super().__init__()
        self.index, self.last, self.sink = index, last, sink

    def forward(self, hidden: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if args:
            raise ValueError("decoder layers called with positional extras are not supported by the driver")
        self.sink.setdefault("kwargs", {}).setdefault(self.index, kwargs)
        if self.index == 0:
            self.sink["hidden"] = hidden
        if self.last:
            raise _Stop
        return hidden


def _nonfinite(t: Tensor) -> int:
    """How many entries of ``t`` are NaN/Inf. A finite sum proves there are none (one pass, no temporaries); only
    when it is not (a NaN/Inf, or finite values whose sum overflows) are the entries counted."""
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return 0
    return int((~torch.isfinite(t)).sum())


def _check_params(module: nn.Module, prefix: str) -> None:
    """Every parameter and buffer of a freshly loaded module is finite, else the checkpoint is at fault."""
    for key, t in module.state_dict().items():
        bad = _nonfinite(t)
        if bad:
            raise NonFiniteError(f"{prefix}.{key}: the checkpoint's weights contain {bad} NaN/Inf values (of "
                                 f"{t.numel()}); the source model is broken, not the calibration data: repair or "
                                 "re-download the checkpoint, or keep this module out of --targets")


def _check_acts(hidden: Tensor, index: int, pruned_before: bool) -> None:
    """The calibration activations entering decoder layer ``index`` are finite, else name where they came from."""
    bad = _nonfinite(hidden)
    if not bad:
        return
    src = ("the embeddings (model.embed_tokens, whose weights are finite)" if index == 0 else
           f"the output of model.layers.{index - 1} ({'pruned' if pruned_before else 'dense'}), computed from finite "
           "inputs with finite weights")
    raise NonFiniteError(f"model.layers.{index}: the calibration activations entering this layer contain {bad} "
                         f"NaN/Inf values, produced by {src}: the activations overflowed, the weights are not at "
                         "fault; compute in float32 (--dtype float32) or calibrate on other text (--calib)")


def _capture(model: nn.Module, reader: ShardReader, calib: Tensor, opts: DriverArgs,
             need_hidden: bool) -> tuple[Tensor | None, list[dict[str, Any]]]:
    """Embed the calibration samples (``[N, T]`` ids) -> layer-0 inputs ``[N, T, H]`` and each layer's kwargs."""
    inner, layers = model.model, decoder_layers(model)
    reader.load_module(inner.embed_tokens, "model.embed_tokens", opts.device, opts.dtype)
    _check_params(inner.embed_tokens, "model.embed_tokens")
    with torch.device(opts.device):
        inner.rotary_emb = type(inner.rotary_emb)(config=model.config)  # buffers are recomputed, not stored
    originals = list(layers)
    sink: dict[str, Any] = {}
    for i in range(len(layers)):
        layers[i] = _Recorder(i, i == len(layers) - 1, sink)
    hidden = []
    try:
        for s in range(calib.shape[0] if need_hidden else 1):
            try:
                inner(input_ids=calib[s : s + 1].to(opts.device), use_cache=False)
            except _Stop:
                pass
            hidden.append(sink["hidden"])
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        inner.embed_tokens.to("meta")
    kwargs = [sink["kwargs"][i] for i in range(len(layers))]
    return (torch.cat(hidden) if need_hidden else None), kwargs  # [N, T, H]


def _amp(opts: DriverArgs) -> Callable[[], Any]:
    """A context factory for the calibration forwards: ``opts.autocast`` if set, else nothing."""
    device_type = torch.device(opts.device).type
    return (lambda: torch.autocast(device_type, dtype=opts.autocast)) if opts.autocast else nullcontext


@torch.no_grad()
def _run_paired(layer: nn.Module, hidden: Tensor, dense: Tensor, kwargs: dict[str, Any], opts: DriverArgs,
                collector: StatsCollector) -> Tensor:
    """Per batch: the (still dense) layer on the dense model's activations ``dense`` (its linears' inputs held as the
    reference, its outputs returned: the next layer's dense activations), then on the pruned stream ``hidden``
    (statistics, paired with the reference)."""
    out = torch.empty_like(dense)  # [N, T, H]
    amp = _amp(opts)
    for b0 in range(0, hidden.shape[0], opts.batch_size):
        collector.begin_reference()
        with amp():
            y = layer(dense[b0 : b0 + opts.batch_size], **kwargs)
        out[b0 : b0 + opts.batch_size] = y[0] if isinstance(y, tuple) else y
        x = hidden[b0 : b0 + opts.batch_size]
        collector.begin_batch(x.shape[0])
        try:
            with amp():
                layer(x, **kwargs)
        except StatsDone:
            pass
    collector.begin_batch(0)
    return out


@torch.no_grad()
def _run_layer(layer: nn.Module, hidden: Tensor, kwargs: dict[str, Any], opts: DriverArgs,
               collector: StatsCollector | None, keep_output: bool) -> Tensor | None:
    """Push ``hidden`` through ``layer`` in batches (under ``opts.autocast``), feeding ``collector``; returns the
    outputs (kept in ``hidden``'s dtype) when ``keep_output``."""
    out = torch.empty_like(hidden) if keep_output else None  # [N, T, H]
    amp = _amp(opts)
    for b0 in range(0, hidden.shape[0], opts.batch_size):
        x = hidden[b0 : b0 + opts.batch_size]
        if collector is not None:
            collector.begin_batch(x.shape[0])
        try:
            with amp():
                y = layer(x, **kwargs)
        except StatsDone:  # every statistic of this batch is in; the rest of the forward is not needed
            continue
        if out is not None:
            out[b0 : b0 + opts.batch_size] = y[0] if isinstance(y, tuple) else y
    if collector is not None:
        collector.begin_batch(0)
    return out


def _errors(w: Tensor, new: Tensor, mask: Tensor, probe: Tensor | None,
            sparse: Tensor | None = None) -> dict[str, Any]:
    """Relative weight error ‖ΔW‖²/‖W‖² and output error ‖XΔWᵀ‖²/‖XWᵀ‖² on probe rows of the dense-pass input.

    ``sparse`` is the tensor that must be 2:4 (default ``new``; ARMOR's ``new`` is the dense ``A·core·B``)."""
    w64, d64 = w.double(), (w.double() - new.double())
    sparse = new if sparse is None else sparse
    row = {"weight_err": float(d64.square().sum() / w64.square().sum().clamp(min=1e-30)),
           "is_24": is_exact_24(sparse, mask)}
    if probe is not None:  # float32 products (a report, not a decision: 1e-6 relative is plenty), float64 sums
        x, d32 = probe.float(), d64.float()  # [P, in], [out, in]
        num, den = (x @ d32.t()).double().square().sum(), (x @ w.float().t()).double().square().sum()
        row["out_err"] = float(num / den.clamp(min=1e-30))
    return row


def _check_stats(full: str, index: int, st: LayerStats | None, probe: Tensor | None) -> None:
    """A linear's input statistics are finite, else its (finite-weight) inputs are at fault, not the Hessian."""
    if st is None:
        return
    bad = sum(_nonfinite(t) for t in (st.sqnorm, st.hessian) if t is not None)
    if not bad:
        return
    peak = f"; largest |x| in a probe of its inputs: {float(probe.abs().max()):.3g}" if probe is not None else ""
    raise NonFiniteError(f"{full}: the calibration activations at this linear's input are NaN/Inf or overflow "
                         f"({bad} non-finite statistics{peak}); they are produced inside model.layers.{index} from "
                         "finite inputs and finite weights, so the activations are at fault, not the weights or the "
                         "Hessian (more samples will not help): compute in float32 (--dtype float32)")


@torch.no_grad()
def _prune_layer(index: int, layer: nn.Module, names: dict[str, str], pruner: Pruner, hidden: Tensor | None,
                 kwargs: dict[str, Any], opts: DriverArgs,
                 dense: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, dict, list]:
    """Prune the target linears of one loaded layer; returns (next inputs, next dense-model inputs when ``dense``
    is given, tensors to save, report rows)."""
    linears = {full: layer.get_submodule(sub) for full, sub in names.items()}
    stats: dict[str, LayerStats | None] = dict.fromkeys(linears)
    probes: dict[str, Tensor | None] = dict.fromkeys(linears)
    dense_out = dense_next = None
    if pruner.stats != "none" and hidden is not None:
        col = StatsCollector(linears, pruner.stats, stop_when_done=pruner.sequential)
        try:
            if dense is not None:
                dense_next = _run_paired(layer, hidden, dense, kwargs, opts, col)
            else:
                dense_out = _run_layer(layer, hidden, kwargs, opts, col, keep_output=not pruner.sequential)
        finally:
            col.remove()
        stats, probes = col.stats(), col.probes()
        release_memory()  # the statistics pass's freed activations, before the solves allocate theirs
    tensors, rows = {}, []
    groups: dict[int | str, list[str]] = {}  # linears sharing one input (one LayerStats object) go together
    for full in linears:
        groups.setdefault(id(stats[full]) if stats[full] is not None else full, []).append(full)
    for group in groups.values():
        for full in group:
            _check_stats(full, index, stats[full], probes[full])
        results = pruner.prune_group({full: linears[full].weight.detach() for full in group}, stats[group[0]])
        for full in group:
            rows.append(_finish_linear(full, index, linears[full], results[full], pruner, probes[full], tensors))
    if hidden is None:
        return None, None, tensors, rows
    release_memory()  # the solves' freed temporaries, before the output pass
    nxt = _run_layer(layer, hidden, kwargs, opts, None, True) if pruner.sequential else dense_out
    return nxt, dense_next, tensors, rows


def _finish_linear(full: str, index: int, lin: nn.Module, res: Any, pruner: Pruner, probe: Tensor | None,
                   tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Check one pruner result, write it into ``lin``, add what is saved to ``tensors``; returns its report row."""
    w = lin.weight.detach()
    if res.weight.shape != w.shape or res.mask.shape != w.shape or res.mask.dtype != torch.bool:
        raise RuntimeError(f"pruner {pruner.name!r} returned bad shapes/dtypes for {full}")
    if set(res.extra) != set(pruner.extra_tensors):
        raise RuntimeError(f"pruner {pruner.name!r} returned extra tensors {sorted(res.extra)} for {full}; its "
                           f"class declares extra_tensors={pruner.extra_tensors}")
    bad = _nonfinite(res.weight) + sum(_nonfinite(t) for t in res.extra.values())
    if bad:
        raise NonFiniteError(f"{full}: {pruner.name} produced {bad} NaN/Inf values from finite weights and finite "
                             "activation statistics (a numerical failure of the method); compute in float32 "
                             "(--dtype float32) or change the method's settings")
    row = {"layer": index, "name": full, "shape": list(w.shape),
           **_errors(w, res.weight, res.mask, probe, res.sparse), **res.info}
    lin.weight.copy_(res.weight.to(w.dtype))
    tensors[full + ".weight"], tensors[full + ".mask"] = lin.weight.detach(), res.mask
    tensors.update({f"{full}.{k}": t for k, t in res.extra.items()})
    return row


def _targets(layers: nn.ModuleList, opts: DriverArgs) -> list[dict[str, str]]:
    per_layer = []
    for i, layer in enumerate(layers):
        sel = {f"model.layers.{i}.{sub}": sub for sub, m in layer.named_modules()
               if isinstance(m, nn.Linear) and matches(f"model.layers.{i}.{sub}", opts.targets, opts.ignore)}
        bad = [n for n, s in sel.items() if layer.get_submodule(s).in_features % 4]
        if bad:
            raise ValueError(f"{bad[0]} has in_features not divisible by 4; add it to --ignore")
        per_layer.append(sel)
    if not any(per_layer):
        raise ValueError(f"--targets {opts.targets} / --ignore {opts.ignore} select no linear inside the decoder "
                         "layers (names look like model.layers.0.mlp.down_proj)")
    return per_layer


def _eta(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def prune_layers(model_dir: Path, pruner: Pruner, calib: Tensor | None, opts: DriverArgs, state: WorkState,
                 on_layer_done: Callable[[int], None] | None = None) -> PruneOutcome:
    """Run the whole layer loop (resuming from ``state``) and return every pruned weight, mask and report row.

    After the first layer of this session it prints the expected time of the rest (from that layer's rate)."""
    from tqdm.auto import tqdm

    model = skeleton(model_dir)
    layers, reader = decoder_layers(model), ShardReader(model_dir)
    names = _targets(layers, opts)
    pruner.setup(model, {full: layers[i].get_submodule(sub) for i, sel in enumerate(names)
                         for full, sub in sel.items()})
    if pruner.stats != "none" and calib is None:
        raise ValueError(f"method {pruner.name!r} needs calibration data (--calib)")
    start, hidden, dense = state.resume_point()
    needs_data = pruner.stats != "none"
    paired = needs_data and bool(pruner.dense_target)
    if paired and not (pruner.sequential and pruner.stats == "hessian"):
        raise ValueError(f"pruner {pruner.name!r}: dense_target needs a sequential 'hessian' pruner")
    kwargs: list[dict[str, Any]] = [{}] * len(layers)
    if needs_data:
        hidden0, kwargs = _capture(model, reader, calib, opts, need_hidden=start == 0)
        hidden = hidden0 if start == 0 else hidden.to(opts.device)
        if paired:  # the dense model's activations: the same as the pruned stream's until the first pruned layer
            dense = hidden.clone() if start == 0 else dense.to(opts.device)
    bar = tqdm(range(start, len(layers)), desc=f"{pruner.name} layers", disable=not opts.progress,
               initial=start, total=len(layers))
    for i in bar:
        t0 = time.time()
        layer = layers[i]
        reader.load_module(layer, f"model.layers.{i}", opts.device, opts.dtype)
        _check_params(layer, f"model.layers.{i}")
        if needs_data:
            _check_acts(hidden, i, pruner.sequential)
        hidden, dense, tensors, rows = _prune_layer(i, layer, names[i], pruner, hidden if needs_data else None,
                                                    kwargs[i], opts, dense if paired else None)
        state.save_layer(i, tensors, {"rows": rows})
        state.save_acts(i + 1, hidden, dense)
        layer.to("meta")
        release_memory()  # else the freed layer's memory stays resident: RSS would grow by a layer each time
        left = len(layers) - i - 1
        if i == start and left:
            took = time.time() - t0
            tqdm.write(f"{pruner.name}: layer {i + 1}/{len(layers)} took {_eta(took)}; the remaining {left} layers "
                       f"should take about {_eta(took * left)} on this machine")
        if on_layer_done is not None:
            on_layer_done(i)
    where: dict[str, dict[str, int]] = {"weight": {}, "mask": {}, "extra": {}}  # kind -> linear name -> layer
    report: list[dict[str, Any]] = []
    for i in range(len(layers)):
        keys, rep = state.layer_keys(i)
        report += rep.get("rows", [])
        for key in keys:
            name, _, leaf = key.rpartition(".")
            where["extra" if leaf in pruner.extra_tensors else leaf][name] = i
    return PruneOutcome(StoredTensors(state, where["weight"], "weight"), StoredTensors(state, where["mask"], "mask"),
                        report, StoredTensors(state, where["extra"], leaves=pruner.extra_tensors))
