"""``sparsify(model, config)``: swap ``nn.Linear`` instances for ``SparseLinear`` (torchao-style, no patching).

``config`` is one method config, or a dict ``{"_default": cfg, "model.layers.0.mlp.*": other_cfg, "lm_head": None}``
mapping FQNs (exact names or ``fnmatch`` patterns) to configs; ``None`` keeps a module dense. Embeddings and the
output head stay dense by default. Each config type maps to exactly one handler (:func:`register_handler`).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from sparse24.config import MagnitudeConfig, SparseConfig, SRSTEConfig, SSTEConfig
from sparse24.linear import SparseLinear, is_conv1d
from sparse24.runtime import set_module
from sparse24.sharding import all_sum, gather_rows, is_sharded, local, shard_rows
from sparse24.tracking import FlipTracker

log = logging.getLogger("sparse24")

__all__ = [
    "sparsify", "unsparsify", "register_handler", "sparse_modules", "update_masks", "apply_masked_decay",
    "set_dense_finetune", "ConfigSpec",
]

ConfigSpec = SparseConfig | dict[str, SparseConfig | None]
Handler = Callable[[nn.Module, SparseConfig], nn.Module]
_HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator: ``fn(module, config) -> new_module`` becomes the handler for ``config_type``."""

    def deco(fn: Handler) -> Handler:
        _HANDLERS[config_type] = fn
        return fn

    return deco


@register_handler(MagnitudeConfig)
def _apply_magnitude(module: nn.Module, config: MagnitudeConfig) -> nn.Module:
    return SparseLinear.from_dense(module, config)


@register_handler(SRSTEConfig)
def _apply_srste(module: nn.Module, config: SRSTEConfig) -> nn.Module:
    return SparseLinear.from_dense(module, config)


@register_handler(SSTEConfig)
def _apply_sste(module: nn.Module, config: SSTEConfig) -> nn.Module:
    return SparseLinear.from_dense(module, config)


def _output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    try:
        return get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        return None


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _default_filter(module: nn.Module, fqn: str) -> bool:
    return (type(module) is nn.Linear or is_conv1d(module) or isinstance(module, SparseLinear)) and \
        fqn.split(".")[-1] not in ("lm_head", "embed_out", "output")


def _resolve(config: ConfigSpec, fqn: str) -> tuple[SparseConfig | None, str, str | None]:
    """(config for this FQN, how it was chosen: "exact" name, "pattern" or "default", the dict key that chose it)."""
    if isinstance(config, SparseConfig):
        return config, "default", None
    if fqn in config:
        return config[fqn], "exact", fqn
    for pattern, cfg in config.items():
        if pattern != "_default" and fnmatch.fnmatchcase(fqn, pattern):
            return cfg, "pattern", pattern
    return config.get("_default"), "default", None


def _as_linear(module: SparseLinear) -> nn.Linear:
    """An ``nn.Linear`` sharing the module's dense weight and bias (same parameters), for re-configuring."""
    with torch.device("meta"):
        lin = nn.Linear(module.in_features, module.out_features, module.bias is not None)
    lin.weight, lin.bias = module.weight, module.bias
    return lin


def sparsify(
    model: nn.Module, config: ConfigSpec, filter_fn: Callable[[nn.Module, str], bool] | None = None,
    *, reconfigure: bool = False,
) -> nn.Module:
    """Replace the selected ``nn.Linear`` modules of ``model`` in place by their 2:4 versions; returns ``model``.

    Modules that are already 2:4 (``SparseLinear``) and selected again are refused, unless ``reconfigure=True``:
    then they are rebuilt with the new config from their dense weights (same parameters; mask and β recomputed).
    Names and patterns of a dict config that select no linear layer are reported with a warning.

    Example::

        model = sparsify(model, SSTEConfig())                      # every linear but the LM head
        model = sparsify(model, {"_default": None, "*.mlp.*": SRSTEConfig()})   # FFNs only
    """
    if not isinstance(config, (SparseConfig, dict)):
        raise TypeError(f"config must be a SparseConfig or a dict of FQN -> config, not {type(config).__name__}")
    head = _output_head(model)
    chosen, matched = [], set()
    for fqn, module in model.named_modules():
        if not fqn:
            continue
        cfg, how, key = _resolve(config, fqn)
        linear = _is_linear(module) or isinstance(module, SparseLinear)
        if key is not None and (linear or how == "exact"):
            matched.add(key)
        if cfg is None or (how == "pattern" and not linear):
            continue
        if how == "default":
            if module is head or not (filter_fn or _default_filter)(module, fqn):
                continue
            in_features = module.weight.shape[0 if is_conv1d(module) else 1]
            if in_features % 4:
                log.warning("sparse24: %s kept dense: in_features=%d is not divisible by 4", fqn, in_features)
                continue
        if type(cfg) not in _HANDLERS:
            raise TypeError(f"no sparsify handler for {type(cfg).__name__}; register one with @register_handler")
        if not linear:
            raise TypeError(f"{fqn} is a {type(module).__name__}, not an nn.Linear; only linear layers become 2:4")
        chosen.append((fqn, module, cfg))
    unmatched = [k for k in (config if isinstance(config, dict) else ()) if k != "_default" and k not in matched]
    if unmatched:
        log.warning("sparse24: sparsify: %s matched no linear layer of the model (check the names: "
                    "model.named_modules())", ", ".join(repr(k) for k in unmatched))
    again = [(fqn, m) for fqn, m, _ in chosen if isinstance(m, SparseLinear)]
    if again and not reconfigure:
        fqn, m = again[0]
        raise ValueError(
            f"sparsify: {fqn} ({len(again)} modules in all) is already 2:4 ({type(m.config).__name__}); sparsify "
            "converts dense linears only. Pass reconfigure=True to rebuild them with the new config from their dense "
            "weights (mask and β recomputed), or call sparse24.unsparsify(model) first")
    for i, (fqn, module, cfg) in enumerate(chosen):
        source = _as_linear(module) if isinstance(module, SparseLinear) else module
        try:
            new = _HANDLERS[type(cfg)](source, cfg)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{fqn}: {e}") from e
        if isinstance(module, SparseLinear) and isinstance(new, SparseLinear):
            new.conv1d = module.conv1d
        new.seed = i
        set_module(model, fqn, new)
    return model


def unsparsify(model: nn.Module) -> nn.Module:
    """Replace every ``SparseLinear`` by an ``nn.Linear`` holding its effective (2:4) weight; returns ``model``."""
    for fqn, module in list(model.named_modules()):
        if isinstance(module, SparseLinear):
            set_module(model, fqn, module.to_dense())
    return model


def sparse_modules(model: nn.Module) -> Iterator[tuple[str, SparseLinear]]:
    """``(fqn, module)`` for every ``SparseLinear`` in ``model``."""
    for fqn, module in model.named_modules():
        if isinstance(module, SparseLinear):
            yield fqn, module


def _local_mask(m: SparseLinear) -> torch.Tensor:
    """The mask of this rank's rows of a row-sharded (FSDP2) weight; 2:4 groups and 4x4 transposable blocks lie
    inside one shard, so this equals those rows of the mask of the full weight (mirrors ``compute_mask``)."""
    from sparse24.masks import magnitude_mask_24, transposable_mask_24

    w = local(m.weight).detach()  # [rows of this rank, in]
    if getattr(m.config, "transposable", False):
        if w.shape[0] % 4:
            raise ValueError(f"transposable 2:4 masks need every shard's rows to be a multiple of 4; this rank holds "
                             f"{w.shape[0]} of {m.out_features} rows: use a world size that divides out_features/4")
        return transposable_mask_24(w)
    return magnitude_mask_24(w)


@torch.no_grad()
def update_masks(model: nn.Module, tracker: FlipTracker | None = None) -> dict[str, float]:
    """Call after each optimizer step: advance every layer's step and refresh the masks that are due.

    Returns flip-rate statistics over the refreshed layers when a ``tracker`` is given (else ``{}``). Under FSDP2
    (row-sharded weights) each rank computes the mask of its own rows, the full mask buffer (which the forward
    needs) is all-gathered, the tracker sees the local rows and the flip counts are summed over the ranks.
    """
    refreshed, sharded = {}, False
    for fqn, m in sparse_modules(model):
        m.step += 1
        if not bool(m.dense_mode) and m.due_for_refresh():
            if is_sharded(m.weight):
                part = _local_mask(m)  # [rows of this rank, in]
                m.mask.copy_(gather_rows(part, m.out_features))
                refreshed[fqn], sharded = part, True
            else:
                m.refresh_mask()
                refreshed[fqn] = m.mask
        elif is_sharded(m.weight) and not bool(m.dense_mode):
            # FSDP2 keeps the version counter of the whole weight it gathers for each forward, so a cache of the
            # packed W̃ keyed on (weight, mask) versions would never see the step; an in-place no-op on the mask
            # bumps its version instead
            m.mask.logical_and_(m.mask)
    if tracker is None or not refreshed:
        return {}
    return tracker.update(refreshed, reduce=all_sum if sharded else None)


@torch.no_grad()
def apply_masked_decay(model: nn.Module, lr: float | None = None, scale: float = 1.0) -> None:
    """SR-STE masked decay for layers whose config places it outside autograd.

    ``decay_placement="grad"``: ``W.grad += λ(1−M)⊙W`` (call after clipping, before ``optimizer.step()``).
    ``decay_placement="weight"``: ``W -= lr·λ(1−M)⊙W`` (call after ``optimizer.step()``, with ``lr``).
    ``λ = config.decay · scale``: ``scale`` lets a schedule (AST's linear λ ramp) vary λ without new configs.
    Row-sharded (FSDP2) weights are decayed shard by shard with the matching rows of the mask.
    """
    for _, m in sparse_modules(model):
        cfg = m.config
        if not isinstance(cfg, SRSTEConfig) or not cfg.decay or bool(m.dense_mode):
            continue
        w = m.weight
        if cfg.decay_placement == "grad" and lr is None and w.grad is not None:
            from sparse24.kernels.masked_decay import masked_decay_  # lazy: kernels import triton

            # fused kernel on CUDA; under FSDP2 on this rank's rows
            masked_decay_(local(w.grad), local(w).detach(), shard_rows(m.mask, w), cfg.decay * scale)
        elif cfg.decay_placement == "weight" and lr is not None:
            local(w).sub_(local(w) * ~shard_rows(m.mask, w), alpha=lr * cfg.decay * scale)


def set_dense_finetune(model: nn.Module, enable: bool = True) -> int:
    """Switch every ``SparseLinear`` to exact dense mode (or back); returns how many layers were switched."""
    n = 0
    for _, m in sparse_modules(model):
        m.dense_finetune(enable)
        n += 1
    return n
