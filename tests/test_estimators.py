"""Gradient estimators of the smoothed outer loss (Metz et al. 2019, §3; PES, Vicol et al. 2021).

Closed-form truth: on L(θ; φ) = ½‖θ − c‖² + a Σ_i sin(ω θ_i + φ_i) with a random phase φ ~
U(0, 2π)ᵈ per sample, the ripple averages out, so the smoothed outer loss 𝓛(θ) =
E_φ E_{n~N(0,I)} L(θ + σn; φ) has gradient exactly θ − c. The ripple gives g_rp a noise of
order aω and g_es one of order a/σ·√d; ω = 20 ≈ √d/σ makes them comparable (a rough outer
landscape where neither estimator dominates), and θ is close to c so that the ES noise of
the quadratic part does not swamp the ripple's. The merge cross-fits its weights (see
:func:`agents.estimators.merge`): with weights from the same samples it is biased.
"""

from __future__ import annotations

import math

import pytest
import torch

from agents import estimators as est

SIGMA = 0.1
C = torch.tensor([0.1, 0.3, -0.6, 1.0])
THETA = torch.tensor([0.3, 0.1, -0.4, 1.2])
TRUTH = THETA - C  # ∇𝓛(θ) in closed form


def _rippled(theta: torch.Tensor, phase: torch.Tensor, a: float, omega: float,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses (m,) and gradients (m, d) of ½‖θ − c‖² + a Σ sin(ωθ + φ) at rows θ (m, d)."""
    loss = 0.5 * (theta - C).square().sum(1) + a * torch.sin(omega * theta + phase).sum(1)
    grad = (theta - C) + a * omega * torch.cos(omega * theta + phase)
    return loss, grad


def _trials(trials: int, pairs: int, a: float, omega: float, seed: int = 0):
    """``trials`` independent estimates (each from ``pairs`` antithetic pairs)."""
    gen = torch.Generator().manual_seed(seed)
    rows = {"rp": [], "es": [], "merged": [], "w_rp": []}
    for _ in range(trials):
        noise = est.antithetic_noise(pairs, THETA.numel(), gen)
        thetas = est.antithetic_thetas(THETA, noise, SIGMA)
        # both members of a pair share the phase (common random numbers, like minibatches)
        phase = (torch.rand(pairs, THETA.numel(), generator=gen) * 2 * math.pi).repeat(2, 1)
        losses, grads = _rippled(thetas, phase, a, omega)
        out = est.estimate("merged", losses=losses, noise=noise, sigma=SIGMA, grads=grads)
        rows["rp"].append(out.g_rp)
        rows["es"].append(out.g_es)
        rows["merged"].append(out.grad)
        rows["w_rp"].append(out.w_rp)
    return {k: torch.stack(v) for k, v in rows.items()}


def test_rp_es_merged_unbiased_and_merged_variance_is_lowest():
    trials = _trials(trials=2000, pairs=16, a=0.1, omega=20.0)
    variances = {}
    for name in ("rp", "es", "merged"):
        samples = trials[name].double()
        mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
        # unbiased: every coordinate within 3 standard errors of the closed-form gradient
        assert ((mean - TRUTH.double()).abs() <= 3 * se).all(), (name, mean, se)
        variances[name] = float(samples.var(0).sum())
    # the setting exercises the merge: neither estimator dominates by far
    assert 0.1 < variances["rp"] / variances["es"] < 10, variances
    assert 0.05 < float(trials["w_rp"].mean()) < 0.95
    assert variances["merged"] <= min(variances["rp"], variances["es"]), variances


def test_estimators_target_the_smoothed_not_the_raw_gradient():
    """L = Σ θ⁴/4: ∇𝓛 = θ³ + 3σ²θ, not θ³ (σ = 0.5 so the two differ clearly)."""
    sigma, theta = 0.5, torch.tensor([1.0, -0.5])
    gen = torch.Generator().manual_seed(1)
    noise = est.antithetic_noise(200_000, 2, gen, dtype=torch.float64)
    thetas = est.antithetic_thetas(theta.double(), noise, sigma)
    out = est.estimate("merged", losses=thetas.pow(4).sum(1) / 4, noise=noise, sigma=sigma,
                       grads=thetas.pow(3))
    smoothed = (theta.pow(3) + 3 * sigma**2 * theta).double()
    for g, var in ((out.g_rp, out.var_rp), (out.g_es, out.var_es)):
        se = float(var.sqrt())
        assert (g - smoothed).abs().max() <= 3 * se
        assert (g - theta.pow(3).double()).abs().max() > 10 * se


def test_merge_weights_follow_empirical_variances():
    gen = torch.Generator().manual_seed(2)
    truth = torch.tensor([1.0, -1.0, 2.0])
    quiet = truth + 0.01 * torch.randn(16, 3, generator=gen)
    loud = truth + 1e4 * torch.randn(16, 3, generator=gen)
    out = est.merge(loud, quiet)  # huge rp variance -> g_rp gets (almost) no weight
    assert float(out.w_rp) < 1e-8
    torch.testing.assert_close(out.grad, quiet.mean(0), rtol=1e-4, atol=1e-4)
    out = est.merge(quiet, loud)  # and the other way round
    assert float(out.w_rp) > 1 - 1e-6
    torch.testing.assert_close(out.grad, quiet.mean(0), rtol=1e-4, atol=1e-4)
    # the weight is σ_es² / (σ_rp² + σ_es²) of the empirical variances of the means
    a, b = torch.randn(8, 3, generator=gen), 3 * torch.randn(8, 3, generator=gen)
    out = est.merge(a, b)
    var_a, var_b = float(a.var(0).sum() / 8), float(b.var(0).sum() / 8)
    assert float(out.w_rp) == pytest.approx(var_b / (var_a + var_b), rel=1e-5)
    # elementwise: one weight per coordinate
    mixed = torch.cat([loud[:, :1], quiet[:, 1:]], 1)
    out = est.merge(mixed, torch.cat([quiet[:, :1], loud[:, 1:]], 1), elementwise=True)
    assert out.w_rp.shape == (3,) and out.w_rp[0] < 1e-8 and (out.w_rp[1:] > 1 - 1e-6).all()


def test_exploded_estimator_gets_zero_weight_and_does_not_poison_the_merge():
    good = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    bad = good.clone()
    bad[2, 1] = torch.nan
    out = est.merge(bad, good)
    assert float(out.w_rp) == 0.0 and torch.isfinite(out.grad).all()
    torch.testing.assert_close(out.grad, good.mean(0))
    out = est.merge(bad, bad * torch.inf)  # both exploded: no step at all
    assert torch.equal(out.grad, torch.zeros(4))
    out = est.estimate("es", losses=torch.tensor([1.0, 0.5]), noise=torch.ones(1, 3))
    assert float(out.w_rp) == 0.0
    torch.testing.assert_close(out.grad, torch.full((3,), 0.5 / (2 * est.DEFAULT_SIGMA)))


def test_bad_inputs_are_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="sigma"):
        est.es_samples(torch.zeros(2), torch.zeros(1, 3), sigma=-1.0)
    with pytest.raises(ValueError, match="even"):
        est.rp_samples(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="'adam'"):
        est.estimate("adam", losses=torch.zeros(2), noise=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="grads"):
        est.estimate("rp", losses=torch.zeros(2), noise=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="pairs"):
        est.antithetic_noise(0, 3, torch.Generator())
    with pytest.raises(ValueError, match="sigma must be a finite number > 0, got True"):
        est.es_samples(torch.zeros(2), torch.zeros(1, 3), sigma=True)
    with pytest.raises(ValueError, match=r"losses must be 1-d .* got shape \(2, 1\)"):
        est.es_samples(torch.zeros(2, 1), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="restart must be a bool tensor of shape \\(2,\\)"):
        est.pes_accumulate(None, torch.zeros(2, 3), restart=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="noise must be \\(pairs, P\\)"):
        est.pes_accumulate(None, torch.zeros(6))


# ------------------------------------------------------------------------------------- PES
def _lr_unroll_estimates(pairs: int, horizon: int, truncation: int, a: float, x0: float,
                         theta: float, sigma: float, seed: int):
    """Learn the learning rate θ of x ← x − θ a x on f(x) = ½ a x² (Metz et al. §2.3's toy).

    The outer loss of a truncation is Σ f(x_t) over its steps. Returns the per-pair samples
    (pairs,) of full-unroll antithetic ES, PES and truncated ES (members re-synced to the +
    member after each truncation, fresh noise each truncation).
    """
    gen = torch.Generator().manual_seed(seed)
    th = torch.full((1,), theta, dtype=torch.float64)

    def run(thetas: torch.Tensor, x: torch.Tensor, steps: int):
        loss = torch.zeros_like(x)
        for _ in range(steps):
            x = x - thetas * a * x
            loss = loss + 0.5 * a * x.square()
        return loss, x

    # full unroll: one noise for the whole run
    noise = est.antithetic_noise(pairs, 1, gen, torch.float64)
    x = torch.full((2 * pairs,), x0, dtype=torch.float64)
    losses, _ = run(est.antithetic_thetas(th, noise, sigma)[:, 0], x, horizon)
    full = est.es_samples(losses, noise, sigma)[:, 0]
    # PES and truncated ES over truncations of the same run
    pes, trunc = torch.zeros(pairs, dtype=torch.float64), torch.zeros(pairs, dtype=torch.float64)
    x_pes = x.clone()
    x_tr = x.clone()
    acc = None
    for _ in range(horizon // truncation):
        noise = est.antithetic_noise(pairs, 1, gen, torch.float64)
        thetas = est.antithetic_thetas(th, noise, sigma)[:, 0]
        acc = est.pes_accumulate(acc, noise)
        losses, x_pes = run(thetas, x_pes, truncation)
        pes += est.es_samples(losses, acc, sigma)[:, 0]
        losses, x_tr = run(thetas, x_tr, truncation)
        trunc += est.es_samples(losses, noise, sigma)[:, 0]
        x_tr = x_tr[:pairs].repeat(2)  # both members continue from the + member
    return full, pes, trunc


def test_pes_is_unbiased_where_truncated_es_is_not():
    """PES summed over the truncations of a run estimates the full-unroll gradient.

    Property tested (Vicol et al. 2021, Thm. 1): the mean of PES equals the gradient of the
    full-unroll loss (σ = 0.01: the smoothing changes it by O(σ²), far below the standard
    error) and agrees with full-unroll antithetic ES; truncated ES, which ignores θ's effect
    on the state a truncation starts from, is biased away from it (short-horizon bias,
    Metz et al. §2.4).
    """
    a, x0, theta, horizon, sigma = 1.0, 1.0, 0.2, 8, 0.01
    full, pes, trunc = _lr_unroll_estimates(40_000, horizon, 1, a, x0, theta, sigma, seed=5)
    r = 1 - theta * a  # x_t = r^t x0, L = Σ_t ½ a r^{2t} x0², dL/dθ in closed form
    t = torch.arange(1, horizon + 1, dtype=torch.float64)
    truth = float((0.5 * a * x0**2 * 2 * t * r ** (2 * t - 1) * (-a)).sum())

    def mean_se(s: torch.Tensor) -> tuple[float, float]:
        return float(s.mean()), float(s.std() / math.sqrt(len(s)))

    m_full, se_full = mean_se(full)
    m_pes, se_pes = mean_se(pes)
    m_tr, se_tr = mean_se(trunc)
    assert abs(m_full - truth) <= 3 * se_full
    assert abs(m_pes - truth) <= 3 * se_pes
    assert abs(m_pes - m_full) <= 3 * math.hypot(se_pes, se_full)
    assert abs(m_tr - truth) > 20 * se_tr  # truncated ES: biased (it misses most of dL/dθ)
    assert abs(m_tr) < abs(truth)


def test_pes_accumulate_restarts():
    n1, n2 = torch.ones(3, 2), 2 * torch.ones(3, 2)
    acc = est.pes_accumulate(None, n1)
    acc = est.pes_accumulate(acc, n2, restart=torch.tensor([False, True, False]))
    torch.testing.assert_close(acc, torch.tensor([[3.0, 3.0], [2.0, 2.0], [3.0, 3.0]]))
