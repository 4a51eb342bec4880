"""A path-integral (PI²) ψ-update of the gradient gain schedule: an option beside the LQG.

Chebotar et al. 2017 ("Path integral guided policy search", ICRA, §III) replace GPS's
LQG ψ-update by PI²: each sample is weighted by exp(−S/η), S its cost-to-go, and the
controller moves to the weighted mean of the sampled perturbations, η set so that the
weights stay within a KL of the uniform ones. Here the perturbation is of ψ's gain on its
gradient feature, one per block of steps and rollout, shared by every coordinate (so the
credit of a rollout's outcome goes to one number per block instead of 1/n to each
coordinate's noise), and S is the mean log objective from the block's first step on: a
large early step is charged for what it does to the rest of the run, which the LQG's
per-step Taylor cost with per-coordinate linear dynamics does not see (README, "AdaGrad's
normalization").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["costs_to_go", "pi2_update", "pi2_weights"]

_F64 = torch.float64


def pi2_weights(costs: Tensor, kl: float, iters: int = 100) -> tuple[Tensor, Tensor]:
    """w ∝ exp(−S/η) over the last dim with Σ w·log(M·w) = ``kl`` (bisection in log η).

    ``costs`` ``(..., M)`` finite. Returns ``(w, kl_achieved)``; when even η → 0 (all
    weight on the cheapest samples) stays within ``kl``, that limit is returned.
    """
    if not kl > 0:
        raise ValueError(f"kl must be > 0, got {kl!r}")
    S = costs.to(_F64)
    if S.dim() < 1 or S.shape[-1] < 2:
        raise ValueError(f"costs must be (..., M) with M >= 2, got {tuple(S.shape)}")
    if not bool(torch.isfinite(S).all()):
        raise ValueError("costs must be finite")
    M = S.shape[-1]
    S = S - S.amin(-1, keepdim=True)
    scale = S.amax(-1, keepdim=True).clamp_min(1e-300)

    def weights(log_eta: Tensor) -> tuple[Tensor, Tensor]:
        w = torch.softmax(-S / (scale * log_eta.exp()), -1)
        return w, (w * (M * w).clamp_min(1e-300).log()).sum(-1)

    lo = torch.full((*S.shape[:-1], 1), math.log(1e-8), dtype=_F64)  # greedy: KL large
    hi = torch.full_like(lo, math.log(1e8))  # η ≫ cost range: w uniform, KL ≈ 0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        _, k = weights(mid)
        too_greedy = k[..., None] > kl
        lo = torch.where(too_greedy, mid, lo)
        hi = torch.where(too_greedy, hi, mid)
    return weights(hi)


def costs_to_go(log_costs: Tensor, block: int, steps: int) -> Tensor:
    """Mean of ``log_costs[:, t]`` over t = t_b+1 .. ``steps`` per block b: ``(M, B)``.

    ``log_costs`` ``(M, steps+1)`` (log f at every step, f(x_0) first); block b covers the
    actions at steps b·block .. (b+1)·block−1, whose effects start at t_b + 1.
    """
    if log_costs.dim() != 2 or log_costs.shape[1] != steps + 1:
        raise ValueError(f"log_costs must be (M, {steps + 1}), got {tuple(log_costs.shape)}")
    tail = log_costs[:, 1:].to(_F64).flip(1).cumsum(1).flip(1)  # Σ_{τ ≥ t} over t = 1..T
    starts = torch.arange(0, steps, block)
    return tail[:, starts] / (steps - starts).to(_F64)


def pi2_update(noise: Tensor, costs: Tensor, sigma: float, kl: float) -> tuple[Tensor, Tensor]:
    """The gain change per block, σ·Σ_m w_m z_m, from perturbations z ``(M, B)`` and
    costs-to-go ``(M, B)``. Returns ``(delta (B,), kl_achieved (B,))``."""
    if noise.shape != costs.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and costs {tuple(costs.shape)} differ")
    w, k = pi2_weights(costs.mT, kl)  # (B, M)
    return sigma * (w * noise.mT.to(_F64)).sum(-1), k
