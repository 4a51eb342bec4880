"""Gradient estimators of a Gaussian-smoothed outer objective (Metz et al. 2019, §3).

Metz et al., "Understanding and correcting pathologies in the training of learned
optimizers" (ICML 2019) replace the outer loss L(θ) by its Gaussian smoothing

    𝓛(θ) = E_{θ̃ ~ N(θ, σ² I)} [L(θ̃)],        σ² = 0.01 in all their experiments,

and estimate ∇𝓛 from S samples θ̃_s = θ + σ n_s in two unbiased ways (§3):

* reparameterization: ``g_rp = 1/S Σ_s ∇L(θ + σ n_s)``;
* ES (log-derivative): ``g_es = 1/S Σ_s L(θ̃_s) ∇_θ log N(θ̃_s; θ, σ²I)
  = 1/S Σ_s L(θ̃_s) n_s / σ``;

both from the *same* antithetic samples (each n_s is used as +n_s and −n_s), merged by
inverse-variance weighting with empirical variances (their eq. 1):

    g_merged = (g_rp σ_rp⁻² + g_es σ_es⁻²) / (σ_rp⁻² + σ_es⁻²).

With antithetic pairs, one *pair* j gives one i.i.d. sample of each estimator:

    rp_j = (∇L(θ + σ n_j) + ∇L(θ − σ n_j)) / 2,
    es_j = (L(θ + σ n_j) − L(θ − σ n_j)) / (2σ) · n_j,

and the estimators are the means over pairs; their variances are estimated from the spread
over pairs. The paper reuses the same samples for the variance estimate (§3), which biases
the merge slightly; :func:`merge` cross-fits the weights by default (see there).

PES (Vicol, Metz & Sohl-Dickstein 2021, "Unbiased gradient estimation in unrolled
computation graphs with persistent evolution strategies") is the ES estimator for truncated
unrolls whose particles keep their own inner state: each truncation draws fresh noise
n_j^(k), the particle accumulates ``ξ_j = Σ_{k' ≤ k} n_j^(k')`` since its inner problem
started, and ``pes_j = (L_k(+) − L_k(−)) / (2σ) · ξ_j``. Summed over the truncations of an
inner run it is an unbiased estimate of the gradient of the full-unroll smoothed loss (with
independent noise per truncation), unlike truncated ES, which ignores the effect of θ on
the state a truncation starts from.

Everything here is a pure function on tensors: flattened outer parameters ``(P,)``, noise
``(pairs, P)``, per-sample losses ``(pairs,)`` and per-sample gradients ``(pairs, P)``, so
any trainer (batched unroll, Python loop, distributed workers) can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_SIGMA",
    "ESTIMATORS",
    "MergedGradient",
    "antithetic_noise",
    "antithetic_thetas",
    "es_samples",
    "estimate",
    "estimator_variance",
    "merge",
    "pes_accumulate",
    "rp_samples",
]

#: σ of the smoothing: σ² = 0.01 (Metz et al. 2019, §3)
DEFAULT_SIGMA = 0.1


def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not (isinstance(sigma, int | float) and math.isfinite(sigma)
                                       and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def antithetic_noise(pairs: int, dim: int, generator: torch.Generator,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise ``n`` ``(pairs, dim)``; each row is used as +n and −n."""
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be a positive int, got {pairs!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return torch.randn(pairs, dim, generator=generator, dtype=dtype)


def antithetic_thetas(theta: Tensor, noise: Tensor, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """Perturbed parameters ``(2·pairs, P)``: rows ``[θ + σ n_1..n_m, θ − σ n_1..n_m]``.

    The first half holds the + members, the second half the − members, in pair order (pair
    j is rows j and j + pairs): what :func:`rp_samples` and :func:`es_samples` expect.
    """
    sigma = _check_sigma(sigma)
    if theta.ndim != 1 or noise.ndim != 2 or noise.shape[1] != theta.shape[0]:
        raise ValueError(f"theta must be (P,) and noise (pairs, P), got {tuple(theta.shape)} "
                         f"and {tuple(noise.shape)}")
    return torch.cat([theta + sigma * noise, theta - sigma * noise])


def _halves(x: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if x.shape[0] % 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must have an even, non-zero leading size (+ then − members), "
                         f"got shape {tuple(x.shape)}")
    half = x.shape[0] // 2
    return x[:half], x[half:]


def rp_samples(grads: Tensor) -> Tensor:
    """Per-pair reparameterization samples ``(pairs, P)`` from per-member gradients.

    ``grads`` ``(2·pairs, P)``: ∇_θ̃ L(θ̃) for each member, laid out as by
    :func:`antithetic_thetas`. Since ∂θ̃/∂θ = I, the pair's sample is the mean of its two
    members' gradients (Metz et al. 2019, §3, g_rp with antithetic sampling).
    """
    plus, minus = _halves(grads, "grads")
    return 0.5 * (plus + minus)


def es_samples(losses: Tensor, noise: Tensor, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """Per-pair antithetic ES samples ``(pairs, P)``: ``(L₊ − L₋) / (2σ) · n``.

    ``losses`` ``(2·pairs,)`` laid out as by :func:`antithetic_thetas`; ``noise`` ``(pairs,
    P)`` the noise of each pair (for PES: the accumulated noise, :func:`pes_accumulate`).
    ∇_θ log N(θ̃; θ, σ²I) = (θ̃ − θ)/σ² = ±n/σ, so averaging the + and − members gives this
    (Metz et al. 2019, §3, g_es with antithetic sampling).
    """
    sigma = _check_sigma(sigma)
    if losses.ndim != 1:
        raise ValueError(f"losses must be 1-d (2·pairs,), got shape {tuple(losses.shape)}")
    plus, minus = _halves(losses, "losses")
    if noise.ndim != 2 or noise.shape[0] != plus.shape[0]:
        raise ValueError(f"noise must be (pairs={plus.shape[0]}, P), got {tuple(noise.shape)}")
    return ((plus - minus) / (2 * sigma))[:, None] * noise


def pes_accumulate(accumulated: Tensor | None, noise: Tensor,
                   restart: Tensor | None = None) -> Tensor:
    """PES's accumulated noise ``ξ`` after a truncation with noise ``noise`` ``(pairs, P)``.

    ``ξ ← ξ + n`` for particles that continue their inner run and ``ξ ← n`` where
    ``restart`` (bool ``(pairs,)``) says the inner problem was reset before this truncation
    (Vicol et al. 2021, Algorithm 2). Use the result as ``noise`` of :func:`es_samples`.
    """
    if noise.ndim != 2:
        raise ValueError(f"noise must be (pairs, P), got shape {tuple(noise.shape)}")
    if restart is not None and (restart.dtype != torch.bool
                                or restart.shape != (noise.shape[0],)):
        raise ValueError(f"restart must be a bool tensor of shape ({noise.shape[0]},), got "
                         f"{restart.dtype} {tuple(restart.shape)}")
    if accumulated is None:
        return noise.clone()
    if accumulated.shape != noise.shape:
        raise ValueError(f"accumulated noise has shape {tuple(accumulated.shape)}, "
                         f"noise {tuple(noise.shape)}")
    if restart is None:
        return accumulated + noise
    return torch.where(restart[:, None], noise, accumulated + noise)


def estimator_variance(samples: Tensor, elementwise: bool = False) -> Tensor:
    """Empirical variance of the *mean* of i.i.d. ``samples`` ``(m, P)``.

    ``elementwise=False``: the total variance (trace of the covariance of the mean), a
    scalar; ``True``: per coordinate ``(P,)``. Non-finite samples give ``inf`` (so that
    estimator gets zero weight in :func:`merge`); fewer than 2 samples give ``inf`` too (no
    variance estimate).
    """
    if samples.ndim != 2:
        raise ValueError(f"samples must be (m, P), got shape {tuple(samples.shape)}")
    m = samples.shape[0]
    shape = (samples.shape[1],) if elementwise else ()
    if m < 2 or not torch.isfinite(samples).all():
        return samples.new_full(shape, torch.inf)
    var = samples.var(0, unbiased=True) / m
    return var if elementwise else var.sum()


@dataclass
class MergedGradient:
    """The estimators and their merge (all detached).

    ``grad``: the merged gradient; ``g_rp``, ``g_es``: the two estimators; ``var_rp``,
    ``var_es``: their empirical variances; ``w_rp``: the weight of g_rp in eq. (1)
    (``1 - w_rp`` is that of g_es).
    """

    grad: Tensor
    g_rp: Tensor
    g_es: Tensor
    var_rp: Tensor
    var_es: Tensor
    w_rp: Tensor


def _weight(var_rp: Tensor, var_es: Tensor) -> Tensor:
    """w_rp = σ_rp⁻² / (σ_rp⁻² + σ_es⁻²) = σ_es² / (σ_rp² + σ_es²), written in the second form
    so that an infinite variance gives weight exactly 0 and two zero variances give ½."""
    total = var_rp + var_es
    zeros, ones = torch.zeros_like(total), torch.ones_like(total)
    return torch.where(
        torch.isinf(var_rp) & torch.isinf(var_es), zeros,
        torch.where(torch.isinf(var_es), ones,
                    torch.where(torch.isinf(var_rp), zeros,
                                torch.where(total > 0, var_es / total.clamp_min(1e-300),
                                            torch.full_like(total, 0.5)))),
    )


def _combine(w_rp: Tensor, g_rp: Tensor, g_es: Tensor) -> Tensor:
    # weight 0 must also drop a non-finite estimator (0 · nan = nan)
    return (torch.where(w_rp > 0, w_rp * g_rp, 0.0)
            + torch.where(w_rp < 1, (1 - w_rp) * g_es, 0.0))


def merge(rp: Tensor, es: Tensor, elementwise: bool = False,
          crossfit: bool = True) -> MergedGradient:
    """Inverse-variance weighting of the two estimators (Metz et al. 2019, eq. 1).

    ``rp``, ``es``: per-pair samples ``(pairs, P)`` (:func:`rp_samples`, :func:`es_samples`).
    The weight of g_rp is ``w_rp = σ_es² / (σ_rp² + σ_es²)`` with empirical variances
    (:func:`estimator_variance`). A non-finite estimator (an exploded unroll) gets weight 0
    and is not added; if both are non-finite the merged gradient is zero.
    ``elementwise=True`` weights per coordinate.

    Weights computed from the same samples as the means make the merge biased: a sample
    that happens to be large also inflates its estimator's variance and lowers its own
    weight. The paper notes that "in theory, to prevent bias the samples used to evaluate
    σ_rp² and σ_es² must be independent of those used to estimate g_es and g_rp, but in
    practice we found good performance using the same samples" (§3). ``crossfit=True``
    (default, with ≥ 4 pairs) keeps it unbiased at no extra cost: the pairs are split into
    two halves, each half's means are weighted with the *other* half's variances, and the
    two merged halves are averaged. ``crossfit=False`` is the paper's same-sample merge.
    ``var_rp``, ``var_es`` and ``w_rp`` report the all-sample values either way.
    """
    if rp.shape != es.shape or rp.ndim != 2:
        raise ValueError(f"rp and es must both be (pairs, P), got {tuple(rp.shape)} and "
                         f"{tuple(es.shape)}")
    var_rp = estimator_variance(rp, elementwise)
    var_es = estimator_variance(es, elementwise)
    g_rp, g_es = rp.mean(0), es.mean(0)
    w_rp = _weight(var_rp, var_es)
    m = rp.shape[0]
    if not crossfit or m < 4:
        grad = torch.where(torch.isinf(var_rp) & torch.isinf(var_es), 0.0,
                           _combine(w_rp, g_rp, g_es))
        return MergedGradient(grad, g_rp, g_es, var_rp, var_es, w_rp)
    if bool((torch.isinf(var_rp) & torch.isinf(var_es)).all()):
        return MergedGradient(torch.zeros_like(g_rp), g_rp, g_es, var_rp, var_es, w_rp)
    h = m // 2
    halves = ((slice(0, h), slice(h, m)), (slice(h, m), slice(0, h)))
    grad = torch.zeros_like(g_rp)
    for weigh, apply in halves:  # two halves, not a loop over coordinates
        w = _weight(estimator_variance(rp[weigh], elementwise),
                    estimator_variance(es[weigh], elementwise))
        # an estimator with a non-finite sample anywhere is dropped in both halves
        w = torch.where(torch.isinf(var_rp), 0.0, torch.where(torch.isinf(var_es), 1.0, w))
        part = _combine(w, rp[apply].mean(0), es[apply].mean(0))
        grad = grad + part * (rp[apply].shape[0] / m)
    return MergedGradient(grad, g_rp, g_es, var_rp, var_es, w_rp)


#: the estimator choices of :func:`estimate` (and of MetzConfig.estimator)
ESTIMATORS = ("merged", "rp", "es")


def estimate(kind: str, *, losses: Tensor, noise: Tensor, sigma: float = DEFAULT_SIGMA,
             grads: Tensor | None = None, elementwise: bool = False,
             crossfit: bool = True) -> MergedGradient:
    """One call for a trainer: ``kind`` is ``"merged"``, ``"rp"`` or ``"es"``.

    ``losses`` ``(2·pairs,)`` and ``grads`` ``(2·pairs, P)`` per member (``grads`` is needed
    unless ``kind == "es"``); ``noise`` ``(pairs, P)`` (PES: the accumulated noise). The
    returned ``grad`` is the chosen estimator; the others are filled in where computable
    (``g_rp`` is nan for ``"es"``, where no gradients were computed).
    """
    if kind not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {kind!r}")
    es = es_samples(losses, noise, sigma)
    if grads is None:
        if kind != "es":
            raise ValueError(f"estimator {kind!r} needs the per-member gradients (grads)")
        rp = torch.full_like(es, torch.nan)
    else:
        rp = rp_samples(grads)
    # merged in every mode: its variances and weight are the diagnostics an ablation
    # compares, and the merge costs little beside the unrolls that produced the samples
    out = merge(rp, es, elementwise, crossfit)
    if kind == "rp":
        out.grad, out.w_rp = out.g_rp, torch.ones_like(out.w_rp)
    elif kind == "es":
        out.grad, out.w_rp = out.g_es, torch.zeros_like(out.w_rp)
    return out
