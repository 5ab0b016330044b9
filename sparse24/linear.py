"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is 2:4 by one of the configured methods.

It owns the dense weight (trainable), the mask (buffer), the method's state (``beta`` for S-STE), the packed weight
of its backend, and Python state (dense mode, step, MVUE stream) saved through ``get_extra_state``.

Per call the forward makes no decision and no host sync:
- the backend :class:`~sparse24.backends.Plan` is resolved when the layer is built, moved (``_apply``: ``.to()``,
  ``.cuda()``, ``.half()``) or its ``backend`` is set, for the weight dtype and the 16-bit autocast dtypes;
- the packed ``W̃`` lives on the module, re-packed only when the weight, mask or β version changes (once per optimizer
  step, however many micro-batches); freeing the module frees it;
- the input is made valid once at the boundary (:meth:`SparseLinear._boundary`).

Mixed precision: under ``torch.autocast`` the product runs in the autocast dtype (fp32 master weights train on the
bf16/fp16 sparse kernels; ``W̃`` is cast when packed, ``X`` and ``b`` at the boundary) and ``∇W`` comes back in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse24.backends import Backend, Plan, resolve
from sparse24.config import MagnitudeConfig, SparseConfig, SRSTEConfig, SSTEConfig
from sparse24.masks import check_weight, magnitude_mask_24, soft_threshold_24, sste_scale, transposable_mask_24
from sparse24.ste import SparseMatmul

__all__ = ["SparseLinear", "is_conv1d", "dense_linear"]

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
EXTRA_STATE_VERSION = 1


@torch.no_grad()
def dense_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A plain ``nn.Linear`` holding copies of ``weight`` ``[out, in]`` and ``bias`` (the way out of any 2:4 module)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype)
    lin.weight.copy_(weight)
    if bias is not None:
        lin.bias.copy_(bias)
    return lin


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2-style ``transformers.pytorch_utils.Conv1D``: a linear layer whose weight is stored ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


class SparseLinear(nn.Module):
    """``nn.Linear`` with a 2:4 weight. Same constructor arguments, plus ``config`` and ``backend``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        config: SparseConfig | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if in_features % 4:
            raise ValueError(
                f"SparseLinear: in_features={in_features} is not divisible by 4 (2:4 groups run along the input "
                "dimension); keep this layer dense or pad it"
            )
        self.in_features, self.out_features = in_features, out_features
        self.config = config if config is not None else MagnitudeConfig()
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))
        self.register_buffer("beta", torch.ones((), dtype=torch.float32, device=device))  # S-STE β, fixed
        self.dense_mode = False  # exact dense linear (dense fine-tune phase)
        self.step = 0  # optimizer steps seen (mask refresh schedule)
        self.seed = 0  # MVUE stream; sparsify gives every layer its own
        self.mvue_offset = 0  # position in the MVUE stream (advanced by every training forward)
        self.conv1d = False  # converted from GPT-2's Conv1D (weight stored [in, out]): saved back in that layout
        self._packed: tuple | None = None  # (key, prepared) for packing backends
        self._plans: dict[torch.dtype, Plan | Exception] = {}
        self._plan_key: tuple | None = None  # (device, dtype) the plans were resolved for
        self._rank = 0  # data-parallel rank: every rank draws its own MVUE samples
        self._backend = backend or self.config.backend
        self.reset_parameters()
        if self.weight.device.type != "meta":  # from_dense builds on meta, then resolves on the real device
            self._init_method_state()
            self._resolve()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    # ---- conversion ------------------------------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls, linear: nn.Module, config: SparseConfig | None = None, backend: str | None = None
    ) -> SparseLinear:
        """Wrap an ``nn.Linear`` (its weight and bias are reused, not copied) or a GPT-2 ``Conv1D`` (weight
        transposed into a new parameter). The mask and β come from its weight."""
        conv1d = is_conv1d(linear)
        weight = nn.Parameter(linear.weight.detach().t().contiguous()) if conv1d else linear.weight  # [out, in]
        check_weight(weight.detach(), "weight", ndim=2)
        out_f, in_f = weight.shape
        with torch.device("meta"):
            mod = cls(in_f, out_f, linear.bias is not None, dtype=weight.dtype, config=config, backend=backend)
        dev = weight.device
        mod.weight, mod.bias, mod.conv1d = weight, linear.bias, conv1d
        mod.mask = torch.zeros(out_f, in_f, dtype=torch.bool, device=dev)
        mod.beta = torch.ones((), dtype=torch.float32, device=dev)
        mod._init_method_state()
        mod._resolve()
        return mod

    @torch.no_grad()
    def _init_method_state(self) -> None:
        """Mask from the current weight; S-STE's β fitted once here and never again."""
        self.refresh_mask()
        self.beta.fill_(sste_scale(self.weight.detach()) if isinstance(self.config, SSTEConfig) else 1.0)

    def to_dense(self) -> nn.Module:
        """An ``nn.Linear`` (or ``Conv1D``, if it came from one) holding the effective weight."""
        if self.conv1d:
            from transformers.pytorch_utils import Conv1D

            lin = Conv1D(self.out_features, self.in_features).to(self.weight.device, self.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(self.sparse_weight().t())
                lin.bias.copy_(self.bias)
            return lin
        return dense_linear(self.sparse_weight(), self.bias)

    # ---- backend resolution (never per call) -----------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = name
        self._resolve()

    def _resolve(self) -> None:
        """Plans for the weight dtype and the autocast dtypes on the weight's device (reads the environment now)."""
        self._packed = None
        w = self.weight
        fp8 = bool(getattr(self.config, "fp8", False))
        mixed = w.dtype in (torch.float32, *AUTOCAST_DTYPES)  # autocast may run these in either 16-bit dtype
        dtypes = [w.dtype] + [d for d in AUTOCAST_DTYPES if mixed and d != w.dtype]
        plans: dict[torch.dtype, Plan | Exception] = {}
        for dt in dtypes:
            try:
                plans[dt] = resolve(self._backend, (self.out_features, self.in_features), dt, w.device, fp8=fp8)
            except RuntimeError as e:
                plans[dt] = e
        if all(isinstance(p, Exception) for p in plans.values()):
            raise plans[w.dtype]
        self._plans, self._plan_key = plans, (w.device, w.dtype)
        dist = torch.distributed
        self._rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0  # own MVUE stream

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        self._resolve()  # new device or dtype: new plan, old packed weight dropped
        return out

    def plan(self, dtype: torch.dtype | None = None) -> Plan:
        """The resolved plan for compute dtype ``dtype`` (default: the weight's)."""
        if self._plan_key != (self.weight.device, self.weight.dtype):  # parameters swapped in without _apply
            self._resolve()  # (load_state_dict(assign=True) onto a meta-built layer): once, then the key matches
        p = self._plans.get(dtype or self.weight.dtype)
        if p is None:
            raise TypeError(f"SparseLinear has no plan for compute dtype {dtype}; the weight is {self.weight.dtype}: "
                            "cast the layer (.to(dtype)) or the input")
        if isinstance(p, Exception):
            raise p
        return p

    # ---- masks -----------------------------------------------------------------------------------------------
    def compute_mask(self) -> Tensor:
        """The mask the method wants for the current dense weight (a Triton kernel on CUDA, else pure torch)."""
        w = self.weight.detach()
        transposable = getattr(self.config, "transposable", False)
        if w.is_cuda and w.dtype != torch.float64:
            from sparse24.kernels._utils import HAS_TRITON

            if HAS_TRITON:
                from sparse24.kernels import mask24, transposable_mask

                return transposable_mask.transposable_mask(w)[1] if transposable else mask24.mask24(w)[1]
        return transposable_mask_24(w) if transposable else magnitude_mask_24(w)

    @torch.no_grad()
    def refresh_mask(self) -> Tensor:
        """Recompute the mask from the dense weight now; returns the previous mask."""
        old = self.mask.clone()
        if self.weight.device.type != "meta":
            self.mask.copy_(self.compute_mask())
        return old

    def due_for_refresh(self) -> bool:
        """True if the step just finished is a refresh step for this method (S-STE tracks its implicit mask)."""
        period = 1 if isinstance(self.config, SSTEConfig) else self.config.mask_refresh
        return bool(period) and int(self.step) % period == 0

    @torch.no_grad()
    def sparse_weight(self) -> Tensor:
        """The effective 2:4 weight ``W̃`` as a plain tensor (dense weight in dense mode)."""
        w = self.weight.detach()
        if self.dense_mode:
            return w.clone()
        if isinstance(self.config, SSTEConfig):
            return soft_threshold_24(w) * self.beta.to(w.dtype)
        return w * self.mask

    def dense_finetune(self, enable: bool = True) -> None:
        """Switch to (or from) an exact dense linear, keeping the same parameters."""
        self.dense_mode = bool(enable)
        self._packed = None

    # ---- packed weight ---------------------------------------------------------------------------------------
    def _effective_weight(self, dtype: torch.dtype) -> Tensor:
        """``W̃`` in the compute dtype, outside autograd (the straight-through backward is in SparseMatmul)."""
        w = self.weight.detach()
        if isinstance(self.config, SSTEConfig):
            from sparse24.kernels.soft_threshold import soft_threshold

            return soft_threshold(w, self.beta).to(dtype)  # fused kernel on CUDA
        return w.to(dtype) * self.mask

    def _prepared(self, backend: Backend, dtype: torch.dtype):
        if not backend.packs:  # dense: W̃ is one elementwise pass, kept in the graph (compile-friendly)
            return backend.prepare(self._effective_weight(dtype))
        key = (backend.info.name, dtype, id(self.weight), self.weight._version, id(self.mask), self.mask._version,
               self.beta._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, backend.prepare(self._effective_weight(dtype)))
        return self._packed[1]

    # ---- forward ---------------------------------------------------------------------------------------------
    def _boundary(self, x: Tensor) -> tuple[Tensor, Tensor | None, torch.dtype]:
        """Make the input valid once, or refuse it: returns ``(x, bias, compute dtype)``.

        Under autocast the compute dtype is the autocast dtype and ``x`` and ``bias`` are cast to it (what
        ``nn.Linear`` does under autocast). Otherwise it is the weight's dtype: an input of another dtype is refused
        (as ``nn.Linear`` does), a bias of another dtype is cast. Layout is fixed in SparseMatmul (one copy for a
        non-contiguous input).
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"SparseLinear expects a floating tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: input shape {tuple(x.shape)} does not end in in_features="
                             f"{self.in_features}")
        dev = x.device.type
        if torch.is_autocast_enabled(dev) and self.weight.dtype in (torch.float32, *AUTOCAST_DTYPES):
            dtype = torch.get_autocast_dtype(dev)
            x = x.to(dtype)
        else:
            dtype = self.weight.dtype
            if x.dtype != dtype:
                raise TypeError(f"SparseLinear: input dtype {x.dtype} differs from the weight dtype {dtype}; cast the "
                                f"input (x.to({dtype})) or run under torch.autocast")
        bias = self.bias
        if bias is not None and bias.dtype != dtype:
            bias = bias.to(dtype)
        return x, bias, dtype

    def forward(self, x: Tensor) -> Tensor:
        if self.dense_mode:
            return F.linear(x, self.weight, self.bias)
        x, bias, dtype = self._boundary(x)
        plan = self.plan(dtype)
        backend = plan.pick(x.numel() // self.in_features)
        if backend is plan.backend or not plan.backend.packs:
            prepared = self._prepared(backend, dtype)
        else:  # below the crossover (decode): the dense product on the packed step's W̃, no per-call masking
            prepared = backend.prepare(self._prepared(plan.backend, dtype).w)
        cfg = self.config
        mvue = None
        if getattr(cfg, "mvue", False) and torch.is_grad_enabled():
            mvue = (self.seed + 1_000_003 * self._rank, self.mvue_offset)
            self.mvue_offset = (self.mvue_offset + 2 * self.out_features * (x.numel() // self.in_features + 3)) % 2**31
        decay = cfg.decay if isinstance(cfg, SRSTEConfig) and cfg.decay_placement == "autograd" else 0.0
        return SparseMatmul.apply(x, self.weight, bias, backend, prepared, mvue, plan.fp8_simulated, decay,
                                  self.mask if decay else None)

    # ---- state -----------------------------------------------------------------------------------------------
    def get_extra_state(self) -> Tensor:
        """Python state as one int64 tensor (safetensors- and ``weights_only``-safe)."""
        return torch.tensor([EXTRA_STATE_VERSION, int(self.dense_mode), int(self.step), int(self.seed),
                             int(self.mvue_offset)], dtype=torch.int64)

    def set_extra_state(self, state: Tensor) -> None:
        v = [int(t) for t in torch.as_tensor(state).tolist()]
        if not v or v[0] > EXTRA_STATE_VERSION:
            raise ValueError(f"SparseLinear extra state {v} is from a newer sparse24; upgrade sparse24")
        self.dense_mode, self.step, self.seed, self.mvue_offset = bool(v[1]), v[2], v[3], v[4]
        self._packed = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Also loads checkpoints written before the rename ``scale`` -> ``beta`` and before ``dense_mode``/``step``
        became Python state."""
        if prefix + "scale" in state_dict and prefix + "beta" not in state_dict:
            state_dict[prefix + "beta"] = state_dict.pop(prefix + "scale")
        old_dense, old_step = state_dict.pop(prefix + "dense_mode", None), state_dict.pop(prefix + "step", None)
        if prefix + "_extra_state" not in state_dict:
            dense = bool(old_dense) if old_dense is not None else self.dense_mode
            step = int(old_step) if old_step is not None else self.step
            state_dict[prefix + "_extra_state"] = torch.tensor(
                [EXTRA_STATE_VERSION, int(dense), step, self.seed, self.mvue_offset], dtype=torch.int64)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._packed = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"method={self.config.name}, backend={self.backend}")
