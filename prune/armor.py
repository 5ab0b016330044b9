"""ARMOR (arXiv 2510.05528) from a one-shot start: ``W ≈ D_r · A · (X⊙M) · B · D_c``, never worse than that start.

``A`` [out, out] and ``B`` [in, in] are block-diagonal (square blocks of ``block_size``), ``X⊙M`` is the 2:4 core
(groups along ``in``), ``D_r``/``D_c`` are NoWag's row/column norms of the dense ``W`` (they make Adam's step sizes
scale-free). Differences from the paper, and why:

- **Start**: the mask *and updated weights* of a registered one-shot pruner (``--armor-init``, default ``admm``) with
  ``A = B = I``, instead of NoWag-P: before any iteration the layer *is* the one-shot layer.
- **Objective**: the layer's calibration reconstruction error ``tr((Ŵ−W) H (Ŵ−W)ᵀ) / tr(W H Wᵀ)`` with the full input
  Hessian ``H`` (what ADMM/SparseGPT minimise) damped like theirs (``H + λI``, ``--armor-percdamp``: a ridge towards
  the dense weights), not NoWag's diagonal proxy: the start is a point of the same objective, so "never worse than
  the one-shot layer" is a statement about the number those methods report (the pruner checks it undamped).
- **Discrete step**: with a full ``H`` two groups of one output block interact through H's off-diagonal blocks, so a
  *round* updates one group per output block ``J`` (all blocks at once: different output rows never interact), exactly
  (best of the 6 supports, least-squares values; the old values are kept unless strictly better); ``sparse_steps``
  rounds per iteration. ``E·H`` and ``∂L/∂Z`` are tracked by rank-1 updates, so a round costs ``O(out·in)``.
- **Continuous step** (``--armor-update als``, the default): the problem is least squares in each of ``A``, ``B``,
  ``X`` with the other two fixed, so an iteration solves ``A`` exactly (one small system per output block) and takes
  a few conjugate-gradient steps on ``B`` and on the kept values of ``X``. On SmolLM2 layers this lowers the layer
  error 2-3x more per ``[out,in]x[in,in]`` product than the paper's Adam step (``--armor-update adam``, kept).
- **Monotone acceptance**: an iteration (its rounds, then the continuous step) is a proposal. Its objective is
  recomputed from scratch (one ``E·H`` product); if it is above the current point's, the proposal is dropped (the
  previous iterate, saved before the iteration, is copied back in place) and Adam's step size is halved. So the
  objective of the k-th iterate is never above the (k−1)-th, hence never above the start. The pruner then keeps the
  one-shot layer unless the result's float64 layer error is lower (:class:`~sparse24.prune.armor_pruner.ArmorPruner`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations

import torch
from sparse24.prune.args import flag
from torch import Tensor

__all__ = ["ArmorArgs", "ArmorState", "ArmorResult", "resolve_block_size", "block_size_for_budget",
           "normalize_weight", "block_left", "block_right", "block_product", "start_state", "objective", "grads",
           "update_groups", "sparse_round", "solve_a", "cg_b", "cg_x", "armor_layer", "SUPPORTS"]

SUPPORTS = torch.tensor(list(combinations(range(4), 2)))  # [6, 2]: the 2-of-4 supports
SELECTIONS = ("gradient_random", "gradient_greedy", "random")
UPDATES = ("als", "adam")
SMOLLM2_NOTE = ("SmolLM2-135M (134.5 M parameters; its 210 linears have sum(in+out) = 305,280, and the block must "
                "divide 192, 576 and 1536): 2 -> block 8 (+1.8 %%), 5 -> block 16 (+3.6 %%), 10 -> block 32 (+7.3 %%); "
                "block 96 is +21.8 %%")


def _block_size(text: str) -> int | str:
    """``--block-size`` parser: ``auto`` or a positive multiple of 4."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: pass a multiple of 4 (e.g. 96) or 'auto'") from None


@dataclass(frozen=True)
class ArmorArgs:
    """ARMOR hyperparameters (``--method armor``), sized for a CPU; the paper's replication scripts use block 128 and
    20000 iterations at lr 1e-4 on GPUs. ARMOR starts from --armor-init's result (run with that method's defaults)."""

    block_size: int | str = flag("auto", "A/B block size: a multiple of 4 dividing both dims of every pruned layer, "
                                 "or 'auto' (the largest such <= 128, SmolLM2: 96; or the one --armor-budget picks). "
                                 "Extra parameters per linear: block*(in+out)", type=_block_size)
    budget: float | None = flag(None, "extra-parameter budget in %% of the model's parameters: the largest block "
                                "size (dividing every pruned linear's dims) whose A/B parameters fit. "
                                + SMOLLM2_NOTE, name="--armor-budget", type=float)
    init: str = flag("admm", "the registered one-shot method whose mask and updated weights ARMOR starts from (with "
                     "A = B = I, so 0 iterations give exactly that method's layers), e.g. admm, sparsegpt, "
                     "sparsegpt-refit, wanda, magnitude; it runs with its default settings", name="--armor-init")
    iters: int = flag(8, "max iterations per linear; they are the cost (see --armor-update), on top of the init "
                      "method's own time", name="--armor-iters", quick=4)
    update: str = flag("als", "continuous step of an iteration: 'als' = the exact least-squares A (per output "
                       "block) then --armor-cg-steps conjugate-gradient steps on B and on the kept core values (about "
                       "2*cg+4 [out,in]x[in,in] products; on SmolLM2 layers 2-3x the error drop of Adam per product), "
                       "or 'adam' = one Adam step on A, B, core (the paper's; 1 product)", name="--armor-update",
                       choices=UPDATES)
    cg_steps: int = flag(4, "conjugate-gradient steps on B and on the core per 'als' iteration",
                         name="--armor-cg-steps")
    lr: float = flag(1e-3, "Adam learning rate for --armor-update adam, halved whenever an iteration is rejected "
                     "(the paper: 1e-4 with 20000 iterations; short budgets need a larger step)", name="--armor-lr")
    patience: int = flag(100, "stop after this many iterations without relative improvement > 1e-6",
                         name="--armor-patience")
    rtol: float = 1e-6
    atol: float = 1e-12
    select: str = flag("gradient_random", "group choice per output block: proportional to the L1 of dL/dZ, argmax, "
                       "or uniform", name="--armor-select", choices=SELECTIONS)
    percdamp: float = flag(0.01, "ridge towards the dense weights in ARMOR's objective, a fraction of mean diag(H) "
                           "added to H (as admm/SparseGPT): without it the many A/B parameters fit H's near-null "
                           "directions with huge weights when calibration is short", name="--armor-percdamp")
    sparse_steps: int = flag(4, "discrete rounds per iteration, each re-choosing the 2:4 support and values of one "
                             "group per output block", name="--armor-sparse-steps")
    seed: int = flag(0, "seed of ARMOR's random group choices", name="--armor-seed")
    eps: float = 1e-5  # NoWag norm floor

    def __post_init__(self) -> None:
        if self.update not in UPDATES:
            raise ValueError(f"--armor-update {self.update!r}: choose one of {list(UPDATES)}")
        if not self.percdamp >= 0:
            raise ValueError(f"--armor-percdamp {self.percdamp}: must be >= 0 (0.01 is the default)")
        if self.cg_steps < 0:
            raise ValueError(f"--armor-cg-steps {self.cg_steps}: must be >= 0")
        if self.select not in SELECTIONS:
            raise ValueError(f"--armor-select {self.select!r}: choose one of {list(SELECTIONS)}")
        if self.iters < 0 or self.patience < 1 or self.sparse_steps < 0 or self.lr < 0:
            raise ValueError(f"ARMOR needs --armor-iters >= 0 (got {self.iters}), --armor-patience >= 1 "
                             f"({self.patience}), --armor-sparse-steps >= 0 ({self.sparse_steps}) and --armor-lr >= 0 "
                             f"({self.lr})")
        if not (self.block_size == "auto" or (isinstance(self.block_size, int) and self.block_size > 0)):
            raise ValueError(f"--block-size {self.block_size!r}: pass a positive multiple of 4 or 'auto'")
        if self.budget is not None:
            if not self.budget > 0:
                raise ValueError(f"--armor-budget {self.budget}: pass a positive percentage, e.g. 5")
            if self.block_size != "auto":
                raise ValueError(f"--armor-budget {self.budget} picks the block size; drop --block-size "
                                 f"{self.block_size} (or drop --armor-budget)")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_block_size(block_size: int | str, out_features: int, in_features: int, cap: int = 128) -> int:
    """The block size for a ``[out, in]`` layer; ``"auto"`` = largest multiple of 4 <= ``cap`` dividing both."""
    if block_size == "auto":
        for bs in range(cap - cap % 4, 3, -4):
            if out_features % bs == 0 and in_features % bs == 0:
                return bs
        raise ValueError(f"ARMOR: no multiple of 4 <= {cap} divides both dims of a [{out_features}, {in_features}] "
                         "layer; keep this layer dense or prune it with another method")
    bs = int(block_size)
    if bs % 4 or out_features % bs or in_features % bs:
        raise ValueError(f"ARMOR: --block-size {bs} does not fit a [{out_features}, {in_features}] layer (it must be a "
                         "multiple of 4 dividing both dims); pass --block-size auto, or a divisor such as "
                         f"{resolve_block_size('auto', out_features, in_features)}")
    return bs


def block_size_for_budget(model_params: int, shapes: Sequence[tuple[int, int]], percent: float) -> int:
    """The largest block size (a multiple of 4 dividing every ``(out, in)`` of ``shapes``) whose A/B parameters,
    ``block·Σ(in+out)``, are at most ``percent`` % of ``model_params``."""
    if not shapes:
        raise ValueError("--armor-budget: no linear is pruned, so there is nothing to size")
    dims = sorted({d for s in shapes for d in s})
    per_block = sum(o + i for o, i in shapes)  # extra parameters per unit of block size
    fits = [bs for bs in range(4, min(dims) + 1, 4) if all(d % bs == 0 for d in dims)]
    allowed = percent / 100 * model_params
    ok = [bs for bs in fits if bs * per_block <= allowed]
    if not fits:  # cannot happen while every dim is a multiple of 4 (the driver checks in_features)
        raise ValueError(f"--armor-budget: no multiple of 4 divides all pruned dims {dims}; keep the odd linears dense "
                         "(--ignore)")
    if not ok:
        need = 100 * fits[0] * per_block / model_params
        raise ValueError(f"--armor-budget {percent}: even the smallest block size, {fits[0]}, adds {need:.2f} % "
                         "parameters; raise --armor-budget to at least that, or keep some linears dense (--ignore)")
    return max(ok)


def normalize_weight(w: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """NoWag normalisation: columns first, then rows. Returns ``(W̄, d_r, d_c)`` with ``W = d_r[:,None] W̄ d_c``."""
    d_c = w.norm(dim=0).clamp_min(eps)  # [in]
    w1 = w / d_c  # [out, in]
    d_r = w1.norm(dim=1).clamp_min(eps)  # [out]
    return w1 / d_r[:, None], d_r, d_c


def block_left(a: Tensor, z: Tensor) -> Tensor:
    """``blockdiag(a) @ z``: ``a`` [nJ, bs, bs], ``z`` [out, n] -> [out, n]."""
    nj, bs, _ = a.shape
    return torch.matmul(a, z.reshape(nj, bs, -1)).reshape(z.shape)  # [nJ, bs, n] -> [out, n]


def block_right(z: Tensor, b: Tensor) -> Tensor:
    """``z @ blockdiag(b)``: ``z`` [m, in], ``b`` [nK, bs, bs] -> [m, in]."""
    nk, bs, _ = b.shape
    zt = z.T.reshape(nk, bs, -1)  # [nK, bs, m]: (Z B)ᵀ = blockdiag(Bᵀ) Zᵀ runs as a batched left product
    return torch.matmul(b.mT, zt).reshape(z.shape[1], z.shape[0]).T  # [m, in] (a transposed view)


def block_product(a: Tensor, z: Tensor, b: Tensor) -> Tensor:
    """``blockdiag(a) @ z @ blockdiag(b)`` [out, in]."""
    return block_right(block_left(a, z), b)


@dataclass
class ArmorState:
    """What the descent changes (``a``, ``b``, ``x``, ``mask``) and the fixed problem: the dense target ``w``, the
    norms ``d_r``/``d_c``, the Hessian ``h`` and ``denom = tr(W H Wᵀ)``. ``Ŵ = d_r·(A (X⊙M) B)·d_c``."""

    a: Tensor  # [nJ, bs, bs]
    b: Tensor  # [nK, bs, bs]
    x: Tensor  # [out, in] values in the normalised basis (only kept entries matter)
    mask: Tensor  # [out, in] bool, exactly 2 of every 4 along in
    w: Tensor  # [out, in] dense target
    d_r: Tensor  # [out]
    d_c: Tensor  # [in]
    h: Tensor  # [in, in] Hessian of the layer input
    denom: Tensor  # scalar

    @property
    def bs(self) -> int:
        return self.a.shape[-1]

    def core(self) -> Tensor:
        return self.x * self.mask

    def weight(self) -> Tensor:
        """``Ŵ`` [out, in]."""
        return self.d_r[:, None] * block_product(self.a, self.core(), self.b) * self.d_c


def start_state(w: Tensor, hessian: Tensor, init_weight: Tensor, init_mask: Tensor, bs: int,
                eps: float = 1e-5) -> ArmorState:
    """``A = B = I`` and the core = the one-shot weights ``init_weight`` (2:4 on ``init_mask``) in W's normalised
    basis, so ``Ŵ`` equals ``init_weight`` up to rounding. Math in ``w``'s dtype."""
    _, d_r, d_c = normalize_weight(w, eps)
    h = hessian.to(w.dtype)
    eye = torch.eye(bs, dtype=w.dtype, device=w.device)
    x = (init_weight.to(w.dtype) / d_r[:, None] / d_c) * init_mask  # [out, in]
    denom = ((w @ h) * w).sum().clamp_min(torch.finfo(w.dtype).tiny)
    return ArmorState(eye.repeat(w.shape[0] // bs, 1, 1), eye.repeat(w.shape[1] // bs, 1, 1), x, init_mask.clone(),
                      w, d_r, d_c, h, denom)


def objective(state: ArmorState) -> tuple[Tensor, Tensor]:
    """``(L, E·H)``: the relative layer error ``tr(E H Eᵀ)/tr(W H Wᵀ)`` with ``E = Ŵ − W``, and ``E·H`` [out, in]."""
    e = state.weight() - state.w  # [out, in]
    eh = e @ state.h  # [out, in]: the one O(out·in²) product of an iteration
    return (e * eh).sum() / state.denom, eh


def grads(state: ArmorState, eh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``∂L/∂A`` [nJ,bs,bs], ``∂L/∂B`` [nK,bs,bs], ``∂L/∂X`` (masked), ``∂L/∂Z`` (unmasked) [out, in] from ``E·H``."""
    nj, bs, _ = state.a.shape
    nk, (out_f, in_f) = state.b.shape[0], state.x.shape
    z = state.core()
    g = (2 / state.denom) * eh * state.d_r[:, None] * state.d_c  # [out, in] ∂L/∂(A Z B)
    q = block_right(g, state.b.mT)  # [out, in] = G Bᵀ
    ga = torch.matmul(q.reshape(nj, bs, in_f), z.reshape(nj, bs, in_f).mT)  # [nJ, bs, bs]
    az = block_left(state.a, z)  # [out, in]
    gb = torch.matmul(az.reshape(out_f, nk, bs).permute(1, 2, 0), g.reshape(out_f, nk, bs).transpose(0, 1))
    gz = block_left(state.a.mT, q)  # [out, in]
    return ga, gb, gz * state.mask, gz


@torch.no_grad()
def update_groups(state: ArmorState, eh: Tensor, rows: Tensor, cols: Tensor,
                  gz: Tensor | None = None) -> Tensor:
    """Exact best support + values of one group per output block; updates ``state``, ``eh`` (and ``gz``) in place.

    ``rows`` [nJ]: the local row in each output block ``J``; ``cols`` [nJ]: the group's first global column (a
    multiple of 4). With ``α = d_r,J ⊙ A_J[:, r]`` [bs] and ``β`` = the group's 4 rows of ``B_K`` times ``d_c,K``
    [4, bs], changing the group's values by ``δz`` changes ``Ŵ`` by ``α ⊗ δz β`` on block (J, K), so the objective is
    a quadratic in ``z``: ``2 zᵀ f₀ + ‖α‖² zᵀ G z`` (group zeroed) with ``G = β H_KK βᵀ``. Groups of different output
    blocks touch different rows and never interact. Returns ``δz`` [nJ, 4].
    """
    bs, nj = state.bs, state.a.shape[0]
    in_f = state.x.shape[1]
    jdx = torch.arange(nj, device=rows.device)
    grow = (jdx * bs + rows)[:, None]  # [nJ, 1] global row
    kb, off = cols // bs, cols % bs  # [nJ]
    four = torch.arange(4, device=rows.device)
    gcol = cols[:, None] + four  # [nJ, 4]
    kcols = kb[:, None] * bs + torch.arange(bs, device=rows.device)  # [nJ, bs]
    alpha = state.d_r.reshape(nj, bs) * state.a[jdx, :, rows]  # [nJ, bs]
    beta = state.b[kb[:, None], off[:, None] + four] * state.d_c.reshape(-1, bs)[kb][:, None, :]  # [nJ, 4, bs]
    hk = state.h[kcols]  # [nJ, bs, in]: rows K of H
    hkk = hk.gather(2, kcols[:, None, :].expand(nj, bs, bs))  # [nJ, bs, bs] = H_KK
    g4 = beta @ hkk @ beta.mT  # [nJ, 4, 4]
    ehj = eh.reshape(nj, bs, in_f)  # view
    ehjk = ehj.gather(2, kcols[:, None, :].expand(nj, bs, bs))  # [nJ, bs, bs]
    an = alpha.square().sum(-1)  # [nJ]
    z_old = state.x[grow, gcol] * state.mask[grow, gcol]  # [nJ, 4]
    f_cur = torch.einsum("jgl,jl->jg", beta, torch.einsum("jo,jol->jl", alpha, ehjk))  # [nJ, 4]
    f0 = f_cur - an[:, None] * torch.einsum("jgh,jh->jg", g4, z_old)  # the same with the group zeroed
    sup = SUPPORTS.to(rows.device)
    gs = g4[:, sup[:, :, None], sup[:, None, :]]  # [nJ, 6, 2, 2]
    fs = f0[:, sup]  # [nJ, 6, 2]
    damp = 1e-9 * gs.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)  # [nJ, 6]
    g00, g01, g11 = gs[..., 0, 0] + damp, gs[..., 0, 1], gs[..., 1, 1] + damp  # [nJ, 6] each: 2x2 SPD systems
    det = (g00 * g11 - g01 * g01).clamp_min(torch.finfo(gs.dtype).tiny)
    sol = torch.stack([g11 * fs[..., 0] - g01 * fs[..., 1], g00 * fs[..., 1] - g01 * fs[..., 0]], -1) / det[..., None]
    safe_an = an.clamp_min(torch.finfo(an.dtype).tiny)
    best = (-(fs * sol).sum(-1)).argmin(-1)  # [nJ]: cost −f_Sᵀ G_S⁻¹ f_S / ‖α‖²
    z_new = torch.zeros_like(z_old).scatter_(1, sup[best], -sol[jdx, best] / safe_an[:, None])  # [nJ, 4]
    quad = lambda z: 2 * (z * f0).sum(-1) + an * torch.einsum("jg,jgh,jh->j", z, g4, z)  # noqa: E731
    take = ((quad(z_new) < quad(z_old)) & (an > 0) & torch.isfinite(z_new).all(-1))[:, None]  # [nJ, 1]
    m_old = state.mask[grow, gcol]
    state.mask[grow, gcol] = torch.where(take, torch.zeros_like(m_old).scatter_(1, sup[best], True), m_old)
    state.x[grow, gcol] = torch.where(take, z_new, state.x[grow, gcol])
    dz = torch.where(take, z_new - z_old, 0.0)  # [nJ, 4]
    v = torch.einsum("jg,jgc->jc", dz, torch.einsum("jgl,jlc->jgc", beta, hk))  # [nJ, in] = δz β H_K,:
    ehj += alpha[:, :, None] * v[:, None, :]
    if gz is not None:  # ∂L/∂Z = Aᵀ (2/denom · d_r E H d_c) Bᵀ changes by a rank-1 term per output block
        left = torch.einsum("jol,jo->jl", state.a, state.d_r.reshape(nj, bs) * alpha)  # [nJ, bs] = A_Jᵀ (d_r α)
        right = block_right(v * state.d_c, state.b.mT)  # [nJ, in]
        gz.reshape(nj, bs, in_f).add_((2 / state.denom) * left[:, :, None] * right[:, None, :])
    return dz


def _select(score: Tensor | None, how: str, p: int, n_groups: int, gen: torch.Generator | None,
            device: torch.device) -> Tensor:
    """One flat group index per output block; ``score`` [P, groups] = L1 of ∂L/∂Z per group."""
    if how == "random" or score is None:
        return torch.randint(0, n_groups, (p,), generator=gen, device=device)
    if how == "gradient_greedy":
        return score.argmax(-1)
    cdf = score.cumsum(-1)  # [P, groups]: inverse-CDF sampling, ∝ score (uniform if all zero)
    cdf = torch.where(cdf[:, -1:] > 0, cdf, torch.arange(1, n_groups + 1, device=device, dtype=cdf.dtype))
    u = torch.rand(p, 1, generator=gen, device=device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp_max(n_groups - 1)


@torch.no_grad()
def sparse_round(state: ArmorState, eh: Tensor, gz: Tensor | None, select: str = "gradient_random",
                 generator: torch.Generator | None = None) -> Tensor:
    """One discrete round: pick one group per output block (by ``gz``, the current ``∂L/∂Z``, unless ``random``)
    and re-choose it exactly (:func:`update_groups`); ``eh`` and ``gz`` are kept current. Returns ``δz`` [nJ, 4]."""
    nj, bs = state.a.shape[0], state.bs
    in_f = state.x.shape[1]
    per_row = in_f // 4
    score = None if gz is None else gz.abs().reshape(nj, bs * per_row, 4).sum(-1)  # [nJ, groups]
    flat = _select(score, select, nj, bs * per_row, generator, eh.device)
    return update_groups(state, eh, flat // per_row, (flat % per_row) * 4, gz)


@torch.no_grad()
def solve_a(state: ArmorState) -> None:
    """Replace ``A`` by its exact minimiser with ``Z``, ``B`` fixed (in place). With ``P = Z B D_c`` [out, in], rows
    ``J`` give ``Ŵ_J = D_r,J A_J P_J``, so each output block is a least-squares problem of its own:
    ``A_J = D_r,J⁻¹ (W_J H P_Jᵀ)(P_J H P_Jᵀ)⁻¹`` (a 1e-9 relative ridge keeps it solvable; solved in float64)."""
    nj, bs, _ = state.a.shape
    in_f = state.x.shape[1]
    p = (block_right(state.core(), state.b) * state.d_c).reshape(nj, bs, in_f)  # [nJ, bs, in]
    ph = (p.reshape(-1, in_f) @ state.h).reshape(nj, bs, in_f)  # [nJ, bs, in] = P H
    m = torch.matmul(ph, p.mT).double()  # [nJ, bs, bs] = P_J H P_Jᵀ
    n = torch.matmul(state.w.reshape(nj, bs, in_f), ph.mT).double()  # [nJ, bs, bs] = W_J H P_Jᵀ
    ridge = 1e-9 * m.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)  # [nJ]
    m = m + ridge[:, None, None] * torch.eye(bs, dtype=m.dtype, device=m.device)
    at = torch.linalg.solve(m, n.mT)  # [nJ, bs, bs] = (D_r,J A_J)ᵀ
    a = at.mT / state.d_r.reshape(nj, bs, 1).double()
    if torch.isfinite(a).all():
        state.a.copy_(a.to(state.a.dtype))


def _cg(apply: Callable[[Tensor], Tensor], grad: Tensor, steps: int) -> Tensor:
    """``steps`` conjugate-gradient steps from 0 on ``min ⟨g, d⟩ + ⟨d, 𝓗 d⟩`` (``apply`` = 𝓗, PSD); returns ``d``.
    Each step lowers that quadratic, i.e. the objective along the block being solved."""
    r = -0.5 * grad
    p, d = r.clone(), torch.zeros_like(grad)
    rr = (r * r).sum()
    for _ in range(steps):
        hp = apply(p)
        php = (p * hp).sum()
        if not bool(php > 0) or not bool(rr > 0):
            break
        alpha = rr / php
        d += alpha * p
        r -= alpha * hp
        rr_new = (r * r).sum()
        p = r + (rr_new / rr) * p
        rr = rr_new
    return d


@torch.no_grad()
def cg_b(state: ArmorState, steps: int) -> None:
    """``steps`` CG steps on ``B`` with ``A``, ``Z`` fixed (in place): ``Ŵ = Q B D_c`` with ``Q = D_r A Z``; the
    blocks of ``B`` couple through H's off-diagonal blocks, so the whole of ``B`` is one quadratic."""
    nk, bs, _ = state.b.shape
    q = state.d_r[:, None] * block_left(state.a, state.core())  # [out, in]
    out_f = q.shape[0]

    def blocks(right: Tensor) -> Tensor:  # [nK, bs, bs]: the diagonal blocks of Qᵀ·right
        return torch.matmul(q.reshape(out_f, nk, bs).permute(1, 2, 0), right.reshape(out_f, nk, bs).transpose(0, 1))

    e = block_right(q, state.b) * state.d_c - state.w  # [out, in]
    grad = 2 * blocks((e @ state.h) * state.d_c)
    state.b.add_(_cg(lambda v: blocks(((block_right(q, v) * state.d_c) @ state.h) * state.d_c), grad, steps))


@torch.no_grad()
def cg_x(state: ArmorState, steps: int) -> None:
    """``steps`` CG steps on the kept core values with ``A``, ``B`` and the mask fixed (in place)."""
    def fwd(z: Tensor) -> Tensor:  # [out, in] -> its part of Ŵ
        return state.d_r[:, None] * block_product(state.a, z, state.b) * state.d_c

    def adj(y: Tensor) -> Tensor:  # the adjoint of fwd on the mask
        return block_left(state.a.mT, block_right(y * state.d_r[:, None] * state.d_c, state.b.mT)) * state.mask

    grad = 2 * adj((fwd(state.core()) - state.w) @ state.h)
    state.x.mul_(state.mask).add_(_cg(lambda v: adj(fwd(v) @ state.h), grad, steps))


@dataclass
class ArmorResult:
    """A pruned layer: factors in the normalised basis plus the norms; ``weight()`` is the dense equivalent.

    ``history``: the objective of the start and after every iteration (non-increasing by construction)."""

    a: Tensor  # [nJ, bs, bs]
    x: Tensor  # [out, in], 2:4 with zeros
    mask: Tensor  # [out, in] bool
    b: Tensor  # [nK, bs, bs]
    d_r: Tensor  # [out]
    d_c: Tensor  # [in]
    loss_init: float
    loss: float
    iters: int
    accepted: int
    history: list[float]

    def weight(self) -> Tensor:
        """``W_eff = D_r A (X⊙M) B D_c`` [out, in]."""
        return self.d_r[:, None] * block_product(self.a, self.x * self.mask, self.b) * self.d_c


def armor_layer(w: Tensor, hessian: Tensor, init_weight: Tensor, init_mask: Tensor,
                settings: ArmorArgs | None = None, block_size: int | str | None = None,
                progress: Callable[[int, float], None] | None = None) -> ArmorResult:
    """ARMOR on one weight ``[out, in]`` from a one-shot result (``init_weight``, 2:4 on ``init_mask``), on the input
    Hessian ``hessian`` [in, in] (damped by ``settings.percdamp`` here); float32 math (float64 if ``w`` is float64).
    ``block_size`` overrides the settings' (the pruner passes what ``--armor-budget`` chose). Returns the last
    accepted iterate (see the module docstring)."""
    settings = settings or ArmorArgs()
    out_f, in_f = w.shape
    bs = resolve_block_size(settings.block_size if block_size is None else block_size, out_f, in_f)
    dt = torch.float64 if w.dtype == torch.float64 else torch.float32
    h = hessian.detach().to(device=w.device, dtype=torch.float64)
    h = h + settings.percdamp * float(torch.diagonal(h).mean()) * torch.eye(in_f, dtype=h.dtype, device=h.device)
    state = start_state(w.detach().to(dt), h, init_weight.detach(), init_mask, bs, settings.eps)
    gen = torch.Generator(device=w.device).manual_seed(settings.seed)
    with torch.no_grad():
        loss, eh = objective(state)
    loss = loss0 = float(loss)
    history = [loss0]
    params = [state.a, state.b, state.x]
    adam = settings.update == "adam"
    opt = torch.optim.Adam(params, lr=settings.lr, fused=w.device.type in ("cpu", "cuda")) if adam else None
    patience, it, accepted = settings.patience, 0, 0
    for it in range(1, settings.iters + 1):
        with torch.no_grad():
            saved = [t.clone() for t in (*params, state.mask, eh)]
            if settings.sparse_steps:
                gz = grads(state, eh)[3] if settings.select != "random" else None
                for _ in range(settings.sparse_steps):
                    sparse_round(state, eh, gz, settings.select, gen)
            if opt is not None:
                for p, g in zip(params, grads(state, eh)[:3]):
                    p.grad = g
                opt.step()
            else:
                solve_a(state)
                cg_b(state, settings.cg_steps)
                cg_x(state, settings.cg_steps)
            new, eh_new = objective(state)
            new = float(new)
            if new <= loss and new == new:  # accept (NaN compares False): the objective never goes up
                stalled = new > (1 - settings.rtol) * loss or new > loss - settings.atol
                loss, eh, accepted = new, eh_new, accepted + 1
            else:  # reject: restore the previous iterate in place, halve the step
                for t, s in zip((*params, state.mask), saved):
                    t.copy_(s)
                eh = saved[-1]
                for group in opt.param_groups if opt is not None else ():
                    group["lr"] *= 0.5
                stalled = True
        history.append(loss)
        patience = patience - 1 if stalled else settings.patience
        if progress is not None:
            progress(it, loss)
        if patience == 0:
            break
    return ArmorResult(state.a, state.core(), state.mask, state.b, state.d_r, state.d_c, loss0, loss, it, accepted,
                       history)
