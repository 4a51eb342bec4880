"""Local quadratic approximation of the cost around samples (Li & Malik 2017, §3.4).

GPS "fits local quadratic approximations to c(s_t) around samples of s_t drawn from the
trajectory induced by ψ so that c(s_t) ≈ c̃(s_t) := ½ s_tᵀ C_t s_t + d_tᵀ s_t + h_t"
(§3.4). The cost of §3.3 is the true objective f(x^(t)) and depends on the state only,
so the action block of the returned ``QuadraticCost`` is zero; BADMM's action terms
(−λ_tᵀ a_t and the KL to π) are added later by the caller.

Layout: ``states`` ``(..., N, T, ds)``, ``costs`` ``(..., N, T)``; the fit is per step t
over the N samples (in convolutional GPS, §3.5, N = rollouts × coordinates of a group).

Method, per t (all float64):

1. Standardize u = (s − s̄) / σ (σ = sample std, 1 where a feature is constant), so the
   ridge is scale-invariant and shrinks towards the local linear model at s̄.
2. Ridge least squares c ≈ ½ uᵀ C̃ u + ẽᵀ u + g̃ on the features
   ``form="diag"``: [½ u_i²]_i, u, 1                 (2 ds + 1 terms)
   ``form="full"``: [½ u_i²]_i, [u_i u_j]_{i<j}, u, 1 (ds(ds+1)/2 + ds + 1 terms)
   minimizing (1/N) Σ_n (c_n − φ_nᵀ w)² + ridge ‖w‖² with the intercept unpenalized
   (features and costs are centred, the intercept is recovered afterwards). With more
   terms than samples the N × N dual system is solved instead of the primal one.
3. ``psd=True``: C̃ ← nearest PSD matrix (eigenvalues clipped at 0; for "diag" a clamp of
   the diagonal), then ẽ, g̃ are refitted by ridge least squares on the residual
   c − ½ uᵀ C̃ u, so the linear part stays consistent with the projected curvature.
4. Back to s: C = Σ⁻¹ C̃ Σ⁻¹ (Σ = diag σ), e = Σ⁻¹ ẽ, and
   d = e − C s̄, h = g̃ − eᵀ s̄ + ½ s̄ᵀ C s̄.

Why ``form="diag"`` is the default: the per-coordinate state of §3.6 has ds = 76, so the
full quadratic has 3003 terms, far more than the samples of one step usually give a
well-determined fit, and its normal equations cost O(T p³) with p ≈ 3k. The diagonal
form has 153 terms, is well determined with a few hundred samples, and its PSD
projection (needed so that LQG stays well posed) is a clamp. ``form="full"`` is
exact on quadratics with cross terms and meant for small ds or many samples.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from gps.types import QuadraticCost, check_finite

__all__ = ["fit_quadratic_cost", "fit_taylor_cost", "step_curvature"]

_F64 = torch.float64
_CHUNK_BYTES = 1 << 27  # feature matrices materialized at once; larger fits loop over T


def _sym(M: Tensor) -> Tensor:
    return 0.5 * (M + M.transpose(-1, -2))


def _ridge_solve(X: Tensor, y: Tensor, ridge: float) -> Tensor:
    """argmin_w (1/N) ‖y − X w‖² + ridge ‖w‖² for centred ``X`` ``(..., N, p)``, ``y``
    ``(..., N)``; the primal p × p system when p ≤ N, else the dual N × N one."""
    N, p = X.shape[-2:]
    # A relative floor keeps ridge=0 solvable when the features are rank deficient.
    floor = 1e-13
    if p <= N:
        G = _sym(X.transpose(-1, -2) @ X) / N
        scale = G.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
        G = G + (ridge + floor * scale)[..., None, None] * torch.eye(p, dtype=_F64)
        return torch.linalg.solve(G, (X.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1) / N)
    K = _sym(X @ X.transpose(-1, -2)) / N
    scale = K.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    K = K + (ridge + floor * scale)[..., None, None] * torch.eye(N, dtype=_F64)
    alpha = torch.linalg.solve(K, y.unsqueeze(-1) / N)
    return (X.transpose(-1, -2) @ alpha).squeeze(-1)


def _centred_fit(X: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """Ridge fit of y ≈ X w + b with b unpenalized: returns (w, b)."""
    xm, ym = X.mean(-2, keepdim=True), y.mean(-1, keepdim=True)
    w = _ridge_solve(X - xm, y - ym, ridge)
    b = ym.squeeze(-1) - (xm.squeeze(-2) * w).sum(-1)
    return w, b


def _quad_features(u: Tensor, form: str) -> Tensor:
    """Quadratic features of ``u`` ``(..., ds)`` whose coefficients are entries of C̃."""
    half_sq = 0.5 * u.square()
    if form == "diag":
        return half_sq
    ds = u.shape[-1]
    iu, ju = torch.triu_indices(ds, ds, offset=1)
    return torch.cat([half_sq, u[..., iu] * u[..., ju]], dim=-1)


def _quad_matrix(coef: Tensor, ds: int, form: str) -> Tensor:
    """Symmetric C̃ ``(..., ds, ds)`` from the quadratic coefficients."""
    C = torch.diag_embed(coef[..., :ds])
    if form == "full":
        iu, ju = torch.triu_indices(ds, ds, offset=1)
        C[..., iu, ju] = coef[..., ds:]
        C[..., ju, iu] = coef[..., ds:]
    return C


def _fit_steps(
    s: Tensor, c: Tensor, ridge: float, form: str, psd: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1–4 of the module docstring for ``s`` ``(..., N, t, ds)``, ``c`` ``(..., N, t)``:
    returns C ``(..., t, ds, ds)``, d ``(..., t, ds)``, h ``(..., t)``."""
    ds = s.shape[-1]
    # Put the sample axis next to last: (..., t, N, ds) and (..., t, N).
    s, c = s.movedim(-3, -2), c.movedim(-2, -1)
    mean = s.mean(-2)
    std = s.std(-2, correction=0)
    std = torch.where(std > 1e-12 * (1.0 + mean.abs()), std, torch.ones_like(std))
    u = (s - mean.unsqueeze(-2)) / std.unsqueeze(-2)
    q = _quad_features(u, form)
    w, g = _centred_fit(torch.cat([q, u], dim=-1), c, ridge)
    Ct = _quad_matrix(w[..., : q.shape[-1]], ds, form)
    e = w[..., q.shape[-1] :]
    if psd:
        if form == "diag":
            Ct = torch.diag_embed(Ct.diagonal(dim1=-2, dim2=-1).clamp_min(0.0))
        else:
            lam, V = torch.linalg.eigh(_sym(Ct))
            Ct = _sym((V * lam.clamp_min(0.0).unsqueeze(-2)) @ V.transpose(-1, -2))
        # Refit the linear part on what the projected curvature leaves unexplained.
        curv = 0.5 * ((u @ Ct) * u).sum(-1)
        e, g = _centred_fit(u, c - curv, ridge)
    inv = 1.0 / std
    C = _sym(Ct * inv.unsqueeze(-1) * inv.unsqueeze(-2))
    e = e * inv
    d = e - (C @ mean.unsqueeze(-1)).squeeze(-1)
    h = g - (e * mean).sum(-1) + 0.5 * ((C @ mean.unsqueeze(-1)).squeeze(-1) * mean).sum(-1)
    return C, d, h


def fit_quadratic_cost(
    states: Tensor,
    costs: Tensor,
    actions_dim: int,
    ridge: float = 1e-6,
    *,
    form: Literal["diag", "full"] = "diag",
    psd: bool = True,
) -> QuadraticCost:
    """Fit c̃_t(s) = ½ sᵀ C_t s + d_tᵀ s + h_t to samples (Li & Malik 2017, §3.4).

    ``states`` ``(..., N, T, ds)``, ``costs`` ``(..., N, T)``; returns a ``QuadraticCost``
    over x = [s; a] with ``dx = ds + actions_dim``: ``C`` ``(..., T, dx, dx)``, ``d``
    ``(..., T, dx)``, ``h`` ``(..., T)``, action rows/columns zero (the cost depends on the
    state only, §3.3). ``ridge`` penalizes the non-constant coefficients in standardized
    coordinates (see the module docstring); ``psd`` projects C onto the PSD cone so that
    LQG stays well posed. ``form``: "diag" (default, see module docstring) or "full".
    """
    if form not in ("diag", "full"):
        raise ValueError(f"form must be 'diag' or 'full', got {form!r}")
    if ridge < 0 or actions_dim < 0:
        raise ValueError(f"need ridge >= 0 and actions_dim >= 0, got {ridge}, {actions_dim}")
    if states.dim() < 3 or costs.shape != states.shape[:-1]:
        raise ValueError(
            f"states must be (..., N, T, ds) and costs (..., N, T); got "
            f"{tuple(states.shape)} and {tuple(costs.shape)}"
        )
    check_finite("states (..., N, T, ds)", states)
    check_finite("costs (..., N, T)", costs)
    states, costs = states.to(_F64), costs.to(_F64)
    N, T, ds = states.shape[-3:]
    if N < 1:
        raise ValueError("need at least one sample")
    p = ds + (ds if form == "diag" else ds * (ds + 1) // 2)
    per_step = 8 * math.prod(states.shape[:-3]) * max(N * p, min(N, p) ** 2)
    step = max(1, _CHUNK_BYTES // per_step)
    parts = [
        _fit_steps(states[..., t0 : t0 + step, :], costs[..., t0 : t0 + step], ridge, form, psd)
        for t0 in range(0, T, step)
    ]
    C_s = torch.cat([part[0] for part in parts], dim=-3)
    d_s = torch.cat([part[1] for part in parts], dim=-2)
    h = torch.cat([part[2] for part in parts], dim=-1)
    dx = ds + actions_dim
    C = C_s.new_zeros(*C_s.shape[:-2], dx, dx)
    C[..., :ds, :ds] = C_s
    d = d_s.new_zeros(*d_s.shape[:-1], dx)
    d[..., :ds] = d_s
    return QuadraticCost(C=C, d=d, h=h)


def fit_taylor_cost(
    states: Tensor,
    grads: Tensor,
    step_scale: float,
    curvature: Tensor | float,
    ridge: float = 1e-6,
    normalize: bool = True,
) -> QuadraticCost:
    """Per-coordinate share of f(x_{t+1}) from a second-order Taylor expansion at x_t.

    A departure from §3.4's state-only fit, made for the convolutional setting of §3.5:
    f(x_t + σa) ≈ f(x_t) + Σ_i σ g_i a_i + ½ σ² h Σ_i a_i², so coordinate i's share of
    the next objective is c_i(s, a) = σ g_i a + ½ σ² h a² (f(x_t) is the same for every
    coordinate and no action changes it, so it is dropped). A state-only fit of f on one
    coordinate's state cannot see this: f varies only across rollouts, and one coordinate's
    action moves it by ~1/n of the total. The gradient g_i is not a feature of s, so its
    coefficient is fitted: σ g ≈ wᵀ s + b by ridge least squares per step over the N
    samples (the gradient features of Φ make this fit close), giving C_sa = w, d_a = b,
    C_aa = σ² h.

    ``states`` ``(..., N, T, ds)``, ``grads`` ``(..., N, T)`` (the minibatch gradient of
    each sampled coordinate at each step), ``curvature`` h ≥ 0 broadcastable to
    ``(..., T)``: one scalar, one per step ``(T,)`` or per batch entry and step (see
    :func:`step_curvature`). Returns a cost over ``[s; a]`` with one action.
    ``normalize`` divides the cost by the RMS of σg over all samples and steps (per group),
    so the LQG's η and BADMM's ν mean the same thing whatever the loss scale: without it a
    per-coordinate cost of ~1e-4 is swamped by ν·KL(ψ‖π) and ψ just copies π.
    """
    if step_scale <= 0 or ridge < 0:
        raise ValueError(f"need step_scale > 0 and ridge >= 0, got {step_scale}, {ridge}")
    if states.dim() < 3 or grads.shape != states.shape[:-1]:
        raise ValueError(
            f"states must be (..., N, T, ds) and grads (..., N, T); got "
            f"{tuple(states.shape)} and {tuple(grads.shape)}"
        )
    check_finite("states (..., N, T, ds)", states)
    check_finite("grads (..., N, T)", grads)
    check_finite("curvature", torch.as_tensor(curvature, dtype=_F64))
    batch_T = states.shape[:-3] + states.shape[-2:-1]
    h = torch.as_tensor(curvature, dtype=_F64).clamp_min(0.0)
    try:
        h = torch.broadcast_to(h, batch_T)
    except RuntimeError as err:
        raise ValueError(f"curvature of shape {tuple(h.shape)} does not broadcast to "
                         f"(..., T) = {tuple(batch_T)}") from err
    s = states.to(_F64).movedim(-3, -2)  # (..., T, N, ds)
    y = step_scale * grads.to(_F64).movedim(-2, -1)  # (..., T, N)
    scale = y.square().mean((-2, -1)).sqrt().clamp_min(1e-300) if normalize else None
    mean = s.mean(-2, keepdim=True)
    std = s.std(-2, correction=0, keepdim=True)
    std = torch.where(std > 1e-12 * (1.0 + mean.abs()), std, torch.ones_like(std))
    w_u, b = _centred_fit((s - mean) / std, y, ridge)  # in standardized coordinates
    w = w_u / std.squeeze(-2)
    b = b - (w * mean.squeeze(-2)).sum(-1)
    ds = s.shape[-1]
    T = s.shape[-3]
    C = s.new_zeros(*s.shape[:-3], T, ds + 1, ds + 1)
    C[..., :ds, ds] = w
    C[..., ds, :ds] = w
    C[..., ds, ds] = step_scale**2 * h
    d = s.new_zeros(*s.shape[:-3], T, ds + 1)
    d[..., ds] = b
    if scale is not None:
        C = C / scale[..., None, None, None]
        d = d / scale[..., None, None]
    return QuadraticCost(C=C, d=d, h=s.new_zeros(*s.shape[:-3], T))


def step_curvature(df: Tensor, lin: Tensor, sq: Tensor, floor: float = 1e-3,
                   window: int | None = None) -> Tensor:
    """Least-squares h in f(x + Δ) − f(x) − gᵀΔ ≈ ½ h ‖Δ‖² over observed steps.

    ``df`` = f(x_{t+1}) − f(x_t), ``lin`` = gᵀΔ_t, ``sq`` = ‖Δ_t‖², any equal shapes (e.g.
    rollouts × steps); non-finite entries are ignored. Returns a scalar ≥ ``floor``: the
    one curvature the Taylor cost charges for step length. With ``window`` = w the last
    axis is time and h is fitted per block of w steps (steps t with the same t // w, over
    all rollouts): a ``(T,)`` curvature, for runs whose loss surface changes along the
    way (early steps that overshoot, late ones near a sharp minimum).
    """
    if not (df.shape == lin.shape == sq.shape) or floor <= 0:
        raise ValueError(f"df, lin and sq must have equal shapes and floor be > 0; got "
                         f"{tuple(df.shape)}, {tuple(lin.shape)}, {tuple(sq.shape)}, {floor}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        if df.dim() < 1:
            raise ValueError("a per-window curvature needs a time axis (the last)")
        T = df.shape[-1]
        blocks = [step_curvature(df[..., t0:t0 + window], lin[..., t0:t0 + window],
                                 sq[..., t0:t0 + window], floor)
                  for t0 in range(0, T, window)]
        return torch.stack(blocks).repeat_interleave(window)[:T]
    r, q = (df - lin).to(_F64), (0.5 * sq).to(_F64)
    ok = torch.isfinite(r) & torch.isfinite(q)
    r, q = r[ok], q[ok]
    den = (q * q).sum()
    h = (r * q).sum() / den if den > 0 else torch.tensor(floor, dtype=_F64)
    return h.clamp_min(floor)
