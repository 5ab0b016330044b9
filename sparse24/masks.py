"""2:4 masks as pure functions of tensors: the reference every kernel is tested against.

Layout (torch's): groups of 4 consecutive elements along the **last** dimension; a 2:4 tensor keeps at most 2 per group.
Every mask here keeps *exactly* 2 per group, because the hardware format needs exactly two indices.

Tie rule (magnitude): within a group, a larger |a| wins; on equal |a| the **later** index wins (the same rule as the
2by4-pretrain Triton kernel). So ``[1, 1, 1, 1]`` keeps positions 2 and 3.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = [
    "check_weight",
    "is_exact_24",
    "magnitude_mask_24",
    "transposable_mask_24",
    "transposable_patterns",
    "retained_fraction",
    "soft_threshold_24",
    "sste_scale",
    "mvue_24",
    "mvue_inclusion_probs",
    "is_24",
    "MVUE_EPS",
]

MVUE_EPS = 1.19209e-7  # float32 machine epsilon, as in the reference MVUE (keeps all-zero groups well defined)


def check_weight(w: Tensor, name: str = "tensor", ndim: int | None = None, finite: bool = True) -> None:
    """Raise a clear error unless ``w`` can be grouped 2:4 along its last dimension."""
    if not isinstance(w, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    if ndim is not None and w.dim() != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D tensor, got shape {tuple(w.shape)}; "
            + ("reshape it to [out_features, in_features]" if ndim == 2 else f"reshape it to {ndim}-D")
        )
    if w.dim() < 1:
        raise ValueError(f"{name}: a 0-D tensor has no last dimension to group by 4")
    if not w.is_floating_point():
        raise TypeError(
            f"{name}: dtype {w.dtype} is not supported; 2:4 masks need a floating dtype "
            "(float32, float16, bfloat16, float64): cast with .float()"
        )
    if w.shape[-1] % 4 != 0:
        raise ValueError(
            f"{name}: last dimension {w.shape[-1]} is not divisible by 4 (2:4 groups run along it); "
            f"pad it to {(w.shape[-1] + 3) // 4 * 4} or leave this tensor dense"
        )
    if finite and w.numel() and not bool(torch.isfinite(w).all()):
        bad = (~torch.isfinite(w)).nonzero()[0].tolist()
        raise ValueError(f"{name}: contains NaN or Inf (first at index {bad}); fix the weights before masking")


def _groups(w: Tensor) -> Tensor:
    return w.reshape(*w.shape[:-1], w.shape[-1] // 4, 4)  # [..., in/4, 4]


def magnitude_mask_24(w: Tensor) -> Tensor:
    """Bool mask keeping the 2 largest |w| of every group of 4 along the last dim (later index wins ties)."""
    check_weight(w, "weight")
    a = w.abs().reshape(-1, 4)  # [G, 4]
    outranked = torch.zeros(a.shape, dtype=torch.uint8, device=w.device)  # how many group members beat each one
    for j in range(4):
        beats = a[:, j : j + 1] > a  # element j beats i on magnitude ...
        beats[:, :j] |= a[:, j : j + 1] == a[:, :j]  # ... or on a tie when j is the later index
        outranked += beats
    return (outranked < 2).reshape(w.shape)


def is_24(w: Tensor) -> bool:
    """True when every group of 4 along the last dim has at most 2 non-zeros."""
    return bool(((_groups(w) != 0).sum(-1) <= 2).all())


def is_exact_24(w: Tensor, mask: Tensor) -> bool:
    """A pruner's result is exactly 2:4: ``mask`` keeps exactly 2 of every group of 4 and ``w`` is :func:`is_24`."""
    return bool((_groups(mask).sum(-1) == 2).all()) and is_24(w)


def transposable_patterns(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The 90 4x4 0/1 patterns with every row and column summing to 2, as ``[16, 90]`` (row-major tiles).

    Order: descending lexicographic order of the row-major 16-bit code, so the first is 1100/1100/0011/0011.
    """
    rows = [r for r in itertools.product((1, 0), repeat=4) if sum(r) == 2]  # descending: 1100, 1010, ...
    pats = [p for p in itertools.product(rows, repeat=4) if all(sum(c) == 2 for c in zip(*p))]
    return torch.tensor(pats, dtype=dtype, device=device).reshape(len(pats), 16).t().contiguous()  # [16, 90]


_TILE_CHUNK = 1 << 15


def transposable_mask_24(w: Tensor, use_abs: bool = True) -> Tensor:
    """Exact transposable 2:4 mask: both ``M`` and ``M.T`` are 2:4 and ``sum(|w| * M)`` is maximal.

    Every aligned 4x4 tile is scored against the 90 valid patterns with one ``[tiles, 16] x [16, 90]`` product and
    takes its argmax (ties: the first pattern in :func:`transposable_patterns` order). Tiles are independent, so the
    per-tile argmax is the global optimum. Needs a 2-D weight with both dims divisible by 4.
    """
    check_weight(w, "weight", ndim=2)
    rows, cols = w.shape
    if rows % 4:
        raise ValueError(
            f"weight: first dimension {rows} is not divisible by 4, so W.T cannot be 2:4; "
            "use magnitude_mask_24 or pad the rows"
        )
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    a = w.abs() if use_abs else w
    tiles = a.to(acc).reshape(rows // 4, 4, cols // 4, 4).permute(0, 2, 1, 3).reshape(-1, 16)  # [tiles, 16]
    pats = transposable_patterns(w.device, acc)  # [16, 90]
    best = torch.empty(tiles.shape[0], dtype=torch.int64, device=w.device)  # [tiles]
    for s in range(0, tiles.shape[0], _TILE_CHUNK):  # chunks keep the [chunk, 90] scores in cache: ~3x faster
        best[s : s + _TILE_CHUNK] = (tiles[s : s + _TILE_CHUNK] @ pats).argmax(dim=1)
    mask = pats.t()[best].bool()  # [tiles, 16]
    return mask.reshape(rows // 4, cols // 4, 4, 4).permute(0, 2, 1, 3).reshape(rows, cols)


def retained_fraction(w: Tensor, mask: Tensor) -> float:
    """Fraction of total |w| that the mask keeps (the quality metric of a mask)."""
    a = w.abs().double()
    total = a.sum()
    return float((a * mask).sum() / total) if total > 0 else 1.0


def soft_threshold_24(w: Tensor) -> Tensor:
    """S-STE's continuous 2:4 projection: shrink the two largest |a| of each group by the 2nd-smallest |a|.

    ``S(a)_i = sign(a_i) * (|a_i| - t)`` on the kept two, 0 elsewhere, with ``t`` the 2nd-smallest |a| of the group
    (branch-free min/max form). Continuous in ``w``: when ranks 2 and 3 swap, both entries are near ``t``, so near 0.
    No finiteness check (it would sync the host on every training forward): a NaN comes out as NaN, visibly.
    """
    check_weight(w, "weight", finite=False)
    a = _groups(w.abs())
    a0, a1, a2, a3 = a.unbind(-1)
    t = torch.minimum(
        torch.maximum(torch.minimum(a0, a1), torch.minimum(a2, a3)),
        torch.minimum(torch.maximum(a0, a1), torch.maximum(a2, a3)),
    ).unsqueeze(-1)  # [..., G, 1]
    out = torch.sign(_groups(w)) * torch.clamp(a - t, min=0)
    return out.reshape(w.shape)


def sste_scale(w: Tensor) -> Tensor:
    """Least-squares β for ``w ≈ β·S(w)``: ``<w, S(w)> / <S(w), S(w)>`` in float64, returned as a float32 scalar."""
    s = soft_threshold_24(w).double()
    den = (s * s).sum()
    beta = (w.double() * s).sum() / den if den > 0 else torch.ones((), dtype=torch.float64, device=w.device)
    return beta.float()


def mvue_inclusion_probs(x: Tensor) -> Tensor:
    """Probability that each entry is kept by :func:`mvue_24` (sums to 2 per group), in float64."""
    a = _groups(x.abs().double()) + MVUE_EPS  # [..., G, 4]
    s = a.sum(-1, keepdim=True)
    t = a / s
    second = (t / (s - a)).sum(-1, keepdim=True) - t / (s - a)  # Σ_{i≠j} t_i/(S−a_i)
    return (t + a * second).reshape(x.shape)


def mvue_24(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Unbiased random 2:4 sparsification (approximate MVUE of Chmiel et al.): ``E[mvue_24(x)] = x``.

    Per group: draw index i with prob ``a_i/S``, then j≠i with prob ``a_j/(S−a_i)`` (``a = |x| + eps``), and keep
    ``x_k / p_k`` at the two drawn positions (Horvitz–Thompson with the exact inclusion probabilities ``p``).
    """
    check_weight(x, "gradient", finite=False)
    a = _groups(x.abs().float()) + MVUE_EPS  # [..., G, 4]
    u = torch.rand((*a.shape[:-1], 2), generator=generator, device=x.device, dtype=torch.float32)  # [..., G, 2]
    cdf1 = a.cumsum(-1) / a.sum(-1, keepdim=True)
    i = (cdf1 < u[..., :1]).sum(-1, keepdim=True).clamp(max=3)  # [..., G, 1]
    first = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, i, True)
    b = a.masked_fill(first, 0)
    cdf2 = b.cumsum(-1) / b.sum(-1, keepdim=True)
    j = (cdf2 < u[..., 1:]).sum(-1, keepdim=True).clamp(max=3)
    j = torch.where(j == i, (i + 1) % 4, j)  # only reachable through rounding at the cdf's top; keeps 2 distinct
    keep = first.scatter(-1, j, True).reshape(x.shape)
    p = mvue_inclusion_probs(x).to(x.dtype)
    return torch.where(keep, x / p, torch.zeros((), dtype=x.dtype, device=x.device))
