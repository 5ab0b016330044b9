"""Forward pre-hooks that accumulate calibration statistics of linear inputs (``Σ x²`` or ``Σ x xᵀ``).

Linears that receive the *same* input tensor in a forward (q/k/v, gate/up) share one accumulator, so a layer costs
one Hessian per distinct input instead of one per linear. Sums are taken in float32 per batch and added into float64.
With ``stop_when_done`` the forward is cut short (:class:`StatsDone`) as soon as every hooked linear has seen its
input, before the last one's matmul: a statistics pass whose outputs nobody reads skips ``down_proj`` and the rest.

For pruners that fit the *dense* model's outputs (``Pruner.dense_target``) the collector also takes, per batch, a
reference forward of the dense layer on the dense model's activations (:meth:`StatsCollector.begin_reference`): each
linear's dense input ``x_d`` is held for the batch and the pruned-stream pass adds ``Σ x x_dᵀ`` (``LayerStats.cross``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from sparse24.prune.base import LayerStats
from torch import Tensor, nn

__all__ = ["StatsCollector", "StatsDone", "gram"]


class StatsDone(Exception):
    """Raised by a pre-hook once every hooked linear has its input for this batch (``stop_when_done``)."""


@contextmanager
def _bf16_products(enabled: bool) -> Iterator[None]:
    """Let oneDNN multiply float32 matrices with bf16 inputs and float32 accumulation (CPU only). Only for operands
    whose values are bf16 numbers already: converting them is exact, so the product is a float32-accumulated one."""
    if not enabled:
        yield
        return
    mm = torch.backends.mkldnn.matmul
    old, mm.fp32_precision = mm.fp32_precision, "bf16"
    try:
        yield
    finally:
        mm.fp32_precision = old


def gram(x: Tensor, block: int = 512, bf16_values: bool = False) -> Tensor:
    """``xᵀx`` ``[in, in]`` of ``x`` ``[tokens, in]``, computing only the blocks on and above the diagonal (blocks of
    about ``block`` columns) and mirroring the rest: about 2/3 of the products, and on CPUs 1.5-2.5x faster than one
    ``x.t() @ x`` (measured for in = 576 and 1536, 1 thread), exactly symmetric.

    ``bf16_values``: every entry of ``x`` is a bf16 number (a linear's input produced under bf16 autocast); on a CPU
    the products then go through oneDNN with bf16 math allowed: exact for such inputs (float32 sums) whether oneDNN
    converts them (AMX) or not. On the AMD EPYC here it does not, and oneDNN's float32 kernel is 2x MKL's."""
    with _bf16_products(bf16_values and x.device.type == "cpu"):
        return _gram(x, block)


def _gram(x: Tensor, block: int) -> Tensor:
    n = x.shape[1]
    nb = max(2, round(n / block)) if n >= 256 else 1
    if nb == 1:
        return x.t() @ x
    edges = [n * i // nb for i in range(nb + 1)]
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    for i in range(nb):
        a0, a1 = edges[i], edges[i + 1]
        for j in range(i, nb):
            b0, b1 = edges[j], edges[j + 1]
            blk = x[:, a0:a1].t() @ x[:, b0:b1]  # [a, b]
            out[a0:a1, b0:b1] = blk
            if j != i:
                out[b0:b1, a0:a1] = blk.t()
    return out


class _Accumulator:
    def __init__(self, kind: str, in_features: int, device: torch.device) -> None:
        self.kind, self.nsamples, self.tokens = kind, 0, 0
        n = in_features
        self.sum = torch.zeros((n, n) if kind == "hessian" else (n,), dtype=torch.float64, device=device)
        self.cross: Tensor | None = None  # [in, in] Σ x x_dᵀ when a dense reference input is given
        self.probe: Tensor | None = None  # a few input rows kept for the reconstruction-error report

    def add(self, x: Tensor, samples: int, probe_rows: int, ref: Tensor | None = None) -> None:
        x2d = x.detach().reshape(-1, x.shape[-1]).float()  # [tokens, in]
        with torch.autocast(x.device.type, enabled=False):  # the hooks run inside the forward's autocast, if any
            if self.kind == "hessian":
                self.sum += gram(x2d, bf16_values=x.dtype == torch.bfloat16).double()  # [in, in]
            else:
                self.sum += x2d.square().sum(0).double()  # [in]
            if ref is not None:
                r2d = ref.detach().reshape(x2d.shape).float()  # [tokens, in] the dense model's input
                part = (x2d.t() @ r2d).double()  # [in, in]
                self.cross = part if self.cross is None else self.cross.add_(part)
        self.nsamples += samples
        self.tokens += x2d.shape[0]
        if self.probe is None and probe_rows:
            self.probe = x2d[:probe_rows].clone()

    def finish(self) -> LayerStats:
        n = max(self.nsamples, 1)
        if self.kind == "hessian":
            cross = self.cross * (2.0 / n) if self.cross is not None else None
            return LayerStats(self.nsamples, self.tokens, sqnorm=torch.diagonal(self.sum).clone() / n,
                              hessian=self.sum * (2.0 / n), cross=cross)
        return LayerStats(self.nsamples, self.tokens, sqnorm=self.sum / n)


class StatsCollector:
    """Hook ``linears`` (name -> module); call :meth:`begin_batch` before each forward, :meth:`stats` at the end."""

    def __init__(self, linears: dict[str, nn.Linear], kind: str, probe_rows: int = 512,
                 stop_when_done: bool = False) -> None:
        self.linears, self.kind, self.probe_rows, self.stop_when_done = linears, kind, probe_rows, stop_when_done
        self.acc: dict[str, _Accumulator] = {}
        self.owner: dict[str, str] = {}  # linear name -> name of the linear whose accumulator it shares
        self._batch: list[tuple[Tensor, str]] = []  # inputs seen in this forward (strong refs: ids stay unique)
        self._samples = 0
        self._seen: set[str] = set()
        self._ref: dict[str, Tensor] | None = None  # name -> dense input of this batch (reference pass)
        self._referencing = False
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in linears.items()]

    def begin_batch(self, samples: int) -> None:
        """The next forward is the pruned stream's (accumulating; paired with the last reference pass, if any)."""
        self._batch.clear()
        self._seen.clear()
        self._samples = samples
        self._referencing = False
        if samples == 0:
            self._ref = None

    def begin_reference(self) -> None:
        """The next forward is the dense layer on the dense model's activations: hold each linear's input, add
        nothing, never stop early (its outputs feed the dense stream)."""
        self._ref, self._referencing = {}, True

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if self._referencing:
                self._ref[name] = inputs[0]
                return
            self._record(name, inputs[0])
            self._seen.add(name)
            if self.stop_when_done and len(self._seen) == len(self.linears):
                raise StatsDone

        return hook

    def _record(self, name: str, x: Tensor) -> None:
        for seen, owner in self._batch:
            if seen is x:
                self.owner[name] = owner
                return
        self._batch.append((x, name))
        self.owner[name] = name
        if name not in self.acc:
            self.acc[name] = _Accumulator(self.kind, x.shape[-1], x.device)
        ref = None
        if self._ref is not None:
            if name not in self._ref:
                raise RuntimeError(f"{name}: the dense reference forward never reached this linear")
            ref = self._ref[name]
        self.acc[name].add(x, self._samples, self.probe_rows, ref)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._batch.clear()
        self._seen.clear()
        self._ref = None

    def stats(self) -> dict[str, LayerStats]:
        """Per linear name, the statistics of its input (shared objects for linears with a shared input)."""
        done = {n: a.finish() for n, a in self.acc.items()}
        missing = [n for n in self.linears if n not in self.owner]
        if missing:
            raise RuntimeError(f"no calibration input reached {missing}; the layer's forward never called them")
        return {n: done[self.owner[n]] for n in self.linears}

    def probes(self) -> dict[str, Tensor | None]:
        """Per linear name, up to ``probe_rows`` rows of its (dense-pass) input, for reconstruction errors."""
        return {n: self.acc[self.owner[n]].probe for n in self.linears}
