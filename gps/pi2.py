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
normalization"). Two departures from the plain weighted mean, both for a noisy, heavy-tailed
signal: the perturbations are centred on their sample mean (cost-blind weights then give no
change), and a rollout that diverged ranks below every finite one on the blocks it reached.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["costs_to_go", "pi2_update", "pi2_weights", "rank_divergences"]

_F64 = torch.float64


def pi2_weights(costs: Tensor, kl: float, iters: int = 100,
                valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """w ∝ exp(−S/η) over the last dim with Σ w·log(M·w) = ``kl`` (bisection in log η).

    ``costs`` ``(..., M)``, finite where ``valid`` (bool, same shape; all by default).
    Invalid samples get weight 0 and M counts the valid ones; a row with fewer than two
    valid samples gets uniform weights over them and KL 0. Returns ``(w, kl_achieved)``;
    when even η → 0 (all weight on the cheapest samples) stays within ``kl``, that limit
    is returned.
    """
    if not kl > 0:
        raise ValueError(f"kl must be > 0, got {kl!r}")
    S = costs.to(_F64)
    if S.dim() < 1 or S.shape[-1] < 2:
        raise ValueError(f"costs must be (..., M) with M >= 2, got {tuple(S.shape)}")
    if valid is None:
        valid = torch.ones_like(S, dtype=torch.bool)
    elif valid.shape != S.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(S.shape)}, "
                         f"got {valid.dtype} {tuple(valid.shape)}")
    if not bool(torch.isfinite(S[valid]).all()):
        raise ValueError("costs must be finite")
    M = valid.sum(-1, keepdim=True).clamp_min(1).to(_F64)
    S = torch.where(valid, S, math.inf)
    S = torch.where(valid, S - S.amin(-1, keepdim=True), 0.0)
    scale = S.amax(-1, keepdim=True).clamp_min(1e-300)

    def weights(log_eta: Tensor) -> tuple[Tensor, Tensor]:
        logits = (-S / (scale * log_eta.exp())).masked_fill(~valid, -math.inf)
        w = torch.softmax(logits, -1).nan_to_num(0.0)  # a row with no valid sample: 0
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


def rank_divergences(costs: Tensor, diverged_at: Tensor, block: int,
                     steps: int) -> tuple[Tensor, Tensor]:
    """Costs-to-go ``(M, B)`` with divergence ranked worst; returns ``(costs, valid)``.

    ``diverged_at`` ``(M,)``: the step at which a rollout diverged (its cost index,
    1..``steps``), or anything > ``steps`` when it did not. A rollout that diverged is worse
    than every finite one on each block it reached, whatever its log costs before (a run
    that falls fast and then blows up must not look good): its cost there is one decade
    above the block's worst finite cost. Blocks that start at or after its divergence were
    never applied: not ``valid``, they take no part in the update.
    """
    M, B = costs.shape
    if diverged_at.shape != (M,):
        raise ValueError(f"diverged_at must be ({M},), got {tuple(diverged_at.shape)}")
    S = costs.to(_F64)
    finite = (diverged_at > steps)[:, None].expand(M, B)
    starts = torch.arange(B) * block  # each block's first action step
    reached = starts[None, :] < diverged_at[:, None]
    worst = torch.where(finite, S, -math.inf).amax(0, keepdim=True)
    worst = torch.where(torch.isfinite(worst), worst, S.amax(0, keepdim=True))
    return torch.where(finite, S, worst + 1.0), finite | reached


def pi2_update(noise: Tensor, costs: Tensor, sigma: float, kl: float,
               valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The gain change per block from perturbations z ``(M, B)`` and costs-to-go ``(M, B)``.

    σ·Σ_m w_m (z_m − z̄), z̄ the mean over the block's valid samples: weights that do not
    depend on the costs give no change (the plain Σ w z moves by the sample mean of z,
    noise of size σ/√M each iteration), and the samples that did worst pull the gain away
    from their perturbation. Returns ``(delta (B,), kl_achieved (B,))``.
    """
    if noise.shape != costs.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and costs {tuple(costs.shape)} differ")
    valid = torch.ones_like(costs, dtype=torch.bool) if valid is None else valid
    w, k = pi2_weights(costs.mT, kl, valid=valid.mT)  # (B, M)
    z = noise.mT.to(_F64)
    zbar = (z * valid.mT).sum(-1, keepdim=True) / valid.mT.sum(-1, keepdim=True).clamp_min(1)
    return sigma * (w * (z - zbar)).sum(-1), k
