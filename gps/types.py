"""Shared containers of guided policy search: controllers, dynamics, costs.

Everything is float64 (LQG and dynamics fits are numerically delicate) and carries
leading batch dimensions ``...`` — one per independent LQG problem, e.g. one per
coordinate group in convolutional GPS (Li & Malik 2017, §3.5) — before the time axis
``T``. ``ds`` is the state dimension, ``da`` the action dimension, ``dx = ds + da``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["LinearDynamics", "LinearGaussianController", "QuadraticCost", "TrajectoryMoments",
           "check_finite"]


def check_finite(name: str, x: Tensor) -> None:
    """ValueError naming ``name``, the count and the first index of non-finite entries.

    Fits and LQG check their inputs: a NaN would otherwise surface far away (a dual
    search that reads it as "η too small", a Cholesky that fails "even with jitter")."""
    if x.numel() == 0 or not x.is_floating_point():
        return
    # One min/max pass (no (x.shape) bool temporary; ~9x faster on the trainer's
    # 31M-entry state tensors): NaN propagates into both, ±inf into one of them.
    lo, hi = torch.aminmax(x)
    if bool(torch.isfinite(lo) & torch.isfinite(hi)):
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has {int(bad.sum())} non-finite entries (the first at "
                         f"index {first}: {float(x[first])})")


def _check(obj: object) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, Tensor) and value.dtype != torch.float64:
            raise ValueError(f"{type(obj).__name__}.{f.name} must be float64, got {value.dtype}")


@dataclass
class LinearGaussianController:
    """ψ(a | s, t) = N(K_t s + k_t, Σ_t) (Li & Malik 2017, §3.4).

    ``K`` ``(..., T, da, ds)``, ``k`` ``(..., T, da)``, ``cov`` ``(..., T, da, da)``,
    ``chol`` its lower Cholesky factor, ``inv_cov`` its inverse (kept from the LQG
    backward pass, where it is Q_uu, so that it is never re-factorized).
    """

    K: Tensor
    k: Tensor
    cov: Tensor
    chol: Tensor
    inv_cov: Tensor

    def __post_init__(self) -> None:
        _check(self)

    @property
    def T(self) -> int:
        return self.K.shape[-3]

    @classmethod
    def from_cov(cls, K: Tensor, k: Tensor, cov: Tensor) -> LinearGaussianController:
        """Build from a covariance: factorizes it once (symmetrized first)."""
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        chol = torch.linalg.cholesky(cov)
        inv = torch.cholesky_inverse(chol)
        return cls(K, k, cov, chol, 0.5 * (inv + inv.transpose(-1, -2)))


@dataclass
class LinearDynamics:
    """p̃(s_{t+1} | s_t, a_t) = N(A_t s_t + B_t a_t + c_t, F_t) (Li & Malik 2017, §3.4).

    ``A`` ``(..., T, ds, ds)``, ``B`` ``(..., T, ds, da)``, ``c`` ``(..., T, ds)``,
    ``F`` ``(..., T, ds, ds)``: the transition from step t to t + 1 (the last one,
    t = T − 1, is unused by a horizon-T LQG but kept for a uniform shape).
    """

    A: Tensor
    B: Tensor
    c: Tensor
    F: Tensor

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class QuadraticCost:
    """c̃_t(s, a) = ½ [s;a]ᵀ C_t [s;a] + d_tᵀ [s;a] + h_t.

    ``C`` ``(..., T, dx, dx)`` symmetric, ``d`` ``(..., T, dx)``, ``h`` ``(..., T)``. The
    paper's cost depends on the state only (§3.3); BADMM adds action terms
    (−λ_tᵀ a and the KL to π), which is why the action block exists.
    """

    C: Tensor
    d: Tensor
    h: Tensor

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class TrajectoryMoments:
    """Gaussian marginals of the joint (s_t, a_t) under a controller and dynamics.

    ``mean`` ``(..., T, dx)``, ``cov`` ``(..., T, dx, dx)``.
    """

    mean: Tensor
    cov: Tensor

    def __post_init__(self) -> None:
        _check(self)
