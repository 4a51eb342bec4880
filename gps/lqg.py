"""LQG with a KL trust region: the ψ-update of guided policy search.

Li & Malik 2017 (§3.4) update the time-varying linear-Gaussian controller
ψ(a | s, t) = N(K_t s + k_t, Σ_t) by

    min_ψ  Σ_t E_ψ̃[c̃_t(s_t, a_t)]   s.t.   Σ_t E_ψ̃[KL(ψ(·|s_t) ‖ ψ'(·|s_t))] ≤ ε,

under fitted linear-Gaussian dynamics p̃ and a quadratic cost c̃, solved by dual
descent on η with LQG as the inner solver (Levine & Abbeel 2014, §3; Levine et al. 2016,
"End-to-end training of deep visuomotor policies", appendix A.3). For a fixed η the
Lagrangian divided by η is

    Σ_t E[c̃_t / η − log ψ'(a_t | s_t)] − H(ψ(·|s_t)),

a maximum-entropy LQG whose soft Q-function Q_t(s, a) gives ψ ∝ exp(−Q_t), i.e.
Σ_t = Q_uu⁻¹, K_t = −Q_uu⁻¹ Q_us, k_t = −Q_uu⁻¹ q_u (Levine & Abbeel 2014, eq. 2–3).
``eta`` is one temperature per leading batch element: in convolutional GPS (§3.5) each
coordinate group is its own independent LQG with its own η.

Everything is float64 and batched over the leading dims ``...`` of the containers in
:mod:`gps.types`; the only Python loops run over the time axis (the Riccati recursion
and the forward propagation) and over the iterations of the η search.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor

from gps.types import (
    LinearDynamics,
    LinearGaussianController,
    QuadraticCost,
    TrajectoryMoments,
    check_finite,
)

__all__ = [
    "DualSearchResult",
    "LQGError",
    "LQGSolution",
    "ValueFunction",
    "backward",
    "dual_search",
    "forward",
    "kl_divergence",
    "solve",
]

_LOG_2PI = math.log(2.0 * math.pi)

# Trailing (non-batch) dimensions of every tensor field of the gps.types containers.
_TRAIL = {
    "A": 3, "B": 3, "c": 2, "F": 3,  # LinearDynamics
    "C": 3, "d": 2, "h": 1,  # QuadraticCost
    "K": 3, "k": 2, "cov": 3, "chol": 3, "inv_cov": 3,  # LinearGaussianController
    "mean": 2,  # TrajectoryMoments (its "cov" is also 3)
}  # fmt: skip


class LQGError(RuntimeError):
    """Q_uu is not positive definite even at the largest allowed η."""


@dataclass
class ValueFunction:
    """Soft value V_t(s) = ½ sᵀ V_t s + v_tᵀ s + v0_t of the η-scaled problem.

    ``V`` ``(..., T, ds, ds)``, ``v`` ``(..., T, ds)``, ``v0`` ``(..., T)``. It is the
    expected cost-to-go from s at step t of Σ_τ c̃_τ/η + KL(ψ ‖ ψ') (or Σ c̃/η − H(ψ)
    without an old controller), so E_{s_0}[V_0(s_0)] is the value of the Lagrangian / η.
    """

    V: Tensor
    v: Tensor
    v0: Tensor


class LQGSolution(NamedTuple):
    """Result of :func:`solve`: the new controller, its η ``(...)``, its total KL ``(...)``."""

    controller: LinearGaussianController
    eta: Tensor
    kl: Tensor


# ----------------------------------------------------------------------------- validation


def _sym(M: Tensor) -> Tensor:
    return 0.5 * (M + M.transpose(-1, -2))


#: set while a caller that scanned its inputs once re-enters the public functions (see
#: :func:`_inputs_checked`); the dtype and shape checks still run, the NaN scan does not
_INPUTS_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gps_lqg_inputs_checked", default=False)


@contextlib.contextmanager
def _inputs_checked() -> Iterator[None]:
    """Skip the finiteness scan of :func:`_check_tensor` inside: ``badmm.psi_update`` checks
    its inputs once, then its dual search calls backward/forward/kl_divergence ~20 times
    on them (the repeated scans cost half the LQG phase's time)."""
    token = _INPUTS_CHECKED.set(True)
    try:
        yield
    finally:
        _INPUTS_CHECKED.reset(token)


def _check_tensor(name: str, x: object, trail: tuple[int, ...]) -> torch.Size:
    """Check dtype, trailing shape and finiteness of one tensor; return its batch shape."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float64:
        raise ValueError(f"{name} must be float64, got {x.dtype}")
    n = len(trail)
    if x.ndim < n or tuple(x.shape[x.ndim - n :]) != trail:
        want = ", ".join(["..."] + [str(t) for t in trail])
        raise ValueError(f"{name} must have shape ({want}), got {tuple(x.shape)}")
    if not _INPUTS_CHECKED.get():  # a NaN would otherwise pass for "η too small"
        check_finite(name, x)
    return x.shape[: x.ndim - n]


def _dims(
    dyn: LinearDynamics,
    cost: QuadraticCost | None = None,
    *ctrls: tuple[str, LinearGaussianController | None],
) -> tuple[torch.Size, int, int, int]:
    """Validate the containers; return (broadcast batch shape, T, ds, da)."""
    if not isinstance(dyn, LinearDynamics):
        raise ValueError(f"dyn must be a LinearDynamics, got {type(dyn).__name__}")
    if dyn.A.ndim < 3 or dyn.B.ndim < 3:
        raise ValueError(
            "LinearDynamics.A and .B must be (..., T, ds, ds) and (..., T, ds, da), got "
            f"{tuple(dyn.A.shape)} and {tuple(dyn.B.shape)}"
        )
    T, ds, da = dyn.A.shape[-3], dyn.A.shape[-1], dyn.B.shape[-1]
    if T < 1 or ds < 1 or da < 1:
        raise ValueError(f"need T, ds, da >= 1, got T={T}, ds={ds}, da={da}")
    dx = ds + da
    want = {
        "LinearDynamics.A": (dyn.A, (T, ds, ds)),
        "LinearDynamics.B": (dyn.B, (T, ds, da)),
        "LinearDynamics.c": (dyn.c, (T, ds)),
        "LinearDynamics.F": (dyn.F, (T, ds, ds)),
    }
    if cost is not None:
        if not isinstance(cost, QuadraticCost):
            raise ValueError(f"cost must be a QuadraticCost, got {type(cost).__name__}")
        want |= {
            "QuadraticCost.C": (cost.C, (T, dx, dx)),
            "QuadraticCost.d": (cost.d, (T, dx)),
            "QuadraticCost.h": (cost.h, (T,)),
        }
    for label, ctrl in ctrls:
        if ctrl is None:
            continue
        if not isinstance(ctrl, LinearGaussianController):
            raise ValueError(f"{label} must be a LinearGaussianController, got {type(ctrl)}")
        want |= {
            f"{label}.K": (ctrl.K, (T, da, ds)),
            f"{label}.k": (ctrl.k, (T, da)),
            f"{label}.cov": (ctrl.cov, (T, da, da)),
            f"{label}.chol": (ctrl.chol, (T, da, da)),
            f"{label}.inv_cov": (ctrl.inv_cov, (T, da, da)),
        }
    batches = {name: _check_tensor(name, x, trail) for name, (x, trail) in want.items()}
    return _broadcast(batches), T, ds, da


def _broadcast(batches: dict[str, torch.Size]) -> torch.Size:
    try:
        return torch.broadcast_shapes(*batches.values())
    except RuntimeError:
        shapes = ", ".join(f"{k}: {tuple(v)}" for k, v in batches.items())
        raise ValueError(f"leading batch dims do not broadcast: {shapes}") from None


def _as_batch_tensor(name: str, x: float | Tensor, batch: torch.Size, positive: bool) -> Tensor:
    """A scalar or a float64 tensor broadcastable to ``batch``, returned expanded."""
    if not isinstance(x, Tensor):
        x = torch.tensor(float(x), dtype=torch.float64)
    elif x.dtype != torch.float64:
        raise ValueError(f"{name} must be float64, got {x.dtype}")
    try:
        x = x.expand(batch)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to the batch shape {tuple(batch)}"
        ) from None
    if not bool(torch.isfinite(x).all()) or (positive and not bool((x > 0).all())):
        raise ValueError(f"{name} must be finite and > 0, got {x}")
    return x


_C = TypeVar("_C", LinearDynamics, QuadraticCost, LinearGaussianController)


def _map(obj: _C, fn: Callable[[str, Tensor], Tensor]) -> _C:
    """Apply ``fn(name, tensor)`` to every field (builds a new container)."""
    return type(obj)(**{f.name: fn(f.name, getattr(obj, f.name)) for f in fields(obj)})


def _take(obj: _C, idx: Tensor) -> _C:
    """Select the flattened batch rows ``idx`` of every field."""
    return _map(obj, lambda _n, t: t[idx])


def _flatten(obj: _C, batch: torch.Size) -> _C:
    """Expand every field to ``batch`` and flatten it to one leading dim ``N``."""

    def fn(name: str, x: Tensor) -> Tensor:
        trail = x.shape[x.ndim - _TRAIL[name] :]
        return x.expand(*batch, *trail).reshape(-1, *trail)

    return _map(obj, fn)


# ----------------------------------------------------------------------------- backward


def _augmented_cost(
    cost: QuadraticCost, eta: Tensor, prev: LinearGaussianController | None, ds: int
) -> tuple[Tensor, Tensor, Tensor]:
    """c̃/η − log ψ'(a|s) as a quadratic in x = [s; a] (Levine & Abbeel 2014, §3).

    −log N(a; K̄s + k̄, Σ̄) = ½ (a − K̄s − k̄)ᵀ P (a − K̄s − k̄) + ½ log|2πΣ̄| with P = Σ̄⁻¹
    (the stored ``inv_cov``: nothing is re-factorized).
    """
    C = cost.C / eta[..., None, None, None]
    d = cost.d / eta[..., None, None]
    h = cost.h / eta[..., None]
    if prev is None:
        return C, d, h
    P, Kb, kb = prev.inv_cov, prev.K, prev.k
    PK = P @ Kb  # (..., T, da, ds)
    Pk = (P @ kb[..., None])[..., 0]
    M = torch.cat(
        [
            torch.cat([Kb.mT @ PK, -PK.mT], dim=-1),
            torch.cat([-PK, P], dim=-1),
        ],
        dim=-2,
    )
    m = torch.cat([(Kb.mT @ Pk[..., None])[..., 0], -Pk], dim=-1)
    da = P.shape[-1]
    logdet = 2.0 * torch.log(torch.diagonal(prev.chol, dim1=-2, dim2=-1)).sum(-1)
    h0 = 0.5 * (kb * Pk).sum(-1) + 0.5 * (da * _LOG_2PI + logdet)
    return C + M, d + m, h + h0


def _backward(
    dyn: LinearDynamics,
    cost: QuadraticCost,
    eta: Tensor,
    prev: LinearGaussianController | None,
    batch: torch.Size,
    T: int,
    ds: int,
    da: int,
) -> tuple[LinearGaussianController, ValueFunction, Tensor]:
    """The soft Riccati recursion; never raises on a non-PD Q_uu.

    Returns the controller, the value function and ``fail_t`` ``(batch)``: the (latest)
    time step at which Q_uu was not PD, −1 where the recursion succeeded. Entries of
    failed batch elements are finite garbage (an identity factor is substituted so that
    the failure stays confined to its own batch element).
    """
    C, d, h = _augmented_cost(cost, eta, prev, ds)
    C = _sym(C).expand(*batch, T, ds + da, ds + da)
    d = d.expand(*batch, T, ds + da)
    h = h.expand(*batch, T)
    eye = torch.eye(da, dtype=torch.float64, device=C.device).expand(*batch, da, da)
    V = torch.zeros(*batch, ds, ds, dtype=torch.float64, device=C.device)
    v = torch.zeros(*batch, ds, dtype=torch.float64, device=C.device)
    v0 = torch.zeros(batch, dtype=torch.float64, device=C.device)
    fail_t = torch.full(batch, -1, dtype=torch.long, device=C.device)
    out: dict[str, list[Tensor]] = {n: [] for n in ("K", "k", "cov", "chol", "Q", "V", "v", "v0")}
    for t in reversed(range(T)):
        Qxx, qx, q0 = C[..., t, :, :], d[..., t, :], h[..., t]
        if t < T - 1:  # E[V_{t+1}(A s + B a + c + w)], w ~ N(0, F); V_T = 0
            AB = torch.cat([dyn.A[..., t, :, :], dyn.B[..., t, :, :]], dim=-1)
            c, F = dyn.c[..., t, :], dyn.F[..., t, :, :]
            ABtV = AB.mT @ V
            Vc = (V @ c[..., None])[..., 0]
            Qxx = Qxx + ABtV @ AB
            qx = qx + (AB.mT @ (Vc + v)[..., None])[..., 0]
            q0 = q0 + (0.5 * Vc + v).mul(c).sum(-1) + 0.5 * (F * V).sum((-1, -2)) + v0
        Qxx = _sym(Qxx)
        Qss, Qsu = Qxx[..., :ds, :ds], Qxx[..., :ds, ds:]
        Quu, Qus = Qxx[..., ds:, ds:], Qxx[..., ds:, :ds]
        qs, qu = qx[..., :ds], qx[..., ds:]
        # Factor the index-reversed Q_uu: if J Q_uu J = L Lᵀ then Σ = Q_uu⁻¹ = (J L⁻ᵀ J)(·)ᵀ
        # and J L⁻ᵀ J is lower triangular, i.e. one factorization yields both Σ and its
        # lower Cholesky factor.
        L, info = torch.linalg.cholesky_ex(Quu.flip(-1, -2))
        bad = (info != 0) | ~torch.isfinite(Quu).all(-1).all(-1)
        fail_t = torch.where(bad & (fail_t < 0), t, fail_t)
        L = torch.where(bad[..., None, None], eye, L)
        cov = _sym(torch.cholesky_inverse(L).flip(-1, -2))
        chol = torch.linalg.solve_triangular(L, eye, upper=False).mT.flip(-1, -2)
        K = -cov @ Qus
        k = -(cov @ qu[..., None])[..., 0]
        # V = Q_ss − Q_su Q_uu⁻¹ Q_us; soft-min over a adds ½ log|Q_uu| − (da/2) log 2π.
        V = _sym(Qss + Qsu @ K)
        v = qs + (Qsu @ k[..., None])[..., 0]
        logdet_half = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        v0 = q0 + 0.5 * (qu * k).sum(-1) + logdet_half - 0.5 * da * _LOG_2PI
        for name, x in zip(
            ("K", "k", "cov", "chol", "Q", "V", "v", "v0"),
            (K, k, cov, chol, Quu, V, v, v0),
            strict=True,
        ):
            out[name].append(x)
    s = {name: torch.stack(xs[::-1], dim=len(batch)) for name, xs in out.items()}
    ctrl = LinearGaussianController(s["K"], s["k"], s["cov"], s["chol"], s["Q"])
    return ctrl, ValueFunction(s["V"], s["v"], s["v0"]), fail_t


def _batch_index(flat: int, batch: torch.Size) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, tuple(batch))) if batch else ()


def backward(
    dyn: LinearDynamics,
    cost: QuadraticCost,
    eta: float | Tensor = 1.0,
    prev: LinearGaussianController | None = None,
) -> tuple[LinearGaussianController, ValueFunction]:
    """One LQG backward pass at a fixed η (Levine & Abbeel 2014, §3; Levine et al. 2016, A.3).

    Solves min_ψ Σ_t E[c̃_t/η − log ψ'(a_t|s_t)] − H(ψ) by the Riccati recursion on the
    soft Q-function: Σ_t = Q_uu⁻¹, K_t = −Q_uu⁻¹ Q_us, k_t = −Q_uu⁻¹ q_u, with the
    controller's ``inv_cov`` = Q_uu. ``prev=None`` drops the −log ψ' term (plain
    maximum-entropy LQG at temperature η). ``eta`` is a scalar or a tensor broadcastable
    to the leading batch dims. The transition at t = T − 1 is unused.

    Raises :class:`LQGError` (naming the batch element and time step) if Q_uu is not
    positive definite; :func:`solve` instead raises η where this happens.
    """
    batch, T, ds, da = _dims(dyn, cost, ("prev", prev))
    eta_t = _as_batch_tensor("eta", eta, batch, positive=True)
    ctrl, value, fail_t = _backward(dyn, cost, eta_t, prev, batch, T, ds, da)
    failed = (fail_t >= 0).reshape(-1).nonzero()
    if failed.numel():
        i = int(failed[0, 0])
        where = _batch_index(i, batch)
        raise LQGError(
            f"Q_uu is not positive definite at batch element {where}, time step "
            f"{int(fail_t.reshape(-1)[i])} (eta={float(eta_t.reshape(-1)[i]):.3g}, "
            f"{failed.numel()} failing element(s)); "
            + (
                "raise eta or use solve()"
                if prev is not None
                else "the cost's action block makes the problem unbounded and there is no old "
                "controller to regularize it"
            )
        )
    return ctrl, value


# ----------------------------------------------------------------------------- forward


def forward(
    dyn: LinearDynamics, ctrl: LinearGaussianController, mu0: Tensor, Sigma0: Tensor
) -> TrajectoryMoments:
    """Exact Gaussian marginals of x_t = [s_t; a_t] under ψ and p̃ (Levine & Abbeel 2014, §3).

    ``mu0`` ``(..., ds)`` and ``Sigma0`` ``(..., ds, ds)`` are the initial-state moments.
    a_t | s_t ~ N(K_t s_t + k_t, Σ_t); s_{t+1} = [A_t B_t] x_t + c_t + N(0, F_t).
    """
    batch, T, ds, _ = _dims(dyn, None, ("ctrl", ctrl))
    batch = _broadcast(
        {
            "dyn/ctrl": batch,
            "mu0": _check_tensor("mu0", mu0, (ds,)),
            "Sigma0": _check_tensor("Sigma0", Sigma0, (ds, ds)),
        }
    )
    return _forward(dyn, ctrl, mu0, Sigma0, batch, T)


def _forward(
    dyn: LinearDynamics,
    ctrl: LinearGaussianController,
    mu0: Tensor,
    Sigma0: Tensor,
    batch: torch.Size,
    T: int,
) -> TrajectoryMoments:
    m = mu0.expand(*batch, mu0.shape[-1])
    S = _sym(Sigma0).expand(*batch, *Sigma0.shape[-2:])
    means, covs = [], []
    for t in range(T):
        K, k = ctrl.K[..., t, :, :], ctrl.k[..., t, :]
        ma = (K @ m[..., None])[..., 0] + k
        SK = S @ K.mT
        Saa = _sym(K @ SK + ctrl.cov[..., t, :, :])
        mx = torch.cat([m, ma.expand(*batch, ma.shape[-1])], dim=-1)
        Sx = torch.cat([torch.cat([S, SK], dim=-1), torch.cat([SK.mT, Saa], dim=-1)], dim=-2)
        Sx = _sym(Sx.expand(*batch, *Sx.shape[-2:]))
        means.append(mx)
        covs.append(Sx)
        if t < T - 1:
            AB = torch.cat([dyn.A[..., t, :, :], dyn.B[..., t, :, :]], dim=-1)
            m = (AB @ mx[..., None])[..., 0] + dyn.c[..., t, :]
            S = _sym(AB @ Sx @ AB.mT + dyn.F[..., t, :, :])
    n = len(batch)
    return TrajectoryMoments(torch.stack(means, dim=n), torch.stack(covs, dim=n))


# ----------------------------------------------------------------------------- KL


def kl_divergence(
    new: LinearGaussianController, old: LinearGaussianController, moments: TrajectoryMoments
) -> Tensor:
    """E_{s_t}[KL(new(·|s_t) ‖ old(·|s_t))] per time step, ``(..., T)``, in closed form.

    With s_t ~ N(m, S) from ``moments`` (the new controller's marginals in the trust
    region), δ(s) = (K − K')s + (k − k') and P' = Σ'⁻¹ (Levine & Abbeel 2014, §3.1):
    ½ [tr(P'Σ) + δ(m)ᵀP'δ(m) + tr(P'(K − K')S(K − K')ᵀ) − da + log|Σ'| − log|Σ|].
    Sum over T for the trust-region constraint.
    """
    if not isinstance(moments, TrajectoryMoments):
        raise ValueError(f"moments must be a TrajectoryMoments, got {type(moments).__name__}")
    for label, c in (("new", new), ("old", old)):
        if not isinstance(c, LinearGaussianController):
            raise ValueError(f"{label} must be a LinearGaussianController, got {type(c)}")
    T, da, ds = new.K.shape[-3:]
    batches = {}
    for label, c in (("new", new), ("old", old)):
        for f in fields(c):
            name = f"{label}.{f.name}"
            trail = {"K": (T, da, ds), "k": (T, da)}.get(f.name, (T, da, da))
            batches[name] = _check_tensor(name, getattr(c, f.name), trail)
    batches["moments.mean"] = _check_tensor("moments.mean", moments.mean, (T, ds + da))
    batches["moments.cov"] = _check_tensor("moments.cov", moments.cov, (T, ds + da, ds + da))
    _broadcast(batches)
    return _kl(new, old, moments, ds)


def _kl(
    new: LinearGaussianController, old: LinearGaussianController, mom: TrajectoryMoments, ds: int
) -> Tensor:
    m, S = mom.mean[..., :ds], mom.cov[..., :ds, :ds]
    P = old.inv_cov
    dK = new.K - old.K
    dmu = (dK @ m[..., None])[..., 0] + (new.k - old.k)
    maha = (dmu * (P @ dmu[..., None])[..., 0]).sum(-1)
    spread = (P * (dK @ S @ dK.mT)).sum((-1, -2))  # tr(P dK S dKᵀ), both symmetric
    trace = (P * new.cov).sum((-1, -2))
    logdet_old = 2.0 * torch.log(torch.diagonal(old.chol, dim1=-2, dim2=-1)).sum(-1)
    logdet_new = 2.0 * torch.log(torch.diagonal(new.chol, dim1=-2, dim2=-1)).sum(-1)
    da = P.shape[-1]
    return 0.5 * (trace + maha + spread - da + logdet_old - logdet_new)


# ----------------------------------------------------------------------------- dual search


class DualSearchResult(NamedTuple):
    """Result of :func:`dual_search`.

    ``eta`` and ``kl`` ``(batch)``; ``chosen`` the controller evaluated at ``eta`` (fields
    ``(batch, ...)``); ``events`` the warning-worthy events in the order they happened, as
    ``(kind, count)`` with kind ``"stuck"`` (KL > ε at η_max), ``"collapsed"`` (bracket
    narrower than 1e-9 in log η) or ``"max_iter"`` (unfinished after ``max_iter``).
    """

    eta: Tensor
    kl: Tensor
    chosen: LinearGaussianController
    events: tuple[tuple[str, int], ...]


Evaluate = Callable[[Tensor, Tensor], tuple[LinearGaussianController, Tensor, Tensor]]


def _check_search_args(eta_min: float, eta_max: float, rtol: float) -> None:
    if not 0.0 < eta_min < eta_max < math.inf:
        raise ValueError(f"need 0 < eta_min < eta_max < inf, got {eta_min}, {eta_max}")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")


def dual_search(
    evaluate: Evaluate,
    eps: Tensor,
    eta0: Tensor,
    batch_shape: torch.Size | tuple[int, ...],
    *,
    eta_min: float,
    eta_max: float,
    rtol: float,
    max_iter: int,
    illinois: bool = True,
    error: Callable[[str, int, int], str] | None = None,
) -> DualSearchResult:
    """The trust-region dual search on η (Levine & Abbeel 2014, §3.1), one η per batch row.

    ``evaluate(log_eta (k,), rows (k,))`` returns, for the flattened batch rows ``rows``
    at η = exp(log_eta), (controller with leading dim k, Σ_t KL ``(k,)``, failed time step
    ``(k,)``: where the controller could not be formed, e.g. a non-PD Q_uu, else −1). Each
    iteration evaluates only the unfinished rows. ``eps`` and ``eta0`` are float64 tensors
    broadcastable to ``batch_shape`` (validated by the caller, as are the keyword bounds).
    KL(η) is non-increasing in η, so, in x = log η:

    * Accept when (1 − rtol)·ε < KL ≤ ε (this meets both KL ≤ ε and |KL − ε| < rtol·ε).
    * Inactive constraint: if KL(η_min) ≤ ε, return η_min.
    * Bracket geometrically from ``eta0`` (clamped to [η_min, η_max]): the n-th
      consecutive step in the same direction multiplies or divides η by 10^(2^n),
      clamped to [η_min, η_max].
    * Inside a bracket [lo, hi] (KL(lo) > ε > (1 − rtol)ε > KL(hi)): regula falsi on
      log KL − log((1 − rtol/2)ε) versus log η, with bisection when an end has no finite
      KL or the secant point falls within 1% of an end. On a repeated move of the same
      end, ``illinois=True`` halves the stale end's value (Illinois); ``illinois=False``
      bisects instead.
    * A failed evaluation or a non-finite KL counts as KL = ∞ (η too small). If it fails
      at η_max, :class:`LQGError` is raised. If KL(η_max) > ε, η_max is returned (event
      ``"stuck"``); a collapsed bracket or ``max_iter`` evaluations return the feasible
      end of the bracket (events ``"collapsed"``, ``"max_iter"``), and raise
      :class:`LQGError` if no feasible η was seen.

    ``error(kind, row, t)`` formats the :class:`LQGError` messages (kind ``"eta_max"``
    with the failed time step ``t``, or ``"max_iter"`` with t = −1; ``row`` is the flat
    batch row); by default they name the batch element as :func:`solve` does.
    """
    batch = torch.Size(batch_shape)

    def message(kind: str, row: int, t: int) -> str:
        if error is not None:
            return error(kind, row, t)
        if kind == "eta_max":
            return (
                f"Q_uu is not positive definite even at eta_max={eta_max:.3g} for batch "
                f"element {_batch_index(row, batch)}, time step {t}; "
                "the cost's action block is too negative for the old controller's precision"
            )
        return (
            f"dual search found no eta with KL <= epsilon within max_iter={max_iter} "
            f"for batch element {_batch_index(row, batch)}"
        )

    eps = eps.expand(batch).reshape(-1)
    xmin, xmax = math.log(eta_min), math.log(eta_max)
    x = eta0.expand(batch).log().clamp(xmin, xmax).reshape(-1).clone()  # owns its memory
    N, dev = x.shape[0], x.device
    f64 = {"dtype": torch.float64, "device": dev}
    target = (1.0 - 0.5 * rtol) * eps  # aim at the middle of the acceptance window
    lo = torch.full((N,), -math.inf, **f64)  # largest x known too small (KL > ε or failed)
    hi = torch.full((N,), math.inf, **f64)  # smallest x known large enough (KL too small)
    f_lo = torch.full((N,), math.inf, **f64)  # log(KL / target) at lo
    f_hi = torch.full((N,), -math.inf, **f64)
    streak = torch.zeros(N, dtype=torch.long, device=dev)  # same-direction moves
    last = torch.zeros(N, dtype=torch.long, device=dev)  # last side moved: ∓1
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    have_hi = torch.zeros(N, dtype=torch.bool, device=dev)  # a feasible one stored
    res: LinearGaussianController | None = None
    eta_out = torch.empty(N, **f64)
    kl_out = torch.empty(N, **f64)
    events: list[tuple[str, int]] = []

    def store(rows: Tensor, mask: Tensor, ctrl: LinearGaussianController, kl: Tensor) -> None:
        nonlocal res
        if res is None:
            res = _map(ctrl, lambda _n, t: t.new_empty((N, *t.shape[1:])))
        sub_rows = mask.nonzero()[:, 0]
        for f in fields(res):
            getattr(res, f.name)[rows] = getattr(ctrl, f.name)[sub_rows]
        eta_out[rows] = x[rows].exp()
        kl_out[rows] = kl[sub_rows]

    for _ in range(max_iter):
        idx = (~done).nonzero()[:, 0]
        if idx.numel() == 0:
            break
        xi = x[idx]
        ctrl, kl, fail_t = evaluate(xi, idx)
        failed = fail_t >= 0
        kl = torch.where(failed | ~torch.isfinite(kl), math.inf, kl)
        e = eps[idx]

        hopeless = failed & (xi >= xmax)
        if bool(hopeless.any()):
            j = int(hopeless.nonzero()[0, 0])
            raise LQGError(message("eta_max", int(idx[j]), int(fail_t[j])))
        ok = kl <= e
        accept = ok & ((kl > (1.0 - rtol) * e) | (xi <= xmin))  # in window, or inactive
        stuck = ~ok & (xi >= xmax)  # KL(η_max) > ε: cannot do better
        if bool(stuck.any()):
            events.append(("stuck", int(stuck.sum())))
        accept |= stuck
        small = ok & ~accept  # η larger than needed: feasible end of the bracket
        big = ~ok & ~accept
        store(idx[accept], accept, ctrl, kl)
        done[idx[accept]] = True
        store(idx[small], small, ctrl, kl)
        have_hi[idx[small]] = True

        # Bracket update.
        fx = torch.log(kl.clamp_min(1e-300) / target[idx])
        side = torch.where(big, -1, torch.where(small, 1, 0))
        repeat = (side == last[idx]) & (side != 0)
        lo_i, hi_i, flo_i, fhi_i = lo[idx], hi[idx], f_lo[idx], f_hi[idx]
        if illinois:  # halve the stale end's f when one side repeats
            fhi_i = torch.where(repeat & big, 0.5 * fhi_i, fhi_i)
            flo_i = torch.where(repeat & small, 0.5 * flo_i, flo_i)
        lo_i = torch.where(big, xi, lo_i)
        flo_i = torch.where(big, fx, flo_i)
        hi_i = torch.where(small, xi, hi_i)
        fhi_i = torch.where(small, fx, fhi_i)
        streak_i = torch.where(repeat, streak[idx] + 1, 0)

        bracketed = torch.isfinite(lo_i) & torch.isfinite(hi_i)
        w = hi_i - lo_i
        secant = lo_i - flo_i * w / (fhi_i - flo_i)
        use_secant = torch.isfinite(flo_i) & torch.isfinite(fhi_i)
        secant = torch.where(use_secant, secant, 0.5 * (lo_i + hi_i))
        inside = (secant > lo_i + 0.01 * w) & (secant < hi_i - 0.01 * w)
        if not illinois:  # bisect when the same end moved twice in a row
            inside &= ~repeat
        x_br = torch.where(inside, secant, 0.5 * (lo_i + hi_i))
        step = math.log(10.0) * torch.pow(2.0, streak_i.to(torch.float64))
        x_geo = torch.where(big, xi + step, xi - step)
        x_new = torch.where(bracketed, x_br, x_geo).clamp(xmin, xmax)
        collapsed = bracketed & (w < 1e-9)
        if bool(collapsed.any()):
            events.append(("collapsed", int(collapsed.sum())))
            done[idx[collapsed]] = True  # the stored feasible end (hi) stands

        x[idx], lo[idx], hi[idx], f_lo[idx], f_hi[idx] = x_new, lo_i, hi_i, flo_i, fhi_i
        streak[idx], last[idx] = streak_i, side
    else:
        left = ~done
        if bool(left.any()):
            if bool((left & ~have_hi).any()):
                j = int((left & ~have_hi).nonzero()[0, 0])
                raise LQGError(message("max_iter", j, -1))
            events.append(("max_iter", int(left.sum())))
    if res is None:  # empty batch: only the shapes of the controller are needed
        res = _map(evaluate(x, torch.arange(N, device=dev))[0], lambda _n, t: t[:0].clone())
    out = _map(res, lambda _n, t: t.reshape(*batch, *t.shape[1:]))
    return DualSearchResult(eta_out.reshape(batch), kl_out.reshape(batch), out, tuple(events))


def solve(
    dyn: LinearDynamics,
    cost: QuadraticCost,
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
    """Trust-region ψ-update: the smallest-cost ψ with Σ_t E[KL(ψ ‖ ψ')] ≤ ε (Li & Malik §3.4).

    Dual search on η (Levine & Abbeel 2014, §3.1), one η per leading batch element and
    vectorized over the batch (:func:`dual_search`, with Illinois regula falsi): accept
    when (1 − rtol)·ε < KL ≤ ε, or at η_min (inactive constraint; η_min is an absolute
    bound in cost units per nat, 1e-6 by default), bracketing geometrically from ``eta0``
    (warm start, e.g. last iteration's η). A non-PD Q_uu at some η counts as KL = ∞
    (η too small): raising η adds weight on ψ', whose precision makes Q_uu PD. If even
    η_max fails, :class:`LQGError` names the batch element and time step. If
    KL(η_max) > ε, η_max is returned with a warning; after ``max_iter`` evaluations (or a
    collapsed bracket) the feasible end of the bracket is returned with a warning.

    Returns (controller, eta ``(...)``, kl ``(...)`` = Σ_t KL).
    """
    if prev is None:
        raise ValueError("solve() needs the old controller prev (the trust-region centre)")
    batch, T, ds, da = _dims(dyn, cost, ("prev", prev))
    batch = _broadcast(
        {
            "dyn/cost/prev": batch,
            "mu0": _check_tensor("mu0", mu0, (ds,)),
            "Sigma0": _check_tensor("Sigma0", Sigma0, (ds, ds)),
        }
    )
    _check_search_args(eta_min, eta_max, rtol)
    eps = _as_batch_tensor("epsilon", epsilon, batch, positive=True)
    eta0_t = _as_batch_tensor("eta0", eta0, batch, positive=True)

    # Flatten the batch to N so that each iteration solves only the unfinished problems.
    dynf, costf, prevf = _flatten(dyn, batch), _flatten(cost, batch), _flatten(prev, batch)
    mu0f = mu0.expand(*batch, ds).reshape(-1, ds)
    S0f = Sigma0.expand(*batch, ds, ds).reshape(-1, ds, ds)

    def evaluate(x: Tensor, rows: Tensor) -> tuple[LinearGaussianController, Tensor, Tensor]:
        d, c, p = (_take(obj, rows) for obj in (dynf, costf, prevf))
        n = torch.Size([rows.numel()])
        ctrl, _, fail_t = _backward(d, c, x.exp(), p, n, T, ds, da)
        mom = _forward(d, ctrl, mu0f[rows], S0f[rows], n, T)
        return ctrl, _kl(ctrl, p, mom, ds).sum(-1), fail_t

    found = dual_search(
        evaluate, eps, eta0_t, batch,
        eta_min=eta_min, eta_max=eta_max, rtol=rtol, max_iter=max_iter,
    )  # fmt: skip
    warn = {
        "stuck": "KL > epsilon even at eta_max for {} element(s)",
        "collapsed": "eta bracket collapsed for {} element(s)",
        "max_iter": f"eta search hit max_iter={max_iter} for {{}} element(s); "
        "returning the feasible end of the bracket",
    }
    if found.events:
        warnings.warn("; ".join(warn[k].format(n) for k, n in found.events), stacklevel=2)
    return LQGSolution(found.chosen, found.eta, found.kl)
