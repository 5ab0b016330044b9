"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is 2:4 by one of the configured methods.

It owns the dense weight (trainable), the mask (buffer), the method's state (β for S-STE, a step counter) and a
backend name. ``from_dense`` / ``to_dense`` are the only ways in and out; ``dense_finetune(True)`` turns it into an
exact dense linear in place (same parameters, so the optimizer keeps working) for the dense fine-tune phase.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse24.backends import select_backend
from sparse24.config import MagnitudeConfig, SparseConfig, SRSTEConfig, SSTEConfig
from sparse24.masks import check_weight, magnitude_mask_24, soft_threshold_24, sste_scale, transposable_mask_24
from sparse24.ste import MaskSTE, SoftThresholdSTE, SparseMatmul

__all__ = ["SparseLinear", "is_conv1d", "dense_linear"]


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
        self.backend = backend or self.config.backend
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))
        self.register_buffer("scale", torch.ones((), dtype=torch.float32, device=device))  # S-STE β, fixed
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("dense_mode", torch.zeros((), dtype=torch.bool, device=device))
        self.seed = 0  # MVUE stream; sparsify gives every layer its own
        self.conv1d = False  # converted from GPT-2's Conv1D (weight stored [in, out]): saved back in that layout
        self._generator: torch.Generator | None = None
        self.reset_parameters()
        if self.weight.device.type != "meta":
            self._init_method_state()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    # ---- conversion ------------------------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, linear: nn.Module, config: SparseConfig | None = None, backend: str | None = None) -> SparseLinear:
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
        for name, dtype in (("mask", torch.bool), ("scale", torch.float32), ("step", torch.int64), ("dense_mode", torch.bool)):
            setattr(mod, name, torch.zeros_like(getattr(mod, name), dtype=dtype, device=dev))
        mod._init_method_state()
        return mod

    @torch.no_grad()
    def _init_method_state(self) -> None:
        """Mask from the current weight; S-STE's β fitted once here and never again."""
        self.refresh_mask()
        self.scale.fill_(sste_scale(self.weight.detach()) if isinstance(self.config, SSTEConfig) else 1.0)

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

    # ---- masks -----------------------------------------------------------------------------------------------
    def compute_mask(self) -> Tensor:
        """The mask the method wants for the current dense weight (a Triton kernel on CUDA, else pure torch)."""
        w = self.weight.detach()
        transposable = getattr(self.config, "transposable", False)
        if w.is_cuda and w.dtype != torch.float64:
            try:
                from sparse24.kernels import mask24, transposable_mask
                from sparse24.kernels._utils import HAS_TRITON
            except ImportError:
                HAS_TRITON = False
            if HAS_TRITON:
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
        if bool(self.dense_mode):
            return w.clone()
        if isinstance(self.config, SSTEConfig):
            return soft_threshold_24(w) * self.scale.to(w.dtype)
        return w * self.mask

    def dense_finetune(self, enable: bool = True) -> None:
        """Switch to (or from) an exact dense linear, keeping the same parameters."""
        self.dense_mode.fill_(enable)

    # ---- forward ---------------------------------------------------------------------------------------------
    def generator(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.weight.device:
            self._generator = torch.Generator(device=self.weight.device)
            self._generator.manual_seed(self.seed)
        return self._generator

    def forward(self, x: Tensor) -> Tensor:
        if bool(self.dense_mode):
            return F.linear(x, self.weight, self.bias)
        cfg = self.config
        if isinstance(cfg, SSTEConfig):
            w = SoftThresholdSTE.apply(self.weight, self.scale)
        else:
            decay = cfg.decay if isinstance(cfg, SRSTEConfig) and cfg.decay_placement == "autograd" else 0.0
            w = MaskSTE.apply(self.weight, self.mask, decay)
        shape, tokens = (self.out_features, self.in_features), x.numel() // max(self.in_features, 1)
        mvue, fp8 = getattr(cfg, "mvue", False), getattr(cfg, "fp8", False)
        backend = self._fp8_backend(shape, w, tokens) if fp8 and self.backend == "auto" else None
        backend = backend or select_backend(self.backend, shape, w.dtype, w.device, tokens=tokens)
        fp8 = fp8 and not getattr(backend, "native_fp8", False)  # a native FP8 backend quantises itself
        gen = self.generator() if mvue and torch.is_grad_enabled() else None
        key = (id(self), self.weight._version, self.mask._version, self.scale._version)  # changes after each step
        return SparseMatmul.apply(x, w, self.bias, backend, backend.prepare(w.detach(), key=key), gen, mvue, fp8)

    @staticmethod
    def _fp8_backend(shape: tuple[int, int], w: Tensor, tokens: int):
        """With ``fp8=True`` and ``backend="auto"``: a native FP8 sparse backend where one can run, else None
        (then the GEMMs are simulated by quantise/dequantise)."""
        from sparse24.backends import BACKENDS, get_backend

        get_backend("dense")  # loads the GPU backends
        for b in BACKENDS.values():
            if getattr(b, "native_fp8", False) and b.check(shape, w.dtype, w.device) is None:
                return b
        return None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"method={self.config.name}, backend={self.backend}")
