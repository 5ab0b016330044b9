"""ARMOR (arXiv 2510.05528): prune one linear layer to ``W ≈ D_r · A · (X⊙M) · B · D_c``.

``A`` [out, out] and ``B`` [in, in] are block-diagonal (square blocks of ``block_size``), ``X⊙M`` is the 2:4 core
(groups along ``in``), ``D_r``/``D_c`` are NoWag's row/column norms. The loss is NoWag's proxy: squared error on the
normalised weight, weighted per input column by the Hessian diagonal ``h`` (one calibration pass, no ``XᵀX``).
Start from NoWag-P (``A = B = I``), then block-coordinate descent: one Adam step on ``A, B, X``, then an exact
discrete update of one group of 4 per (output block, input block) pair — all pairs at once, since a group only
touches its own block of the product. The discrete step never increases the loss (it keeps the old values when the
best of the 6 supports is not better).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from itertools import combinations

import torch
from sparse24.prune.args import flag
from torch import Tensor

from sparse24.masks import magnitude_mask_24

__all__ = ["ArmorArgs", "ArmorState", "ArmorResult", "resolve_block_size", "normalize_weight",
           "clean_hessian_diag", "block_left", "block_right", "block_product", "proxy_loss", "loss_and_grads",
           "pair_residual", "nowag_p", "sparse_core_step", "update_groups",
           "armor_layer", "SUPPORTS"]

SUPPORTS = torch.tensor(list(combinations(range(4), 2)))  # [6, 2]: the 2-of-4 supports
SELECTIONS = ("gradient_random", "gradient_greedy", "random")


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
    """ARMOR hyperparameters (``--method armor``). The defaults are sized for a CPU (a few minutes on SmolLM2-135M);
    the paper's replication scripts use ``--block-size 128 --armor-iters 20000 --armor-lr 1e-4`` on GPUs."""

    block_size: int | str = flag("auto", "A/B block size: a multiple of 4 dividing both dims of every pruned layer, "
                                 "or 'auto' (the largest such <= 128; SmolLM2 gets 96). Extra parameters per linear: "
                                 "block*(in+out), SmolLM2: +22 %% at 96, +7 %% at 32", type=_block_size)
    iters: int = flag(8, "max iterations per linear; they are the cost: --quick's 4 took 19 min for SmolLM2 (210 "
                      "linears, block 96) on 2 heavily shared CPU cores, about 4-5 min on 2 free ones (estimated); "
                      "the paper's 20000 is GPU work", name="--armor-iters", quick=4)
    lr: float = flag(1e-3, "Adam learning rate (the paper: 1e-4 with 20000 iterations; short budgets need a larger "
                     "step)", name="--armor-lr")
    patience: int = flag(100, "stop after this many iterations without relative improvement > 1e-6",
                         name="--armor-patience")
    rtol: float = 1e-6
    atol: float = 1e-8
    select: str = flag("gradient_random", "group choice per block pair: proportional to the L1 of dL/dZ, argmax, or "
                       "uniform", name="--armor-select", choices=SELECTIONS)
    sparse_steps: int = flag(1, "discrete 2:4 updates per iteration (the paper: 1)", name="--armor-sparse-steps")
    seed: int = flag(0, "seed of ARMOR's random group choices", name="--armor-seed")
    eps: float = 1e-5  # NoWag norm floor

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"--armor-select {self.select!r}: choose one of {list(SELECTIONS)}")
        if self.iters < 0 or self.patience < 1 or self.sparse_steps < 0 or self.lr < 0:
            raise ValueError(f"ARMOR needs --armor-iters >= 0 (got {self.iters}), --armor-patience >= 1 "
                             f"({self.patience}), --armor-sparse-steps >= 0 ({self.sparse_steps}) and --armor-lr >= 0 "
                             f"({self.lr})")
        if not (self.block_size == "auto" or (isinstance(self.block_size, int) and self.block_size > 0)):
            raise ValueError(f"--block-size {self.block_size!r}: pass a positive multiple of 4 or 'auto'")

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


def normalize_weight(w: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """NoWag normalisation: columns first, then rows. Returns ``(W̄, d_r, d_c)`` with ``W = d_r[:,None] W̄ d_c``."""
    d_c = w.norm(dim=0).clamp_min(eps)  # [in]
    w1 = w / d_c  # [out, in]
    d_r = w1.norm(dim=1).clamp_min(eps)  # [out]
    return w1 / d_r[:, None], d_r, d_c


def clean_hessian_diag(h: Tensor) -> Tensor:
    """Replace non-finite or non-positive entries of the Hessian diagonal by the mean of the valid ones."""
    ok = torch.isfinite(h) & (h > 0)
    if not ok.any():
        return torch.ones_like(h)
    return torch.where(ok, h, h[ok].mean())


def block_left(a: Tensor, z: Tensor) -> Tensor:
    """``blockdiag(a) @ z``: ``a`` [nJ, bs, bs], ``z`` [out, in] -> [out, in]."""
    nj, bs, _ = a.shape
    return torch.matmul(a, z.reshape(nj, bs, -1)).reshape(z.shape)  # [nJ, bs, in] -> [out, in]


def block_right(z: Tensor, b: Tensor) -> Tensor:
    """``z @ blockdiag(b)``: ``z`` [out, in], ``b`` [nK, bs, bs] -> [out, in]."""
    nk, bs, _ = b.shape
    zt = z.T.reshape(nk, bs, -1)  # [nK, bs, out]: (Z B)ᵀ = blockdiag(Bᵀ) Zᵀ runs as a batched left product
    return torch.matmul(b.mT, zt).reshape(z.shape[1], z.shape[0]).T  # [out, in] (a transposed view)


def block_product(a: Tensor, z: Tensor, b: Tensor) -> Tensor:
    """``blockdiag(a) @ z @ blockdiag(b)`` [out, in]."""
    return block_right(block_left(a, z), b)


@dataclass
class ArmorState:
    """Everything the descent changes (``a``, ``b``, ``x``, ``mask``) plus the fixed target ``wbar`` and ``h``."""

    a: Tensor  # [nJ, bs, bs]
    b: Tensor  # [nK, bs, bs]
    x: Tensor  # [out, in] values (only kept entries matter)
    mask: Tensor  # [out, in] bool, exactly 2 of every 4 along in
    wbar: Tensor  # [out, in] normalised target
    h: Tensor  # [in] Hessian diagonal
    _denom: Tensor | None = field(default=None, repr=False)

    @property
    def bs(self) -> int:
        return self.a.shape[-1]

    def core(self) -> Tensor:
        return self.x * self.mask

    def denom(self) -> Tensor:
        """``Σ h_j W̄²_ij`` (fixed: computed once)."""
        if self._denom is None:
            self._denom = (self.wbar.square() * self.h).sum()
        return self._denom


def proxy_loss(state: ArmorState) -> Tensor:
    """``Σ h_j (Ŵ − W̄)²_ij / Σ h_j W̄²_ij`` with ``Ŵ = A (X⊙M) B``."""
    what = block_product(state.a, state.core(), state.b)
    return ((what - state.wbar).square() * state.h).sum() / state.denom()


def loss_and_grads(state: ArmorState, cache: tuple[Tensor, Tensor] | None = None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Proxy loss and its gradients w.r.t. ``a``, ``b``, ``x`` in closed form, plus ``∂L/∂Z`` unmasked.

    ``cache`` = ``(A·Z, Ŵ − W̄)`` at the current point when the caller tracked them (saves 2 of the 6 block matmuls).
    """
    nj, bs, _ = state.a.shape
    nk, out_f, in_f = state.b.shape[0], *state.x.shape
    z = state.core()
    if cache is None:
        p2 = block_left(state.a, z)  # [out, in] = A Z
        d = block_right(p2, state.b) - state.wbar  # [out, in]
    else:
        p2, d = cache
    g = d * state.h  # [out, in]
    loss = (g * d).sum() / state.denom()
    g *= 2 / state.denom()  # ∂L/∂Ŵ
    q = block_right(g, state.b.mT)  # [out, in] = G Bᵀ
    ga = torch.matmul(q.reshape(nj, bs, in_f), z.reshape(nj, bs, in_f).mT)  # [nJ, bs, bs]
    gb = torch.matmul(p2.reshape(out_f, nk, bs).permute(1, 2, 0), g.reshape(out_f, nk, bs).transpose(0, 1))
    gz = block_left(state.a.mT, q)  # [out, in]
    return loss, ga, gb, gz * state.mask, gz


def nowag_p(wbar: Tensor, h: Tensor, bs: int) -> ArmorState:
    """NoWag-P: keep the top-2 of ``W̄²·h`` in every group of 4, values ``W̄``, ``A = B = I``."""
    out_f, in_f = wbar.shape
    mask = magnitude_mask_24(wbar.square() * h)  # [out, in]
    eye = torch.eye(bs, dtype=wbar.dtype, device=wbar.device)
    a = eye.repeat(out_f // bs, 1, 1)
    b = eye.repeat(in_f // bs, 1, 1)
    return ArmorState(a, b, wbar.clone(), mask, wbar, h)


# ---- the discrete sparse-core step -------------------------------------------------------------------------------
def _pairs(t: Tensor, nj: int, nk: int, bs: int) -> Tensor:
    """[out, in] -> [nJ*nK, bs, bs] blocks, J-major (a copy)."""
    return t.reshape(nj, bs, nk, bs).transpose(1, 2).reshape(nj * nk, bs, bs)


def _unpairs(t: Tensor, nj: int, nk: int, bs: int) -> Tensor:
    """[nJ*nK, bs, bs] -> [out, in] (a copy)."""
    return t.reshape(nj, nk, bs, bs).transpose(1, 2).reshape(nj * bs, nk * bs)


def pair_residual(state: ArmorState) -> Tensor:
    """Weighted residual ``(Ŵ − W̄)·√h`` cut into (J, K) blocks [P, bs, bs], J-major."""
    resid = (block_product(state.a, state.core(), state.b) - state.wbar) * state.h.sqrt()  # [out, in]
    return _pairs(resid, state.a.shape[0], state.b.shape[0], state.bs)


def _select(score: Tensor | None, how: str, p: int, n_groups: int, gen: torch.Generator | None,
            device: torch.device) -> Tensor:
    """One flat group index (row * bs/4 + group) per block pair; ``score`` [P, groups] = L1 of ∂L/∂Z per group."""
    if how == "random" or score is None:
        return torch.randint(0, n_groups, (p,), generator=gen, device=device)
    if how == "gradient_greedy":
        return score.argmax(-1)
    cdf = score.cumsum(-1)  # [P, groups]: inverse-CDF sampling, ∝ score (uniform if all zero)
    cdf = torch.where(cdf[:, -1:] > 0, cdf, torch.arange(1, n_groups + 1, device=device, dtype=cdf.dtype))
    u = torch.rand(p, 1, generator=gen, device=device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp_max(n_groups - 1)


@torch.no_grad()
def update_groups(state: ArmorState, resid: Tensor, rows: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact best 2:4 support + values for one group per block pair; updates ``state`` and ``resid`` in place.

    ``resid`` [P, bs, bs] is :func:`pair_residual`. ``rows``/``groups`` [P]: local row and local group index in
    each (J, K) pair. Returns ``(a, u, dz)``: each block's weighted residual changed by ``a`` [P, bs] ⊗ ``u`` [P, bs],
    the group's core values by ``dz`` [P, 4].
    """
    bs, nk = state.bs, state.b.shape[0]
    idx = torch.arange(resid.shape[0], device=rows.device)
    pj, pk = idx // nk, idx % nk
    grow = (pj * bs + rows)[:, None]  # [P, 1] global row
    gcol = pk[:, None] * bs + groups[:, None] * 4 + torch.arange(4, device=rows.device)  # [P, 4] global columns
    a = state.a[pj, :, rows]  # [P, bs]: column r of A_J
    bt = state.b[pk[:, None], gcol - pk[:, None] * bs] * state.h.sqrt().reshape(nk, 1, bs)[pk]  # [P, 4, bs]
    x_old, m_old = state.x[grow, gcol], state.mask[grow, gcol]  # [P, 4]
    z_old = x_old * m_old
    an = a.square().sum(-1)  # [P]
    rta = torch.einsum("pol,po->pl", resid, a) - an[:, None] * torch.einsum("pg,pgl->pl", z_old, bt)  # Rᵀa, group out
    f4 = torch.einsum("pgl,pl->pg", bt, rta)  # [P, 4]
    g4 = torch.einsum("pgl,phl->pgh", bt, bt)  # [P, 4, 4]
    sup = SUPPORTS.to(rows.device)
    gs = g4[:, sup[:, :, None], sup[:, None, :]]  # [P, 6, 2, 2]
    fs = f4[:, sup]  # [P, 6, 2]
    damp = 1e-9 * gs.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)  # [P, 6]
    gs = gs + damp[..., None, None] * torch.eye(2, dtype=gs.dtype, device=gs.device)
    sol = torch.linalg.solve(gs, fs.unsqueeze(-1)).squeeze(-1)  # [P, 6, 2] = G_S⁻¹ f_S
    safe_an = an.clamp_min(torch.finfo(an.dtype).tiny)
    best = (-(fs * sol).sum(-1)).argmin(-1)  # [P]: cost −f_Sᵀ G_S⁻¹ f_S / ‖a‖² (common factor dropped)
    z_new = torch.zeros_like(z_old).scatter_(1, sup[best], -sol[idx, best] / safe_an[:, None])  # [P, 4]
    # exact quadratic cost of the old and new group values: keep the old ones unless strictly better
    quad = lambda z: 2 * (z * f4).sum(-1) + an * torch.einsum("pg,pgh,ph->p", z, g4, z)  # noqa: E731
    take = ((quad(z_new) < quad(z_old)) & (an > 0) & torch.isfinite(z_new).all(-1))[:, None]  # [P, 1]
    m_new = torch.zeros_like(m_old).scatter_(1, sup[best], True)
    state.mask[grow, gcol] = torch.where(take, m_new, m_old)
    state.x[grow, gcol] = torch.where(take, z_new, x_old)
    u = torch.einsum("pg,pgl->pl", torch.where(take, z_new - z_old, 0.0), bt)  # [P, bs]
    resid += a[:, :, None] * u[:, None, :]
    return a, u, torch.where(take, z_new - z_old, 0.0)


@torch.no_grad()
def sparse_core_step(state: ArmorState, n_times: int = 1, select: str = "gradient_random",
                     generator: torch.Generator | None = None, resid: Tensor | None = None,
                     gz: Tensor | None = None, p2: Tensor | None = None) -> Tensor:
    """``n_times`` discrete updates (one group per block pair each); returns the proxy loss afterwards.

    Optional, kept up to date in place: ``resid`` (:func:`pair_residual` of the current point), ``gz`` [P, bs, bs]
    (the selection gradient ``∝ ∂L/∂Z`` in pair layout; any scale, e.g. from the last Adam step) and ``p2`` = A·Z.
    """
    bs, nj, nk = state.bs, state.a.shape[0], state.b.shape[0]
    resid = pair_residual(state) if resid is None else resid  # [P, bs, bs]
    p, n_groups = nj * nk, bs * bs // 4
    idx = torch.arange(p, device=resid.device)
    sqh = state.h.sqrt().reshape(nk, 1, bs)
    scale = 2 / state.denom()
    if gz is None and select != "random":  # ∂L/∂Z_JK = A_Jᵀ (2/denom · E·√h)_JK B_Kᵀ, then rank-1 updates
        gz = torch.matmul(state.a.mT[idx // nk], torch.matmul(resid * sqh[idx % nk] * scale, state.b.mT[idx % nk]))
    bsq = state.b * sqh  # [nK, bs, bs]
    rows_p = (idx // nk * bs)[:, None, None] + torch.arange(bs, device=resid.device)[None, :, None]  # [P, bs, 1]
    for _ in range(n_times):
        score = None if gz is None else gz.abs().reshape(p, n_groups, 4).sum(-1)  # [P, groups]
        flat = _select(score, select, p, n_groups, generator, resid.device)
        groups = flat % (bs // 4)
        a, u, dz = update_groups(state, resid, flat // (bs // 4), groups)
        if gz is not None:
            left = torch.einsum("job,jko->jkb", state.a, a.reshape(nj, nk, bs)).reshape(p, bs)  # A_Jᵀ a
            right = torch.einsum("kcl,jkl->jkc", bsq, u.reshape(nj, nk, bs)).reshape(p, bs)  # B_K (u·√h_K)
            gz += scale * left[:, :, None] * right[:, None, :]
        if p2 is not None:  # A·Z changes in the group's 4 columns of block row J by a ⊗ dz
            cols = ((idx % nk) * bs + groups * 4)[:, None, None] + torch.arange(4, device=resid.device)  # [P, 1, 4]
            p2.index_put_((rows_p, cols), a[:, :, None] * dz[:, None, :], accumulate=True)
    return resid.square().sum() / state.denom()


# ---- the block-coordinate descent ---------------------------------------------------------------------------------
@dataclass
class ArmorResult:
    """A pruned layer: factors in the normalised space plus the norms; ``weight()`` is the dense equivalent."""

    a: Tensor  # [nJ, bs, bs]
    x: Tensor  # [out, in], 2:4 with zeros
    mask: Tensor  # [out, in] bool
    b: Tensor  # [nK, bs, bs]
    d_r: Tensor  # [out]
    d_c: Tensor  # [in]
    loss_init: float  # NoWag-P proxy loss
    loss: float
    iters: int

    def weight(self) -> Tensor:
        """``W_eff = D_r A (X⊙M) B D_c`` [out, in]."""
        return self.d_r[:, None] * block_product(self.a, self.x * self.mask, self.b) * self.d_c


def armor_layer(w: Tensor, h: Tensor, settings: ArmorArgs = ArmorArgs(), progress=None) -> ArmorResult:
    """Run ARMOR on one weight ``[out, in]`` with Hessian diagonal ``h`` [in] on w's device.

    Float32 math (float64 if ``w`` is float64). Returns the last iterate, or NoWag-P if that was better.
    """
    out_f, in_f = w.shape
    bs = resolve_block_size(settings.block_size, out_f, in_f)
    dt = torch.float64 if w.dtype == torch.float64 else torch.float32  # float32 math unless given float64
    wbar, d_r, d_c = normalize_weight(w.detach().to(dt), settings.eps)
    state = nowag_p(wbar, clean_hessian_diag(h.detach().to(device=w.device, dtype=dt)), bs)
    gen = torch.Generator(device=w.device).manual_seed(settings.seed)
    with torch.no_grad():
        loss0 = prev = float(proxy_loss(state))
    params = [state.a, state.b, state.x]
    opt = torch.optim.Adam(params, lr=settings.lr, fused=w.device.type in ("cpu", "cuda"))
    patience, it, cache = settings.patience, 0, None
    nj, nk, sqh = out_f // bs, in_f // bs, state.h.sqrt()
    init = [p.clone() for p in params] + [state.mask.clone()]  # NoWag-P, returned if the descent ends worse
    for it in range(1, settings.iters + 1):
        with torch.no_grad():
            _, *grads, gz = loss_and_grads(state, cache)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            p2 = block_left(state.a, state.core())  # [out, in] at the new point
            d = block_right(p2, state.b) - state.wbar
            if settings.sparse_steps:  # selection from the gradient of this iteration's Adam step (one step old)
                resid = _pairs(d * sqh, nj, nk, bs)  # [P, bs, bs]
                gzp = _pairs(gz, nj, nk, bs) if settings.select != "random" else None
                cur = float(sparse_core_step(state, settings.sparse_steps, settings.select, gen, resid, gzp, p2))
                d = _unpairs(resid, nj, nk, bs) / sqh
            else:
                cur = float((d.square() * state.h).sum() / state.denom())
            cache = (p2, d)
        stalled = cur > (1 - settings.rtol) * prev or cur > prev - settings.atol
        patience = patience - 1 if stalled else settings.patience
        prev = cur
        if progress is not None:
            progress(it, cur)
        if patience == 0:
            break
    a, b, x, mask = (state.a, state.b, state.x, state.mask) if prev <= loss0 else init
    return ArmorResult(a, x * mask, mask, b, d_r, d_c, loss0, min(prev, loss0), it)
