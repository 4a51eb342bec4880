"""Bregman ADMM coupling of ψ and π (Li & Malik 2017, §3.4; per coordinate group, §3.5).

GPS relaxes ψ = π to equal mean actions, E_ψ[a_t] = E_ψ[E_π[a_t|s_t]] ∀t, and solves it
by Bregman ADMM (Wang & Banerjee 2014). One iteration:

    ψ ← argmin_ψ Σ_t E_ψ̃[c̃(s_t) − λ_tᵀa_t] + ν_t D_KL(ψ ‖ π)    s.t. Σ_t E_ψ̃[KL(ψ ‖ ψ')] ≤ ε
    θ ← argmin_θ Σ_t λ_tᵀ E_ψ[E_π[a_t|s_t]] + ν_t D_KL(π ‖ ψ)          (gps.policy.s_step)
    λ_t ← λ_t + α ν_t (E_ψ[E_π[a_t|s_t]] − E_ψ[a_t])                  (dual_update)

with π replaced by a linear-Gaussian fit π̃(a|s) = N(K̃_t s + k̃_t, Σ̃_t) wherever ψ's
subproblem needs it (footnote 2; :func:`fit_linear_policy`). Per §3.5 each coordinate
group is an independent subproblem with its own λ_t, ν_t (leading batch dims ``...``
of every tensor here, as in :mod:`gps.types`); ``da`` is 1 per coordinate there.

The ψ-update, exactly (:func:`psi_update`)
-------------------------------------------
Write P̃ = Σ̃⁻¹ and −log π̃(a|s) = ½(a − K̃s − k̃)ᵀP̃(a − K̃s − k̃) + ½ log|2πΣ̃|, a
quadratic in x = [s; a]. With KL(ψ‖ρ) = E_ψ[−log ρ] − H(ψ), the Lagrangian of the
trust-region problem with multiplier η is

    L(ψ, η) = Σ_t E[ ℓ_t(s_t, a_t) ] − (η + ν_t) H(ψ(·|s_t)) − ηε,
    ℓ_t = c̃_t − λ_tᵀa − ν_t log π̃_t − η log ψ'_t.

:func:`augment_cost` returns the quadratic c̃_t − λ_tᵀa − ν_t log π̃_t; adding
−η log ψ' is what gps.lqg adds. The ν-weighted entropy is where this differs from a
plain trust-region LQG, whose entropy weight is η. Maximum-entropy LQG with a
per-step entropy weight w_t solves min E[Q_t(s,a)] − w_t H(ψ_t) at each step of the
backward recursion; with ψ_t = N(Ks + k, Σ), E_a[Q_t] = Q_t(s, Ks + k) + ½tr(Q_uu Σ), so

    K_t s + k_t = argmin_a Q_t(s, a),    Σ_t = w_t Q_uu,t⁻¹,

and V_t(s) = min_a Q_t(s, a) + const: the gains and the quadratic and linear parts of
the value function do not depend on the weights w at all, only Σ_t and constants do.
gps.lqg.backward(dyn, augmented cost, η, prev=ψ') runs that recursion on ℓ_t/η with
weight 1, so it returns the exact K_t, k_t, and Σ_t^lqg = η Q_uu,t⁻¹. The exact ψ has
w_t = η + ν_t, hence

    Σ_t = (1 + ν_t/η) Σ_t^lqg,    Σ_t⁻¹ = Q_uu,t/(η + ν_t)  (the lqg Q_uu times η/(η+ν_t)).

This is the form implemented, for any time-varying ν_t. Two other forms, and why not:

* gps.lqg.solve on the augmented cost as is: the same gains but Σ_t = η Q_uu⁻¹, i.e.
  ν_t E[−log π̃] without ν_t H(ψ). As η → 0 (inactive trust region) ψ collapses to a
  deterministic controller and KL(ψ‖π) cannot go to 0: the covariance part of the
  BADMM coupling is lost.
* The reference GPS code (``AlgorithmBADMM.compute_costs``; Levine et al. 2016) divides
  step t's cost by (η + ν_t) and runs a weight-1 LQG: exact when ν_t is constant in t,
  but for time-varying ν_t the value propagated from t + 1 is scaled by 1/(η + ν_{t+1})
  and added to a step scaled by 1/(η + ν_t), which changes the gains themselves.

The η dual search of :func:`psi_update` then uses this exact ψ(η): it is the trust-region
search of gps.lqg.solve (same acceptance rule: (1 − rtol)ε < Σ_t KL(ψ‖ψ') ≤ ε, or η at
η_min with KL ≤ ε), evaluating the exact covariances. With ν_t > 0 and a PSD cost the
subproblem is strictly convex in the actions for every η > 0, so Q_uu stays PD even
at η_min. The Taylor costs of gps.cost are not PSD in (s, a) (C_ss = 0, C_sa ≠ 0), so
there Q_uu can fail at small η: the search raises η past it, as gps.lqg.solve does.

Everything is float64.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from gps.lqg import (
    LQGError,
    LQGSolution,
    _batch_index,
    _check_search_args,
    _check_tensor,
    _dims,
    _flatten,
    _inputs_checked,
    _take,
    backward,
    dual_search,
    forward,
    kl_divergence,
)
from gps.types import LinearDynamics, LinearGaussianController, QuadraticCost

__all__ = [
    "BADMMState",
    "adapt_nu",
    "augment_cost",
    "dual_update",
    "fit_linear_policy",
    "psi_controller",
    "psi_update",
    "sample_kl",
]

_F64 = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)


def _f64(name: str, x: Tensor | float) -> Tensor:
    if not isinstance(x, Tensor):
        return torch.tensor(float(x), dtype=_F64)
    if x.dtype != _F64:
        raise ValueError(f"{name} must be float64, got {x.dtype}")
    return x


@dataclass
class BADMMState:
    """BADMM variables of one coordinate group (leading dims ``...``: several groups).

    ``lam`` ``(..., T, da)``: λ_t, the multiplier of E_ψ[a_t] = E_ψ[E_π[a_t|s_t]];
    ``nu`` ``(..., T)``: ν_t > 0, the weight of the KL coupling at step t (one per group
    and step, §3.5); ``alpha``: the dual step size α of :func:`dual_update`.
    """

    lam: Tensor
    nu: Tensor
    alpha: float = 0.1

    def __post_init__(self) -> None:
        for f in ("lam", "nu"):
            x = getattr(self, f)
            if not isinstance(x, Tensor) or x.dtype != _F64:
                raise ValueError(f"BADMMState.{f} must be a float64 tensor")
        if self.lam.dim() < 2 or self.nu.shape[-1:] != self.lam.shape[-2:-1]:
            raise ValueError(
                f"BADMMState.lam must be (..., T, da) and nu (..., T); got "
                f"{tuple(self.lam.shape)} and {tuple(self.nu.shape)}"
            )
        if not bool((self.nu > 0).all()) or not bool(torch.isfinite(self.nu).all()):
            raise ValueError("BADMMState.nu must be finite and > 0")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"BADMMState.alpha must be finite and > 0, got {self.alpha!r}")

    @classmethod
    def initial(cls, T: int, da: int = 1, batch: tuple[int, ...] = (), nu: float = 0.01,
                alpha: float = 0.1) -> BADMMState:
        """λ = 0, ν_t = ``nu`` (the reference GPS code's ``init_pol_wt`` is 0.01)."""
        return cls(torch.zeros(*batch, T, da, dtype=_F64),
                   torch.full((*batch, T), float(nu), dtype=_F64), alpha)


# ----------------------------------------------------------------------------- ψ-update


def augment_cost(
    cost: QuadraticCost, lam: Tensor, nu: Tensor, pi_lin: LinearGaussianController
) -> QuadraticCost:
    """c̃_t(s, a) − λ_tᵀa − ν_t log π̃_t(a|s) as a quadratic in x = [s; a] (§3.4, fn. 2).

    With P̃ = Σ̃⁻¹ (π̃'s stored ``inv_cov``), −log π̃ = ½(a − K̃s − k̃)ᵀP̃(a − K̃s − k̃)
    + ½ log|2πΣ̃| adds ν_t [[K̃ᵀP̃K̃, −K̃ᵀP̃], [−P̃K̃, P̃]] to C_t, ν_t [K̃ᵀP̃k̃; −P̃k̃] to d_t
    and ν_t (½k̃ᵀP̃k̃ + ½ log|2πΣ̃|) to h_t; −λ_tᵀa adds −λ_t to the action part of d_t.
    E_ψ of this minus ν_t H(ψ) is the ψ-objective's step t; the entropy is supplied by
    :func:`psi_controller` (module docstring). ``lam`` ``(..., T, da)``, ``nu`` ``(..., T)``.
    """
    lam, nu = _f64("lam", lam), _f64("nu", nu)
    P, Kb, kb = pi_lin.inv_cov, pi_lin.K, pi_lin.k
    lead = torch.broadcast_shapes(P.shape[:-2], Kb.shape[:-2], kb.shape[:-1])
    P, Kb, kb = (P.expand(*lead, *P.shape[-2:]), Kb.expand(*lead, *Kb.shape[-2:]),
                 kb.expand(*lead, kb.shape[-1]))
    PK = P @ Kb
    Pk = (P @ kb[..., None])[..., 0]
    M = torch.cat([torch.cat([Kb.mT @ PK, -PK.mT], -1), torch.cat([-PK, P], -1)], -2)
    m = torch.cat([(Kb.mT @ Pk[..., None])[..., 0], -Pk], -1)
    da = P.shape[-1]
    logdet = 2.0 * torch.log(torch.diagonal(pi_lin.chol, dim1=-2, dim2=-1)).sum(-1)
    h0 = 0.5 * (kb * Pk).sum(-1) + 0.5 * (da * _LOG_2PI + logdet)
    lam_x = torch.cat([torch.zeros_like(m[..., : m.shape[-1] - da]).expand(
        *lam.shape[:-1], m.shape[-1] - da), lam], -1)
    C = cost.C + nu[..., None, None] * M
    return QuadraticCost(C=0.5 * (C + C.mT), d=cost.d + nu[..., None] * m - lam_x,
                         h=cost.h + nu * h0)


def _scale(ctrl: LinearGaussianController, w: Tensor) -> LinearGaussianController:
    """ψ with Σ_t ← w_t Σ_t (``w`` ``(..., T)``); gains unchanged."""
    w = w[..., None, None]
    return LinearGaussianController(ctrl.K, ctrl.k, ctrl.cov * w, ctrl.chol * w.sqrt(),
                                    ctrl.inv_cov / w)


def psi_controller(
    dyn: LinearDynamics,
    cost: QuadraticCost,
    state: BADMMState,
    pi_lin: LinearGaussianController,
    prev: LinearGaussianController,
    eta: float | Tensor,
) -> LinearGaussianController:
    """The minimizer of the ψ-Lagrangian L(ψ, η) at a fixed η (module docstring).

    gps.lqg.backward on :func:`augment_cost` with ``prev`` = ψ' gives the gains; the
    covariances are then scaled by (1 + ν_t/η), the exact entropy weight η + ν_t.
    """
    aug = augment_cost(cost, state.lam, state.nu, pi_lin)
    ctrl, _ = backward(dyn, aug, eta, prev)
    eta_t = _f64("eta", eta)
    return _scale(ctrl, 1.0 + state.nu / eta_t[..., None])


_TRAIL = {"A": 3, "B": 3, "c": 2, "F": 3, "C": 3, "d": 2, "h": 1,
          "K": 3, "k": 2, "cov": 3, "chol": 3, "inv_cov": 3}


def _batch_of(obj) -> torch.Size:  # type: ignore[no-untyped-def]
    """Broadcast leading batch shape of a gps.types container."""
    return torch.broadcast_shapes(*(
        getattr(obj, f.name).shape[: getattr(obj, f.name).dim() - _TRAIL[f.name]]
        for f in fields(obj)))


def _pick(obj, batch: torch.Size, i: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """Batch element ``i`` of a gps.types container (fields broadcast to ``batch``)."""
    out = {}
    for f in fields(obj):
        x = getattr(obj, f.name)
        trail = x.shape[x.dim() - _TRAIL[f.name]:]
        out[f.name] = x.expand(*batch, *trail)[i]
    return type(obj)(**out)


def _evaluate(dyn: LinearDynamics, cost: QuadraticCost, state: BADMMState,
              pi_lin: LinearGaussianController, prev: LinearGaussianController, mu0: Tensor,
              Sigma0: Tensor, eta: Tensor) -> tuple[LinearGaussianController, Tensor]:
    """ψ(η) and Σ_t KL(ψ(η) ‖ ψ') ``(batch)``; KL = ∞ where Q_uu is not PD."""
    batch = eta.shape
    try:
        ctrl = psi_controller(dyn, cost, state, pi_lin, prev, eta)
        kl = kl_divergence(ctrl, prev, forward(dyn, ctrl, mu0, Sigma0)).sum(-1)
        return ctrl, torch.where(torch.isfinite(kl), kl, math.inf)
    except LQGError:
        pass
    # Some element has no PD Q_uu at this η (the Taylor cost is indefinite in (s, a), so
    # at small η and ν this happens in the dual search's early probes): solve the
    # elements one by one, so that a failing group does not poison the others.
    st = BADMMState(state.lam.expand(*batch, *state.lam.shape[-2:]),
                    state.nu.expand(*batch, state.nu.shape[-1]), state.alpha)
    T, da, ds = prev.K.shape[-3:]
    ctrl = LinearGaussianController(
        torch.zeros(*batch, T, da, ds, dtype=_F64), torch.zeros(*batch, T, da, dtype=_F64),
        *(torch.eye(da, dtype=_F64).expand(*batch, T, da, da).clone() for _ in range(3)))
    kl = torch.full(batch, math.inf, dtype=_F64)
    for flat in range(max(1, batch.numel())):
        i = _batch_index(flat, batch)
        try:
            c_i = psi_controller(_pick(dyn, batch, i), _pick(cost, batch, i),
                                 BADMMState(st.lam[i], st.nu[i], st.alpha),
                                 _pick(pi_lin, batch, i), _pick(prev, batch, i), eta[i])
        except LQGError:
            continue
        p_i = _pick(prev, batch, i)
        m_i = forward(_pick(dyn, batch, i), c_i, mu0.expand(*batch, ds)[i],
                      Sigma0.expand(*batch, ds, ds)[i])
        for f in fields(ctrl):
            getattr(ctrl, f.name)[i] = getattr(c_i, f.name)
        k_i = kl_divergence(c_i, p_i, m_i).sum(-1)
        kl[i] = k_i if bool(torch.isfinite(k_i)) else math.inf
    return ctrl, kl


def psi_update(
    dyn: LinearDynamics,
    cost: QuadraticCost,
    state: BADMMState,
    pi_lin: LinearGaussianController,
    prev: LinearGaussianController,
    mu0: Tensor,
    Sigma0: Tensor,
    epsilon: float | Tensor,
    eta0: float | Tensor = 1.0,
    *,
    eta_min: float = 1e-6,
    eta_max: float = 1e16,
    rtol: float = 0.1,
    max_iter: int = 60,
) -> LQGSolution:
    """The BADMM ψ-update of Li & Malik 2017, §3.4, with the exact ν-weighted entropy.

    min_ψ Σ_t E_ψ̃[c̃(s_t) − λ_tᵀa_t] + ν_t E_ψ̃[KL(ψ(·|s_t) ‖ π̃(·|s_t))]
    s.t. Σ_t E_ψ̃[KL(ψ ‖ ψ')] ≤ ε, under the fitted dynamics ``dyn`` and cost ``cost``,
    with π̃ = ``pi_lin`` (:func:`fit_linear_policy`) and ψ' = ``prev``.

    Dual search on η per batch element (coordinate group) by gps.lqg.dual_search, with
    bisection (not Illinois) whenever the same end of the bracket moved twice in a row.
    Acceptance as gps.lqg.solve: (1 − rtol)ε < KL ≤ ε, or η = η_min with KL ≤ ε (inactive
    constraint), or η = η_max (warning); only the unfinished groups are re-evaluated.
    Returns (ψ, η ``(...)``, Σ_t KL(ψ‖ψ') ``(...)``).
    """
    _check_search_args(eta_min, eta_max, rtol)
    _, T, ds, da = _dims(dyn, cost, ("prev", prev), ("pi_lin", pi_lin))
    for name, x, trail in (("mu0", mu0, (ds,)), ("Sigma0", Sigma0, (ds, ds)),
                           ("BADMMState.lam", state.lam, (T, da)),
                           ("BADMMState.nu", state.nu, (T,))):
        _check_tensor(name, x, trail)
    eta0_t = _f64("eta0", eta0)
    if not bool((torch.isfinite(eta0_t) & (eta0_t > 0)).all()):
        raise ValueError(f"eta0 must be finite and > 0, got {eta0_t}")
    batch = torch.broadcast_shapes(
        *(_batch_of(obj) for obj in (dyn, cost, prev, pi_lin)),
        state.lam.shape[:-2], state.nu.shape[:-1], mu0.shape[:-1], Sigma0.shape[:-2],
        eta0_t.shape, _f64("epsilon", epsilon).shape,
    )
    eps = _f64("epsilon", epsilon).expand(batch)
    if not bool((torch.isfinite(eps) & (eps > 0)).all()):
        raise ValueError(f"epsilon must be finite and > 0, got {eps}")

    # Flatten the batch to N rows so that each iteration solves only the unfinished groups.
    dynf, costf, pif, prevf = (_flatten(obj, batch) for obj in (dyn, cost, pi_lin, prev))
    lam = state.lam.expand(*batch, *state.lam.shape[-2:]).reshape(-1, *state.lam.shape[-2:])
    nu = state.nu.expand(*batch, state.nu.shape[-1]).reshape(-1, state.nu.shape[-1])
    mu0f = mu0.expand(*batch, mu0.shape[-1]).reshape(-1, mu0.shape[-1])
    S0f = Sigma0.expand(*batch, *Sigma0.shape[-2:]).reshape(-1, *Sigma0.shape[-2:])

    def evaluate(x: Tensor, rows: Tensor) -> tuple[LinearGaussianController, Tensor, Tensor]:
        d, c, p, pv = (_take(obj, rows) for obj in (dynf, costf, pif, prevf))
        st = BADMMState(lam[rows], nu[rows], state.alpha)
        ctrl, kl = _evaluate(d, c, st, p, pv, mu0f[rows], S0f[rows], x.exp())
        return ctrl, kl, torch.where(torch.isinf(kl), 0, -1)  # KL = ∞ iff Q_uu not PD

    def error(kind: str, row: int, _t: int) -> str:
        where = f"batch element {_batch_index(row, batch)} (a coordinate group)"
        if kind == "eta_max":
            return (f"Q_uu is not positive definite even at eta_max={eta_max:g} for {where}: "
                    "the augmented cost is not PSD in the actions and nu/prev cannot "
                    "regularize it")
        return (f"dual search found no eta with KL <= epsilon within max_iter={max_iter} "
                f"for {where}")

    with _inputs_checked():  # checked above; the search re-enters backward/forward/KL
        found = dual_search(evaluate, eps, eta0_t, batch, eta_min=eta_min, eta_max=eta_max,
                            rtol=rtol, max_iter=max_iter, illinois=False, error=error)
    kinds = {kind for kind, _ in found.events}
    if "max_iter" in kinds:
        warnings.warn(f"eta search hit max_iter={max_iter}; returning the feasible end of "
                      "the bracket", stacklevel=2)
    if "stuck" in kinds:
        warnings.warn("KL > epsilon even at eta_max", stacklevel=2)
    return LQGSolution(found.chosen, found.eta, found.kl)


# ----------------------------------------------------------------------------- π̃ and duals


def fit_linear_policy(
    states: Tensor, pi_mean_actions: Tensor, Sigma_pi: Tensor | float, ridge: float = 1e-6
) -> LinearGaussianController:
    """π̃(a|s, t) = N(K̃_t s + k̃_t, Σ̃_t) fitted to π at ψ's samples (§3.4, footnote 2).

    ``states`` ``(..., N, T, ds)`` and π's mean actions there ``(..., N, T, da)`` (in
    convolutional GPS, N = rollouts × coordinates of a group, §3.5). Per t, least
    squares of the mean action on [s; 1] with a ridge on K̃: K̃ = Σ_as (Σ_ss + r I)⁻¹,
    k̃ = ā − K̃ s̄, with r = ``ridge`` · mean(diag Σ_ss) + 1e-12 (relative, so it is
    unit-free; the floor keeps constant states solvable). Σ̃_t = Σ^π + R_t, where R_t
    is the covariance of the fit residuals a − K̃s − k̃: the part of π's mean that is not
    linear in s counts as noise from ψ's point of view, as in the reference GPS code
    (``_update_policy_fit``: ``pol_S = sig_cond + pol_sig``). ``Sigma_pi`` is a float
    (times I) or a tensor broadcastable to ``(..., T, da, da)``.
    """
    states, acts = _f64("states", states), _f64("pi_mean_actions", pi_mean_actions)
    if states.dim() < 3 or acts.dim() < 3 or states.shape[-3:-1] != acts.shape[-3:-1]:
        raise ValueError(f"states must be (..., N, T, ds) and pi_mean_actions (..., N, T, da) "
                         f"with the same N, T; got {tuple(states.shape)}, {tuple(acts.shape)}")
    N, ds, da = states.shape[-3], states.shape[-1], acts.shape[-1]
    s = states.movedim(-3, -2)  # (..., T, N, ds)
    a = acts.movedim(-3, -2)
    s_bar, a_bar = s.mean(-2), a.mean(-2)
    sc, ac = s - s_bar[..., None, :], a - a_bar[..., None, :]
    Sss = sc.mT @ sc / N
    Ssa = sc.mT @ ac / N  # (..., T, ds, da)
    r = ridge * Sss.diagonal(dim1=-2, dim2=-1).mean(-1) + 1e-12
    Kt = torch.linalg.solve(Sss + r[..., None, None] * torch.eye(ds, dtype=_F64), Ssa)
    K = Kt.mT  # (..., T, da, ds)
    k = a_bar - (K @ s_bar[..., None])[..., 0]
    res = ac - sc @ Kt
    R = res.mT @ res / N
    if isinstance(Sigma_pi, Tensor):
        Sp = _f64("Sigma_pi", Sigma_pi)
    else:
        Sp = float(Sigma_pi) * torch.eye(da, dtype=_F64)
    cov = R + Sp
    return LinearGaussianController.from_cov(K, k, cov)


def dual_update(
    state: BADMMState,
    psi_mean_actions: Tensor,
    pi_mean_actions: Tensor,
    alpha: float | None = None,
    precision: Tensor | None = None,
) -> BADMMState:
    """λ_t ← λ_t + α ν_t (E_ψ[E_π[a_t|s_t]] − E_ψ[a_t]) (Li & Malik 2017, §3.4).

    ``psi_mean_actions`` E_ψ[a_t] and ``pi_mean_actions`` E_ψ[E_π[a_t|s_t]], both
    ``(..., T, da)``: averages over ψ's samples (rollouts × coordinates of the group) of
    ψ's and π's mean actions at the same states, or moments (E_ψ[a] is
    ``forward(...).mean[..., ds:]``). ``alpha`` defaults to ``state.alpha``.

    ``precision`` (G_t⁻¹ ``(..., T, da, da)``), if given, premultiplies the gap: the
    reference GPS code's variant (``_policy_dual_step``), whose step is in the metric of
    the Mahalanobis coupling, so that α = 1 undoes an exact S-step's shift of π's mean by
    −G_t λ_t/ν_t in one step. Returns a new state.
    """
    gap = _f64("pi_mean_actions", pi_mean_actions) - _f64("psi_mean_actions", psi_mean_actions)
    if precision is not None:
        gap = (_f64("precision", precision) @ gap[..., None])[..., 0]
    a = state.alpha if alpha is None else float(alpha)
    return replace(state, lam=state.lam + a * state.nu[..., None] * gap)


def adapt_nu(
    state: BADMMState,
    kl_psi_pi: Tensor,
    target: float | Tensor,
    *,
    factor: float = 2.0,
    lower: float = 0.5,
    nu_min: float = 1e-8,
    nu_max: float = 1e8,
) -> BADMMState:
    """Adapt ν_t to the coupling's violation (ν ×2 / ÷2 with bounds).

    ``kl_psi_pi`` ``(..., T)``: E_ψ[KL(ψ ‖ π)] per step (:func:`sample_kl`, or
    gps.lqg.kl_divergence(ψ, π̃, moments)). Where KL_t > target_t, ν_t ← factor·ν_t
    (ψ and π disagree: weigh the coupling more); where KL_t < lower·target_t,
    ν_t ← ν_t/factor (they agree: let ψ follow the cost); in between ν_t stays; then
    ν_t is clipped to [nu_min, nu_max]. This is the multiplicative schedule of the
    reference GPS code's BADMM (``_policy_dual_step`` with ``fixed_lg_step`` 2 or 3:
    ×2 / ×0.5 by how the KL compares with a threshold) with an absolute target per step;
    the band [lower·target, target] keeps ν from oscillating. Returns a new state.
    """
    if not (factor > 1.0 and 0.0 <= lower <= 1.0 and 0.0 < nu_min <= nu_max):
        raise ValueError(f"need factor > 1, 0 <= lower <= 1, 0 < nu_min <= nu_max; got "
                         f"{factor}, {lower}, {nu_min}, {nu_max}")
    kl = _f64("kl_psi_pi", kl_psi_pi)
    tgt = _f64("target", target)
    nu = torch.where(kl > tgt, state.nu * factor,
                     torch.where(kl < lower * tgt, state.nu / factor, state.nu))
    return replace(state, nu=nu.clamp(nu_min, nu_max))


def sample_kl(
    psi: LinearGaussianController, states: Tensor, pi_mean_actions: Tensor, Sigma_pi: Tensor
) -> Tensor:
    """E_ψ[KL(ψ(·|s_t) ‖ π(·|o_t))] per step ``(..., T)``, estimated at ψ's samples.

    ``states`` ``(..., N, T, ds)``, π's mean actions ``(..., N, T, da)``, ``Sigma_pi``
    broadcastable to ``(..., T, da, da)``. Per sample, with δ = μ^π − (K_t s + k_t):
    ½[tr(Σ^π⁻¹Σ_t) + δᵀΣ^π⁻¹δ − da + log|Σ^π| − log|Σ_t|], averaged over N. Unlike
    KL(ψ ‖ π̃), it sees π's nonlinearity (the Monte-Carlo KL of the reference code).
    """
    states, mu_pi = _f64("states", states), _f64("pi_mean_actions", pi_mean_actions)
    da = mu_pi.shape[-1]
    Sp = _f64("Sigma_pi", Sigma_pi)
    if Sp.dim() < 2:
        Sp = Sp * torch.eye(da, dtype=_F64)
    Sp = Sp.expand(torch.broadcast_shapes(Sp.shape, psi.cov.shape))  # (..., T, da, da)
    L = torch.linalg.cholesky(Sp)
    Pp = torch.cholesky_inverse(L)
    mu_psi = torch.einsum("...tij,...ntj->...nti", psi.K, states) + psi.k[..., None, :, :]
    delta = mu_pi - mu_psi  # (..., N, T, da)
    maha = (delta * (Pp.unsqueeze(-4) @ delta[..., None])[..., 0]).sum(-1).mean(-2)
    trace = (Pp * psi.cov).sum((-1, -2))
    logdet_p = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    logdet_q = 2.0 * torch.log(torch.diagonal(psi.chol, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (trace + maha - da + logdet_p - logdet_q)
