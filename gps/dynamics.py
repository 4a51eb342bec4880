"""Time-varying linear-Gaussian dynamics fitted with a normal-inverse-Wishart prior.

GPS linearizes the transition density around the samples of the current controller ψ:
p̃(s_{t+1} | s_t, a_t) = N(A_t s_t + B_t a_t + c_t, F_t) (Li & Malik 2017, §3.4). As in
Levine et al. 2016 ("End-to-end training of deep visuomotor policies", appendix)
and the reference GPS code (``DynamicsLRPrior`` / ``gauss_fit_joint_prior``), each time
step fits a Gaussian to z = [s_t; a_t; s_{t+1}] combined with a normal-inverse-Wishart
(NIW) prior, and then conditions s_{t+1} on x = [s_t; a_t].

In convolutional GPS (Li & Malik 2017, §3.5) the dynamics are block-diagonal over
coordinates and shared within a coordinate group, so every coordinate of a group is one
more sample of the group's per-coordinate dynamics: ``N = rollouts × coordinates``.

Layout: ``states`` ``(..., N, T+1, ds)``, ``actions`` ``(..., N, T, da)``; leading dims
``...`` are independent problems (e.g. coordinate groups). Everything is float64.

The exact formulas (D = 2 ds + da, x = z[:ds+da], y = z[ds+da:]), for each t:

    μ̂ = (1/N) Σ_n z_n,   Σ̂ = (1/N) Σ_n (z_n − μ̂)(z_n − μ̂)ᵀ            (MLE moments)
    Σ  = (Φ + N Σ̂ + (N m / (N + m)) (μ̂ − μ0)(μ̂ − μ0)ᵀ) / (N + n0)      (NIW MAP)
    μ  = μ̂                    (mean="data", the reference code's choice; default)
    μ  = (N μ̂ + m μ0)/(N + m)   (mean="posterior", the NIW posterior mean)
    [A B] = Σ_yx (Σ_xx + λI)⁻¹,   c = μ_y − [A B] μ_x,
    F = Σ_yy − Σ_yx (Σ_xx + λI)⁻¹ Σ_xy,  symmetrized, eigenvalues floored at ``min_var``.

λ = ``ridge`` is in covariance units (λ N on the scatter matrix), as the reference
code's ``regularization``. With no prior (or strength 0: Φ = 0, m = n0 = 0) this is
ordinary least squares of s_{t+1} on [s_t; a_t; 1] with a ridge λ on the non-constant
coefficients; with a very strong prior it tends to the prior's own conditional.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from gps.types import LinearDynamics, check_finite

__all__ = [
    "DynamicsPrior",
    "GMMPrior",
    "conditional",
    "dynamics_log_likelihood",
    "fit_dynamics",
    "global_prior",
    "joint_moments",
    "predict",
]

_F64 = torch.float64
# Bytes of z = [s_t; a_t; s_{t+1}] materialized at once; larger inputs are split over T.
_CHUNK_BYTES = 1 << 27


# ----------------------------------------------------------------------------- helpers


def _as_f64(x: Tensor) -> Tensor:
    return x if x.dtype == _F64 else x.to(_F64)


def _sym(M: Tensor) -> Tensor:
    return 0.5 * (M + M.transpose(-1, -2))


def _check_data(states: Tensor, actions: Tensor, scan: bool = True) -> tuple[int, int, int, int]:
    """Return (N, T, ds, da) after checking the ``(..., N, T+1, ds)`` / ``(..., N, T, da)``
    layout (and, with ``scan``, that every entry is finite)."""
    if states.dim() < 3 or actions.dim() < 3:
        raise ValueError(
            f"states must be (..., N, T+1, ds) and actions (..., N, T, da); got "
            f"{tuple(states.shape)} and {tuple(actions.shape)}"
        )
    N, T1, ds = states.shape[-3:]
    N2, T, da = actions.shape[-3:]
    if states.shape[:-3] != actions.shape[:-3] or N != N2 or T1 != T + 1:
        raise ValueError(
            f"states {tuple(states.shape)} and actions {tuple(actions.shape)} do not match "
            "(..., N, T+1, ds) and (..., N, T, da)"
        )
    if N < 1 or T < 1:
        raise ValueError(f"need N >= 1 samples and T >= 1 steps, got N={N}, T={T}")
    if scan:
        check_finite("states (..., N, T+1, ds)", states)
        check_finite("actions (..., N, T, da)", actions)
    return N, T, ds, da


def _given_moments(moments: tuple[Tensor, Tensor], states: Tensor,
                   actions: Tensor) -> tuple[Tensor, Tensor]:
    """``moments`` (:func:`joint_moments` of these samples, computed once by a caller
    that needs them twice) after checking them against the samples' shapes and for
    finite values (the samples themselves were scanned when the moments were made)."""
    _, T, ds, da = _check_data(states, actions, scan=False)
    D, batch = 2 * ds + da, tuple(states.shape[:-3])
    if not (isinstance(moments, tuple | list) and len(moments) == 2
            and all(isinstance(m, Tensor) for m in moments)):
        raise ValueError("moments must be the (mean, cov) pair of tensors joint_moments "
                         f"returns, got {type(moments).__name__}")
    mean, cov = moments
    if tuple(mean.shape) != (*batch, T, D) or tuple(cov.shape) != (*batch, T, D, D):
        raise ValueError(
            f"moments must be joint_moments(states, actions): mean {(*batch, T, D)} and cov "
            f"{(*batch, T, D, D)}, got {tuple(mean.shape)} and {tuple(cov.shape)}")
    check_finite("moments mean (..., T, D)", mean)
    check_finite("moments cov (..., T, D, D)", cov)
    return _as_f64(mean), _as_f64(cov)


def _time_chunks(T: int, bytes_per_step: int) -> Iterator[slice]:
    step = max(1, _CHUNK_BYTES // max(1, bytes_per_step))
    for t0 in range(0, T, step):
        yield slice(t0, min(T, t0 + step))


def _joint(states: Tensor, actions: Tensor, ts: slice) -> Tensor:
    """z = [s_t; a_t; s_{t+1}] for t in ``ts``: ``(..., N, len(ts), 2 ds + da)``."""
    nxt = slice(ts.start + 1, ts.stop + 1)
    return torch.cat(
        [_as_f64(states[..., ts, :]), _as_f64(actions[..., ts, :]), _as_f64(states[..., nxt, :])],
        dim=-1,
    )


def _robust_cholesky(S: Tensor, tries: int = 12) -> Tensor:
    """Lower Cholesky factor of SPD ``S``; elements that fail get growing diagonal jitter
    (1e-12 × mean diagonal, ×10 per retry) rather than aborting the whole batch."""
    L, info = torch.linalg.cholesky_ex(S)
    if not bool((info > 0).any()):
        return L
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    scale = S.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-300)
    jitter = torch.where(info > 0, 1e-12 * scale, torch.zeros_like(scale))
    for _ in range(tries):
        L, info = torch.linalg.cholesky_ex(S + jitter[..., None, None] * eye)
        if not bool((info > 0).any()):
            return L
        jitter = torch.where(info > 0, jitter * 10.0, jitter)
    raise ValueError("covariance is not positive definite even with jitter (non-finite data?)")


def _psd_floor(M: Tensor, floor: float) -> Tensor:
    """Symmetrize and raise eigenvalues below ``floor`` to ``floor`` (keeps F PD after
    round-off, and exactly 0 noise for noiseless data)."""
    w, V = torch.linalg.eigh(_sym(M))
    return _sym((V * w.clamp_min(floor).unsqueeze(-2)) @ V.transpose(-1, -2))


# ----------------------------------------------------------------------------- moments


def joint_moments(states: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Empirical mean ``(..., T, D)`` and MLE covariance ``(..., T, D, D)`` (divided by N)
    of z_t = [s_t; a_t; s_{t+1}] over the N samples, D = 2 ds + da."""
    N, T, ds, da = _check_data(states, actions)
    D = 2 * ds + da
    batch = math.prod(states.shape[:-3])
    means, covs = [], []
    for ts in _time_chunks(T, 8 * batch * N * D):
        z = _joint(states, actions, ts)
        mu = z.mean(dim=-3)
        zc = z - mu.unsqueeze(-3)
        # (..., t, D, N) @ (..., t, N, D): one batched matmul per chunk of time steps.
        zt = zc.movedim(-3, -1)
        means.append(mu)
        covs.append(_sym(zt @ zt.transpose(-1, -2)) / N)
    return torch.cat(means, dim=-2), torch.cat(covs, dim=-3)


# ----------------------------------------------------------------------------- priors


@dataclass
class DynamicsPrior:
    """Normal-inverse-Wishart prior on the joint Gaussian of z = [s_t; a_t; s_{t+1}].

    ``Phi`` ``(..., T or 1, D, D)`` (the inverse-Wishart scale, i.e. n0 × the prior
    covariance), ``mu0`` ``(..., T or 1, D)``, ``m`` (pseudo-count of the mean) and
    ``n0`` (pseudo-count of the covariance), each a float or a tensor broadcastable to
    ``(..., T)``. A T axis of size 1 applies the same prior to every step. Its own
    conditional (what a very strong prior returns) is :meth:`conditional`.
    """

    Phi: Tensor
    mu0: Tensor
    m: Tensor | float
    n0: Tensor | float

    def __post_init__(self) -> None:
        self.Phi = _as_f64(self.Phi)
        self.mu0 = _as_f64(self.mu0)
        self.m = torch.as_tensor(self.m, dtype=_F64)
        self.n0 = torch.as_tensor(self.n0, dtype=_F64)
        if self.Phi.dim() < 3 or self.mu0.dim() < 2:
            raise ValueError(
                f"Phi must be (..., T or 1, D, D) and mu0 (..., T or 1, D); got "
                f"{tuple(self.Phi.shape)} and {tuple(self.mu0.shape)}"
            )
        if bool((self.m < 0).any()) or bool((self.n0 < 0).any()):
            raise ValueError(f"m and n0 must be >= 0, got m={self.m}, n0={self.n0}")

    def conditional(
        self, ds: int, da: int, ridge: float = 1e-6, min_var: float = 1e-10
    ) -> LinearDynamics:
        """The prior's own dynamics: the conditional of N(μ0, Φ / n0) (requires n0 > 0)."""
        if bool((self.n0 <= 0).any()):
            raise ValueError("the prior's conditional needs n0 > 0")
        cov = self.Phi / self.n0[..., None, None]
        return conditional(self.mu0, cov, ds, da, ridge=ridge, min_var=min_var)


def global_prior(states: Tensor, actions: Tensor, strength: float = 1.0, *,
                 moments: tuple[Tensor, Tensor] | None = None) -> DynamicsPrior:
    """Global linear-Gaussian prior: one Gaussian of z fitted on all time steps pooled.

    μ0 = pooled mean, Φ = strength × pooled covariance, m = n0 = strength, so that
    Φ / n0 is the pooled covariance and the prior weighs as ``strength`` pseudo-samples
    (0 ⇒ no prior). Pooled moments come from the per-step ones by the law of total
    covariance (equal N per step): Σ = mean_t Σ_t + mean_t (μ_t − μ)(μ_t − μ)ᵀ.
    ``moments``: :func:`joint_moments` of these samples, if the caller has them.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    mean_t, cov_t = (joint_moments(states, actions) if moments is None
                     else _given_moments(moments, states, actions))
    mu = mean_t.mean(dim=-2, keepdim=True)
    d = mean_t - mu
    cov = cov_t.mean(dim=-3, keepdim=True) + (d.transpose(-1, -2) @ d).unsqueeze(-3) / d.shape[-2]
    return DynamicsPrior(Phi=strength * _sym(cov), mu0=mu, m=float(strength), n0=float(strength))


class GMMPrior:
    """Gaussian-mixture prior on z = [s_t; a_t; s_{t+1}] (reference ``DynamicsPriorGMM``).

    :meth:`fit` runs EM on the pooled z vectors of all samples and steps (batched over
    the leading dims, ``iters`` iterations, k-means++ initialization from a generator
    seeded with ``seed``). The M step is the MAP update Σ_k = (S_k + εI) / N_k, i.e. an
    improper inverse-Wishart prior p(Σ_k) ∝ exp(−½ ε tr Σ_k⁻¹) with ε = ``reg`` × the mean
    data variance; EM then never decreases the penalized log-likelihood
    Σ_p log Σ_k w_k N(z_p | μ_k, Σ_k) − ½ ε Σ_k tr Σ_k⁻¹, recorded per iteration in
    ``log_likelihood`` ``(iters + 1, ...)`` (entry i is evaluated before the i-th M step).

    :meth:`eval` gives, for each t, the cluster weights w_k = mean_n p(k | z_{n,t}) of the
    current samples and the moments of the mixture they select,
    μ0 = Σ_k w_k μ_k and Σ0 = Σ_k w_k (Σ_k + (μ_k − μ0)(μ_k − μ0)ᵀ), returned as a NIW
    prior with Φ = strength × Σ0 and m = n0 = strength (the reference code uses
    n0 = strength × (P − 2 − D)/P ≈ strength; we keep the pseudo-counts equal).
    """

    def __init__(
        self,
        k: int = 4,
        strength: float = 1.0,
        iters: int = 20,
        reg: float = 1e-6,
        max_points: int | None = 10_000,
        max_eval_samples: int | None = 256,
        seed: int = 0,
    ) -> None:
        if k < 1 or iters < 0 or strength < 0 or reg < 0:
            raise ValueError(
                f"need k >= 1, iters >= 0, strength >= 0, reg >= 0; got k={k}, iters={iters}, "
                f"strength={strength}, reg={reg}"
            )
        self.k, self.strength, self.iters, self.reg = k, strength, iters, reg
        self.max_points, self.max_eval_samples, self.seed = max_points, max_eval_samples, seed
        self.log_weights: Tensor | None = None  # (..., K)
        self.means: Tensor | None = None  # (..., K, D)
        self.covs: Tensor | None = None  # (..., K, D, D)
        self.log_likelihood: Tensor | None = None  # (iters + 1, ...)

    # EM on flattened batches: z (B, P, D).
    @staticmethod
    def _log_joint(z: Tensor, logw: Tensor, mu: Tensor, L: Tensor) -> Tensor:
        """log w_k + log N(z_p | μ_k, L_k L_kᵀ): ``(B, P, K)``."""
        D = z.shape[-1]
        diff = (z.unsqueeze(1) - mu.unsqueeze(2)).transpose(-1, -2)  # (B, K, D, P)
        sol = torch.linalg.solve_triangular(L, diff, upper=False)
        maha = sol.square().sum(-2)  # (B, K, P)
        logdet = 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (B, K)
        lp = -0.5 * (maha + logdet.unsqueeze(-1) + D * math.log(2 * math.pi))
        return (lp + logw.unsqueeze(-1)).transpose(-1, -2)

    def _init(self, z: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        B, P, D = z.shape
        K = self.k
        ar = torch.arange(B)
        # k-means++ seeding: first centre uniform, then ∝ squared distance to the nearest.
        idx = torch.randint(P, (B,), generator=gen)
        centres = [z[ar, idx]]
        d2 = (z - centres[0].unsqueeze(1)).square().sum(-1)
        for _ in range(1, K):
            probs = d2 + 1e-300  # identical points: fall back to uniform
            idx = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            centres.append(z[ar, idx])
            d2 = torch.minimum(d2, (z - centres[-1].unsqueeze(1)).square().sum(-1))
        mu = torch.stack(centres, dim=1)
        zc = z - z.mean(1, keepdim=True)
        cov = _sym(zc.transpose(-1, -2) @ zc) / P
        cov = cov.unsqueeze(1).expand(B, K, D, D).clone()
        logw = torch.full((B, K), -math.log(K), dtype=_F64)
        return logw, mu, cov

    def fit(self, states: Tensor, actions: Tensor) -> GMMPrior:
        """Fit the mixture by EM on pooled z over samples and steps (at most
        ``max_points`` of them per problem, drawn with the seeded generator)."""
        N, T, ds, da = _check_data(states, actions)
        batch = states.shape[:-3]
        D = 2 * ds + da
        z = _joint(states, actions, slice(0, T)).reshape(-1, N * T, D)
        gen = torch.Generator().manual_seed(self.seed)
        if self.max_points is not None and z.shape[1] > self.max_points:
            keep = torch.randperm(z.shape[1], generator=gen)[: self.max_points]
            z = z[:, keep]
        P = z.shape[1]
        eye = torch.eye(D, dtype=_F64)
        zc = z - z.mean(1, keepdim=True)
        var = zc.square().mean(1).mean(-1)  # (B,) mean data variance
        eps = self.reg * torch.where(var > 0, var, torch.ones_like(var))
        logw, mu, cov = self._init(z, gen)
        cov = cov + eps[:, None, None, None] * eye
        history = []
        for it in range(self.iters + 1):
            L = _robust_cholesky(cov)
            lj = self._log_joint(z, logw, mu, L)  # (B, P, K)
            lse = torch.logsumexp(lj, dim=-1, keepdim=True)
            penalty = torch.cholesky_inverse(L).diagonal(dim1=-2, dim2=-1).sum((-1, -2))
            history.append(lse.squeeze(-1).sum(-1) - 0.5 * eps * penalty)
            if it == self.iters:
                break
            r = (lj - lse).exp()  # responsibilities (B, P, K)
            nk = r.sum(1)  # (B, K)
            nk_safe = nk.clamp_min(1e-12)  # an emptied cluster keeps finite parameters
            mu = (r.transpose(-1, -2) @ z) / nk_safe.unsqueeze(-1)
            diff = z.unsqueeze(1) - mu.unsqueeze(2)  # (B, K, P, D)
            S = (diff * r.transpose(-1, -2).unsqueeze(-1)).transpose(-1, -2) @ diff
            cov = _sym(S + eps[:, None, None, None] * eye) / nk_safe[..., None, None]
            logw = (nk_safe / P).log()
        K = self.k
        self.log_weights = logw.reshape(*batch, K)
        self.means = mu.reshape(*batch, K, D)
        self.covs = cov.reshape(*batch, K, D, D)
        self.log_likelihood = torch.stack(history).reshape(self.iters + 1, *batch)
        return self

    def eval(self, states: Tensor, actions: Tensor) -> DynamicsPrior:
        """Per-step NIW prior for the current samples (at most ``max_eval_samples`` of the N
        samples are used for the cluster weights, drawn with the seeded generator)."""
        if self.means is None or self.covs is None or self.log_weights is None:
            raise ValueError("GMMPrior.eval called before fit")
        N, T, ds, da = _check_data(states, actions)
        batch = states.shape[:-3]
        D = 2 * ds + da
        K = self.k
        if self.means.shape[:-2] != batch or self.means.shape[-1] != D:
            raise ValueError(
                f"GMM fitted on batch {tuple(self.means.shape[:-2])} with D="
                f"{self.means.shape[-1]}, evaluated on batch {tuple(batch)} with D={D}"
            )
        if self.max_eval_samples is not None and N > self.max_eval_samples:
            gen = torch.Generator().manual_seed(self.seed + 1)
            keep = torch.randperm(N, generator=gen)[: self.max_eval_samples]
            states, actions, N = states[..., keep, :, :], actions[..., keep, :, :], len(keep)
        z = _joint(states, actions, slice(0, T)).reshape(-1, N * T, D)
        logw = self.log_weights.reshape(-1, K)
        mu = self.means.reshape(-1, K, D)
        cov = self.covs.reshape(-1, K, D, D)
        lj = self._log_joint(z, logw, mu, _robust_cholesky(cov))
        r = (lj - torch.logsumexp(lj, dim=-1, keepdim=True)).exp()
        w = r.reshape(-1, N, T, K).mean(1)  # (B, T, K): cluster weights per step
        mu0 = w @ mu  # (B, T, D)
        d = mu.unsqueeze(1) - mu0.unsqueeze(2)  # (B, T, K, D)
        spread = cov.unsqueeze(1) + d.unsqueeze(-1) * d.unsqueeze(-2)  # (B, T, K, D, D)
        sigma0 = _sym((w[..., None, None] * spread).sum(2))
        s = float(self.strength)
        return DynamicsPrior(
            Phi=s * sigma0.reshape(*batch, T, D, D), mu0=mu0.reshape(*batch, T, D), m=s, n0=s
        )


# ----------------------------------------------------------------------------- fitting


def conditional(
    mean: Tensor, cov: Tensor, ds: int, da: int, ridge: float = 1e-6, min_var: float = 1e-10
) -> LinearDynamics:
    """Condition N(mean, cov) of z = [s; a; s'] on x = [s; a] (Li & Malik 2017, §3.4).

    [A B] = Σ_yx (Σ_xx + λI)⁻¹, c = μ_y − [A B] μ_x, F = Σ_yy − Σ_yx (Σ_xx + λI)⁻¹ Σ_xy
    (a Schur complement of a PSD matrix, hence PSD), symmetrized with eigenvalues floored
    at ``min_var`` so that F is PD. ``mean`` ``(..., T, D)``, ``cov`` ``(..., T, D, D)``.
    """
    dx = ds + da
    D = dx + ds
    if mean.shape[-1] != D or cov.shape[-2:] != (D, D):
        raise ValueError(
            f"expected D = 2*ds + da = {D}, got mean {tuple(mean.shape)}, cov {tuple(cov.shape)}"
        )
    mean, cov = torch.broadcast_tensors(_as_f64(mean).unsqueeze(-1), _as_f64(cov))
    mean = mean[..., 0]
    eye = torch.eye(dx, dtype=_F64)
    Sxx = cov[..., :dx, :dx] + ridge * eye
    Sxy = cov[..., :dx, dx:]
    L = _robust_cholesky(_sym(Sxx))
    W = torch.linalg.solve_triangular(L, Sxy, upper=False)  # L⁻¹ Σ_xy
    G = torch.linalg.solve_triangular(L.transpose(-1, -2), W, upper=True)  # Σ_xx⁻¹ Σ_xy
    M = G.transpose(-1, -2)  # [A B]: (..., ds, dx)
    F = cov[..., dx:, dx:] - W.transpose(-1, -2) @ W
    c = mean[..., dx:] - (M @ mean[..., :dx].unsqueeze(-1)).squeeze(-1)
    return LinearDynamics(
        A=M[..., :ds].contiguous(), B=M[..., ds:].contiguous(), c=c, F=_psd_floor(F, min_var)
    )


def fit_dynamics(
    states: Tensor,
    actions: Tensor,
    prior: DynamicsPrior | GMMPrior | None = None,
    ridge: float = 1e-6,
    *,
    mean: Literal["data", "posterior"] = "data",
    min_var: float = 1e-10,
    moments: tuple[Tensor, Tensor] | None = None,
) -> LinearDynamics:
    """Fit (A_t, B_t, c_t, F_t) for t < T from ``states`` ``(..., N, T+1, ds)`` and
    ``actions`` ``(..., N, T, da)`` (Li & Malik 2017, §3.4; Levine et al. 2016, appendix).

    Per step the joint Gaussian of z = [s_t; a_t; s_{t+1}] is the NIW MAP
    Σ = (Φ + N Σ̂ + (N m / (N + m)) (μ̂ − μ0)(μ̂ − μ0)ᵀ) / (N + n0) with mean μ̂
    (``mean="data"``, as the reference code: the offset follows the current samples) or
    the NIW posterior mean (N μ̂ + m μ0) / (N + m) (``mean="posterior"``); then
    :func:`conditional` with ridge λ = ``ridge`` on Σ_xx. ``prior=None`` is plain ridge
    least squares. A :class:`GMMPrior` (already fitted) is evaluated on these samples.
    ``moments``: :func:`joint_moments` of these samples, if the caller has them (the
    trainer computes them once for the prior and the fit). Returns ``LinearDynamics``
    with shapes ``(..., T, ·)``.
    """
    if mean not in ("data", "posterior"):
        raise ValueError(f"mean must be 'data' or 'posterior', got {mean!r}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    # shapes only: joint_moments scans the samples' values, _given_moments the moments'
    N, _, ds, da = _check_data(states, actions, scan=False)
    mu_hat, cov_hat = (joint_moments(states, actions) if moments is None
                       else _given_moments(moments, states, actions))
    mu, sigma = mu_hat, cov_hat
    if isinstance(prior, GMMPrior):
        prior = prior.eval(states, actions)
    if prior is not None:
        m, n0 = prior.m, prior.n0
        d = mu_hat - prior.mu0
        outer = d.unsqueeze(-1) * d.unsqueeze(-2)
        # m, n0 broadcast to (..., T): add the matrix (and vector) axes.
        w_mean = (N * m / (N + m))[..., None, None]
        sigma = _sym((prior.Phi + N * cov_hat + w_mean * outer) / (N + n0)[..., None, None])
        if mean == "posterior":
            mu = (N * mu_hat + m[..., None] * prior.mu0) / (N + m)[..., None]
        sigma, mu = sigma.expand(*mu_hat.shape, mu_hat.shape[-1]), mu.expand_as(mu_hat)
    return conditional(mu, sigma, ds, da, ridge=ridge, min_var=min_var)


# ----------------------------------------------------------------------------- quality


def predict(dyn: LinearDynamics, s: Tensor, a: Tensor) -> Tensor:
    """Mean of p̃(s_{t+1} | s_t, a_t) = A_t s_t + B_t a_t + c_t.

    ``s`` ``(..., N, T, ds)`` and ``a`` ``(..., N, T, da)`` (the states s_0..s_{T−1}, not
    s_T); returns ``(..., N, T, ds)``.
    """
    s, a = _as_f64(s), _as_f64(a)
    # einsum keeps T as the matmul batch axis (no copy of A per sample).
    As = torch.einsum("...tij,...ntj->...nti", dyn.A, s)
    return As + torch.einsum("...tij,...ntj->...nti", dyn.B, a) + dyn.c.unsqueeze(-3)


def dynamics_log_likelihood(dyn: LinearDynamics, states: Tensor, actions: Tensor) -> Tensor:
    """log N(s_{t+1}; A_t s_t + B_t a_t + c_t, F_t) per sample and step: ``(..., N, T)``,
    for ``states`` ``(..., N, T+1, ds)`` and ``actions`` ``(..., N, T, da)``."""
    _, _, ds, _ = _check_data(states, actions)
    states = _as_f64(states)
    resid = states[..., 1:, :] - predict(dyn, states[..., :-1, :], actions)
    L = _robust_cholesky(_sym(dyn.F))  # (..., T, ds, ds)
    # Samples as right-hand-side columns: (..., T, ds, N), one solve per step.
    sol = torch.linalg.solve_triangular(L, resid.movedim(-3, -1), upper=False)
    maha = sol.square().sum(-2).movedim(-1, -2)  # (..., N, T)
    logdet = 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1).unsqueeze(-2)  # (..., 1, T)
    return -0.5 * (maha + logdet + ds * math.log(2 * math.pi))
