"""gps/badmm.py and gps/policy.py: the BADMM coupling of ψ and π and the S-step.

Acceptance items 8 (BADMM on a linear system converges to the Riccati controller, with π
a time-varying linear policy) and 9 (the Mahalanobis S-step recovers a known linear
map), plus the exactness of the ψ-update's entropy handling and the coordinatewise LSTM
as a StepPolicy.
"""

from __future__ import annotations

import math

import pytest
import torch

from gps import (
    LinearDynamics,
    LinearGaussianController,
    QuadraticCost,
    backward,
    forward,
    kl_divergence,
)
from gps.badmm import (
    BADMMState,
    adapt_nu,
    augment_cost,
    dual_update,
    fit_linear_policy,
    psi_controller,
    psi_update,
    sample_kl,
)
from gps.policy import (
    CoordinatewiseLSTMPolicy,
    LinearStatePolicy,
    TimeVaryingLinearPolicy,
    optimal_variance,
    s_step,
)
from optenv.policy import StepPolicy, rollout
from optenv.problems.base import groups_from_shapes
from optenv.problems.regression import LogisticRegressionFamily
from optenv.registry import task_for

torch.set_num_threads(1)  # tiny problems; a benchmark shares the machine

F64 = torch.float64


# ----------------------------------------------------------------------------- fixtures


def _system(seed: int = 0, T: int = 10, ds: int = 2, da: int = 1, batch: tuple[int, ...] = ()):
    """A random linear-Gaussian system with a quadratic cost whose optimum is unique.

    The action cost (R = I) keeps Q_uu of the last step (whose action moves nothing)
    positive, so the Riccati controller is well defined at every t.
    """
    g = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*batch, *s, generator=g, dtype=F64)

    eye = torch.eye(ds, dtype=F64)
    dyn = LinearDynamics(eye + 0.1 * rn(T, ds, ds), 0.5 * rn(T, ds, da), 0.05 * rn(T, ds),
                         0.01 * eye.expand(*batch, T, ds, ds).clone())
    C = torch.zeros(*batch, T, ds + da, ds + da, dtype=F64)
    C[..., :ds, :ds] = torch.diag_embed(0.5 + torch.rand(*batch, T, ds, generator=g, dtype=F64))
    C[..., ds:, ds:] = torch.eye(da, dtype=F64)
    d = torch.zeros(*batch, T, ds + da, dtype=F64)
    d[..., :ds] = 0.1 * rn(T, ds)
    cost = QuadraticCost(C, d, torch.zeros(*batch, T, dtype=F64))
    mu0 = torch.tensor([1.0, -0.5], dtype=F64)[:ds] if ds <= 2 else rn(ds)
    return dyn, cost, mu0, 0.01 * eye, g


def _lg(K: torch.Tensor, k: torch.Tensor, var: float | torch.Tensor) -> LinearGaussianController:
    da = K.shape[-2]
    cov = torch.as_tensor(var, dtype=F64)[..., None, None] * torch.eye(da, dtype=F64)
    return LinearGaussianController.from_cov(K, k, cov.expand(*k.shape, da).clone())


def _expected_cost(cost: QuadraticCost, mom) -> torch.Tensor:  # type: ignore[no-untyped-def]
    m, S = mom.mean, mom.cov
    quad = (m * (cost.C @ m[..., None])[..., 0]).sum(-1)
    return 0.5 * (cost.C * S).sum((-1, -2)) + 0.5 * quad + (cost.d * m).sum(-1) + cost.h


def _sample_states(dyn, psi, mu0, S0, N, g):  # type: ignore[no-untyped-def]
    """N samples of s_t from ψ's Gaussian state marginals under the known dynamics."""
    mom = forward(dyn, psi, mu0, S0)
    ds = mu0.shape[-1]
    m, S = mom.mean[..., :ds], mom.cov[..., :ds, :ds]
    z = torch.randn(N, *m.shape, generator=g, dtype=F64)
    return m + (torch.linalg.cholesky(S) @ z[..., None])[..., 0], mom


def _psi_mean(psi: LinearGaussianController, s: torch.Tensor) -> torch.Tensor:
    return torch.einsum("tij,ntj->nti", psi.K, s) + psi.k


# ----------------------------------------------------------------------------- ψ-update


def test_augment_cost_is_cost_minus_lambda_a_minus_nu_log_pi():
    T, ds, da = 4, 3, 2
    _, cost, _, _, g = _system(1, T, ds, da)
    pi = LinearGaussianController.from_cov(
        torch.randn(T, da, ds, generator=g, dtype=F64), torch.randn(T, da, generator=g, dtype=F64),
        (torch.eye(da, dtype=F64) * 0.3 + 0.1).expand(T, da, da))
    lam = torch.randn(T, da, generator=g, dtype=F64)
    nu = torch.rand(T, generator=g, dtype=F64) + 0.5
    aug = augment_cost(cost, lam, nu, pi)
    x = torch.randn(7, T, ds + da, generator=g, dtype=F64)

    def q(c: QuadraticCost) -> torch.Tensor:
        return 0.5 * (x * (c.C @ x[..., None])[..., 0]).sum(-1) + (c.d * x).sum(-1) + c.h

    s, a = x[..., :ds], x[..., ds:]
    mean = torch.einsum("tij,ntj->nti", pi.K, s) + pi.k
    logp = torch.distributions.MultivariateNormal(mean, pi.cov).log_prob(a)
    want = q(cost) - (lam * a).sum(-1) - nu * logp
    torch.testing.assert_close(q(aug), want, rtol=1e-10, atol=1e-10)


def _lagrangian(dyn, cost, state, pi_lin, prev, mu0, S0, eta, K, k, log_var):  # type: ignore[no-untyped-def]
    """Σ_t E[c̃ − λa] + ν_t KL(ψ‖π̃) + η KL(ψ‖ψ'), evaluated exactly from the moments."""
    psi = _lg(K, k, log_var.exp())
    mom = forward(dyn, psi, mu0, S0)
    ds = mu0.shape[-1]
    val = _expected_cost(cost, mom) - (state.lam * mom.mean[..., ds:]).sum(-1)
    val = val + state.nu * kl_divergence(psi, pi_lin, mom) + eta * kl_divergence(psi, prev, mom)
    return val.sum()


def test_psi_controller_is_the_exact_minimizer_with_time_varying_nu():
    """The ν-weighted entropy is exact: ∇ of the true Lagrangian vanishes at ψ(η).

    gps.lqg on the augmented cost alone (Σ = η Q_uu⁻¹, i.e. ν E[−log π̃] without ν H(ψ))
    has the same gains but is not stationary in the covariance.
    """
    T, ds, da = 10, 2, 1
    dyn, cost, mu0, S0, g = _system(0, T, ds, da)
    prev = _lg(torch.zeros(T, da, ds, dtype=F64), torch.zeros(T, da, dtype=F64), 1.0)
    pi_lin = _lg(0.3 * torch.randn(T, da, ds, generator=g, dtype=F64),
                 0.2 * torch.randn(T, da, generator=g, dtype=F64), 0.05)
    state = BADMMState(0.3 * torch.randn(T, da, generator=g, dtype=F64),
                       torch.linspace(0.5, 2.0, T, dtype=F64))
    eta = 0.7
    psi = psi_controller(dyn, cost, state, pi_lin, prev, eta)

    def grads(ctrl: LinearGaussianController) -> list[torch.Tensor]:
        K = ctrl.K.clone().requires_grad_()
        k = ctrl.k.clone().requires_grad_()
        lv = ctrl.cov[..., 0, 0].log().clone().requires_grad_()
        _lagrangian(dyn, cost, state, pi_lin, prev, mu0, S0, eta, K, k, lv).backward()
        return [K.grad, k.grad, lv.grad]  # type: ignore[list-item]

    for gr in grads(psi):
        assert gr.abs().max() < 1e-10
    plain, _ = backward(dyn, augment_cost(cost, state.lam, state.nu, pi_lin), eta, prev)
    torch.testing.assert_close(plain.K, psi.K)
    gK, gk, glv = grads(plain)
    assert gK.abs().max() < 1e-8 and gk.abs().max() < 1e-8
    assert glv.abs().max() > 0.1  # the covariance is off by the factor η/(η + ν_t)


def test_psi_controller_equals_reference_division_form_for_constant_nu():
    """With ν constant in t, dividing step t's cost by (η + ν) (reference GPS code) is exact."""
    T, ds, da = 6, 2, 1
    dyn, cost, _, _, g = _system(3, T, ds, da)
    prev = _lg(0.2 * torch.randn(T, da, ds, generator=g, dtype=F64),
               torch.zeros(T, da, dtype=F64), 0.5)
    pi_lin = _lg(0.3 * torch.randn(T, da, ds, generator=g, dtype=F64),
                 0.2 * torch.randn(T, da, generator=g, dtype=F64), 0.05)
    nu, eta = 0.4, 2.5
    state = BADMMState(0.3 * torch.randn(T, da, generator=g, dtype=F64),
                       torch.full((T,), nu, dtype=F64))
    psi = psi_controller(dyn, cost, state, pi_lin, prev, eta)
    # (c̃ − λa − ν log π̃ − η log ψ')/(η + ν), entropy weight 1: prev's term written into
    # the cost through a zero-λ, ν = η augmentation.
    both = augment_cost(augment_cost(cost, state.lam, state.nu, pi_lin),
                        torch.zeros(T, da, dtype=F64), torch.full((T,), eta, dtype=F64), prev)
    scaled = QuadraticCost(both.C / (eta + nu), both.d / (eta + nu), both.h / (eta + nu))
    ref, _ = backward(dyn, scaled, 1.0, None)
    for name in ("K", "k", "cov", "inv_cov"):
        torch.testing.assert_close(getattr(psi, name), getattr(ref, name), rtol=1e-9, atol=1e-9)


def test_psi_update_batched_over_groups_meets_each_trust_region():
    T, ds, da = 8, 2, 1
    dyn, cost, mu0, S0, g = _system(4, T, ds, da, batch=(3,))
    prev = _lg(torch.zeros(3, T, da, ds, dtype=F64), torch.zeros(3, T, da, dtype=F64), 1.0)
    pi_lin = _lg(0.3 * torch.randn(3, T, da, ds, generator=g, dtype=F64),
                 0.2 * torch.randn(3, T, da, generator=g, dtype=F64), 0.05)
    state = BADMMState(torch.zeros(3, T, da, dtype=F64),
                       torch.tensor([0.01, 0.1, 1.0], dtype=F64)[:, None].expand(3, T))
    eps = torch.tensor([0.05, 0.5, 1e3], dtype=F64)
    sol = psi_update(dyn, cost, state, pi_lin, prev, mu0, S0, eps, eta0=1.0)
    kl = kl_divergence(sol.controller, prev, forward(dyn, sol.controller, mu0, S0)).sum(-1)
    torch.testing.assert_close(kl, sol.kl)
    assert bool((kl <= eps).all())
    assert bool((kl[:2] > 0.9 * eps[:2]).all())  # active constraints: in the window
    assert float(sol.eta[2]) == pytest.approx(1e-6)  # inactive: η at η_min
    # Each group alone gives the same answer: the groups are independent problems.
    for i in range(3):
        one = psi_update(
            LinearDynamics(dyn.A[i], dyn.B[i], dyn.c[i], dyn.F[i]),
            QuadraticCost(cost.C[i], cost.d[i], cost.h[i]),
            BADMMState(state.lam[i], state.nu[i]),
            LinearGaussianController(*(getattr(pi_lin, f)[i] for f in
                                       ("K", "k", "cov", "chol", "inv_cov"))),
            LinearGaussianController(*(getattr(prev, f)[i] for f in
                                       ("K", "k", "cov", "chol", "inv_cov"))),
            mu0, S0, float(eps[i]))
        torch.testing.assert_close(one.controller.K, sol.controller.K[i])
        torch.testing.assert_close(one.eta, sol.eta[i])


def test_psi_update_isolates_a_group_whose_cost_is_concave_in_the_action():
    """Q_uu not PD at small η in one group: that group raises its η, the other is unaffected."""
    T, ds, da = 6, 2, 1
    dyn, cost, mu0, S0, _ = _system(7, T, ds, da, batch=(2,))
    C = cost.C.clone()
    C[0, :, ds:, ds:] = -3.0
    cost = QuadraticCost(C, cost.d, cost.h)
    zeros_K, zeros_k = torch.zeros(2, T, da, ds, dtype=F64), torch.zeros(2, T, da, dtype=F64)
    prev, pi_lin = _lg(zeros_K, zeros_k, 1.0), _lg(zeros_K, zeros_k, 1.0)
    state = BADMMState(torch.zeros(2, T, da, dtype=F64), torch.full((2, T), 1e-6, dtype=F64))
    sol = psi_update(dyn, cost, state, pi_lin, prev, mu0, S0, 0.5, eta0=1e-3)
    assert bool((sol.kl <= 0.5).all()) and bool((sol.kl > 0.45).all())
    assert float(sol.eta[0]) > 3.0  # η P' must outweigh the −3 action curvature
    fields_ = ("K", "k", "cov", "chol", "inv_cov")
    one = psi_update(
        LinearDynamics(dyn.A[1], dyn.B[1], dyn.c[1], dyn.F[1]),
        QuadraticCost(cost.C[1], cost.d[1], cost.h[1]), BADMMState(state.lam[1], state.nu[1]),
        LinearGaussianController(*(getattr(pi_lin, f)[1] for f in fields_)),
        LinearGaussianController(*(getattr(prev, f)[1] for f in fields_)),
        mu0, S0, 0.5, eta0=1e-3)
    torch.testing.assert_close(one.eta, sol.eta[1])
    torch.testing.assert_close(one.controller.K, sol.controller.K[1])


# ----------------------------------------------------------------------------- π̃ and duals


def test_fit_linear_policy_recovers_gains_and_adds_residual_covariance():
    g = torch.Generator().manual_seed(5)
    N, T, ds = 4000, 3, 2
    s = torch.randn(N, T, ds, generator=g, dtype=F64)
    K = torch.randn(T, 1, ds, generator=g, dtype=F64)
    k = torch.randn(T, 1, generator=g, dtype=F64)
    lin = torch.einsum("tij,ntj->nti", K, s) + k
    fit = fit_linear_policy(s, lin, 0.05)
    torch.testing.assert_close(fit.K, K, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fit.k, k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fit.cov, torch.full((T, 1, 1), 0.05, dtype=F64), atol=1e-8,
                               rtol=0)
    # A nonlinear part: K̃, k̃ are the least-squares fit, the residual becomes covariance.
    a = lin + 0.3 * (s[..., :1] ** 2 - 1.0)
    fit = fit_linear_policy(s, a, torch.tensor([[[0.05]]], dtype=F64))
    X = torch.cat([s, torch.ones(N, T, 1, dtype=F64)], -1).transpose(0, 1)  # (T, N, ds + 1)
    coef = torch.linalg.lstsq(X, a.transpose(0, 1)).solution  # (T, ds + 1, 1)
    torch.testing.assert_close(fit.K, coef[:, :ds].mT, rtol=0, atol=1e-5)
    torch.testing.assert_close(fit.k, coef[:, ds], rtol=0, atol=1e-5)
    res = a.transpose(0, 1) - X @ coef
    want = 0.05 + res.square().mean(1, keepdim=True)
    torch.testing.assert_close(fit.cov, want, rtol=1e-6, atol=0)
    assert bool((fit.cov > 0.05 + 0.1).all())  # 0.3² · Var(s²) = 0.18 of it


def test_dual_update_moves_lambda_towards_consensus():
    T = 4
    st = BADMMState(torch.zeros(T, 1, dtype=F64), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64),
                    alpha=0.5)
    psi_a = torch.zeros(T, 1, dtype=F64)
    pi_a = torch.tensor([[1.0], [-1.0], [0.0], [2.0]], dtype=F64)
    new = dual_update(st, psi_a, pi_a)
    torch.testing.assert_close(new.lam[:, 0], 0.5 * st.nu * pi_a[:, 0])
    assert st.lam.abs().sum() == 0  # functional: the old state is unchanged
    # π above ψ ⇒ λ > 0 ⇒ −λa rewards larger actions in the ψ-update.
    prec = torch.full((T, 1, 1), 10.0, dtype=F64)
    torch.testing.assert_close(dual_update(st, psi_a, pi_a, precision=prec).lam, 10 * new.lam)


def test_adapt_nu_doubles_halves_and_clips():
    st = BADMMState(torch.zeros(5, 1, dtype=F64),
                    torch.tensor([1.0, 1.0, 1.0, 1e-8, 1e8], dtype=F64))
    kl = torch.tensor([2.0, 0.7, 0.1, 0.1, 5.0], dtype=F64)
    new = adapt_nu(st, kl, 1.0)
    torch.testing.assert_close(new.nu, torch.tensor([2.0, 1.0, 0.5, 1e-8, 1e8], dtype=F64))


def test_sample_kl_matches_closed_form_for_a_linear_policy():
    T, ds, da = 5, 2, 1
    dyn, _, mu0, S0, g = _system(6, T, ds, da)
    psi = _lg(0.3 * torch.randn(T, da, ds, generator=g, dtype=F64),
              0.2 * torch.randn(T, da, generator=g, dtype=F64), 0.2)
    pi_lin = _lg(0.3 * torch.randn(T, da, ds, generator=g, dtype=F64),
                 0.2 * torch.randn(T, da, generator=g, dtype=F64), 0.1)
    s, mom = _sample_states(dyn, psi, mu0, S0, 20000, g)
    mc = sample_kl(psi, s, _psi_mean(pi_lin, s), torch.tensor([[0.1]], dtype=F64))
    torch.testing.assert_close(mc, kl_divergence(psi, pi_lin, mom), rtol=0.03, atol=1e-3)


def test_optimal_variance_minimizes_the_trace_logdet_terms():
    P = torch.tensor([2.0, 4.0, 8.0], dtype=F64)
    nu = torch.tensor([1.0, 1.0, 2.0], dtype=F64)
    v = optimal_variance(P, nu)
    f = lambda x: (nu * 0.5 * (P * x - math.log(x))).sum()  # noqa: E731
    assert f(float(v)) < min(f(float(v) * 1.01), f(float(v) * 0.99))


# ----------------------------------------------------------------------------- acceptance 8


@pytest.mark.parametrize("dual", ["paper", "precision"])
def test_badmm_converges_to_the_riccati_controller(dual):
    """Acceptance 8: BADMM with a time-varying linear π on a linear-Gaussian system.

    ψ-update (psi_update on the known dynamics), exact least-squares S-step
    (TimeVaryingLinearPolicy.solve_s_step on ψ's samples), dual update. π can represent
    the optimum, so ψ and π must agree and both reach the Riccati gains. With an exact
    S-step and λ₀ = 0 the gap E_ψ[E_π a] − E_ψ[a] stays 0 and λ with it (BADMM is then
    a proximal-point method); the "precision" case starts from λ₀ ≠ 0 and uses the
    reference code's metric for the dual step, so λ has to be driven back to 0.

    Convergence of π to ψ is measured before each S-step, between the new ψ and the
    π that shaped it: the mean part of KL(ψ ‖ π̃) → 0. With Σ^π fixed the covariance
    part tends to a floor, at the fixed point Σ_t⁻¹ = Σ̃⁻¹ + Q_uu,t/ν_t (Q_uu of the
    Riccati recursion), which is checked too: it holds only with the exact ν-weighted
    entropy.
    """
    T, ds, da, N = 10, 2, 1, 64
    dyn, cost, mu0, S0, g = _system(0, T, ds, da)
    riccati, _ = backward(dyn, cost, 1.0, None)  # max-ent LQR gains = deterministic LQR gains
    sigma_pi = 0.05
    lam0 = 0.3 * torch.randn(T, da, generator=g, dtype=F64) if dual == "precision" else \
        torch.zeros(T, da, dtype=F64)
    state = BADMMState(lam0, 0.05 * torch.linspace(0.5, 2.0, T, dtype=F64),
                       alpha=1.0 if dual == "paper" else 0.5)
    psi = _lg(torch.zeros(T, da, ds, dtype=F64), torch.zeros(T, da, dtype=F64), 1.0)
    pi = TimeVaryingLinearPolicy(T, ds)
    eta = torch.tensor(1.0, dtype=F64)
    gaps, kl_means, etas = [], [], []
    for _ in range(30):
        s, _ = _sample_states(dyn, psi, mu0, S0, N, g)
        pi_lin = fit_linear_policy(s, pi.mean_actions(s[:, :, None, :]).detach()[..., :1], sigma_pi)
        sol = psi_update(dyn, cost, state, pi_lin, psi, mu0, S0, epsilon=5.0, eta0=eta)
        psi, eta = sol.controller, sol.eta
        etas.append(float(eta))
        mom = forward(dyn, psi, mu0, S0)
        kl = kl_divergence(psi, pi_lin, mom)
        r = psi.cov[..., 0, 0] / pi_lin.cov[..., 0, 0]
        kl_means.append(float((kl - 0.5 * (r - 1.0 - r.log())).sum()))
        # S-step on ψ's samples, then the dual step with the same samples.
        s, _ = _sample_states(dyn, psi, mu0, S0, N, g)
        target = _psi_mean(psi, s)
        pi.solve_s_step(s[:, :, None, :], target, psi.inv_cov[:, 0, 0], state.lam, state.nu)
        pi_a = pi.mean_actions(s[:, :, None, :]).detach()
        gaps.append(float((pi_a.mean(0) - target.mean(0)).abs().max()))
        state = dual_update(state, target.mean(0), pi_a.mean(0),
                            precision=psi.inv_cov if dual == "precision" else None)

    assert etas[0] < 1.0 and etas[-1] == pytest.approx(1e-6)  # trust region active, then not
    assert kl_means[-1] < 1e-3 * kl_means[0]
    if dual == "paper":
        assert max(gaps) < 1e-10 and float(state.lam.abs().max()) < 1e-10
    else:
        assert gaps[-1] < 1e-3 * gaps[0] and float(state.lam.abs().max()) < 1e-3 * 0.3
    for K, k in ((psi.K, psi.k), (pi.K.detach()[:, None, :], pi.k.detach()[:, None])):
        assert float((K - riccati.K).abs().max()) < 1e-4
        assert float((k - riccati.k).abs().max()) < 1e-4
    fixed_point = 1.0 / (1.0 / sigma_pi + riccati.inv_cov[:, 0, 0] / state.nu)
    torch.testing.assert_close(psi.cov[:, 0, 0], fixed_point, rtol=1e-3, atol=0)


# ----------------------------------------------------------------------------- acceptance 9


def test_s_step_recovers_a_linear_map_with_per_sample_precisions():
    """Acceptance 9: the Mahalanobis S-step on a linear π recovers K, k."""
    g = torch.Generator().manual_seed(1)
    N, T, n, ds = 32, 5, 6, 4
    s = torch.randn(N, T, n, ds, generator=g)
    K, k = torch.randn(ds, generator=g), torch.tensor(0.7)
    precision = 0.5 + 1.5 * torch.rand(N, T, n, generator=g)
    pol = LinearStatePolicy(ds)
    hist = s_step(pol, s, s @ K + k, precision, 0.0, 1.0, steps=400, lr=0.05, batch_size=64,
                  generator=torch.Generator().manual_seed(0))
    assert hist[-1] < 1e-6 * hist[0]
    assert float((pol.K.detach() - K).abs().max()) < 1e-3
    assert abs(float(pol.k.detach() - k)) < 1e-3


def test_s_step_lambda_term_matches_the_closed_form_minimizer():
    """Adam on λμ + ν/2·P(μ − y)² reaches the weighted least squares of y − λ/(νP)."""
    g = torch.Generator().manual_seed(2)
    N, T, n, ds = 16, 5, 3, 3
    s = torch.randn(N, T, n, ds, generator=g, dtype=F64)
    y = s @ torch.randn(ds, generator=g, dtype=F64) + 0.1 * torch.randn(N, T, n, generator=g,
                                                                        dtype=F64)
    P = 0.5 + torch.rand(T, generator=g, dtype=F64)
    lam = 0.3 * torch.randn(T, 1, generator=g, dtype=F64)
    nu = 0.5 + torch.rand(T, generator=g, dtype=F64)
    exact, adam = TimeVaryingLinearPolicy(T, ds), TimeVaryingLinearPolicy(T, ds)
    exact.solve_s_step(s, y, P, lam, nu)
    s_step(adam, s, y, P, lam, nu, steps=400, lr=0.05)
    torch.testing.assert_close(adam.K, exact.K, rtol=0, atol=1e-4)
    torch.testing.assert_close(adam.k, exact.k, rtol=0, atol=1e-4)
    # λ = 0 is plain weighted regression; λ > 0 lowers π's mean by λ/(νP) on average.
    base = TimeVaryingLinearPolicy(T, ds)
    base.solve_s_step(s, y, P, 0.0, nu)
    shift = exact.mean_actions(s).detach().mean((0, 2)) - base.mean_actions(s).detach().mean((0, 2))
    torch.testing.assert_close(shift, -lam[:, 0] / (nu * P))


# ----------------------------------------------------------------------------- the LSTM π


def test_lstm_policy_is_a_step_policy_on_the_quadratic_family():
    family, _ = task_for("optenv/Quadratic-v0")
    pol = CoordinatewiseLSTMPolicy(num_groups=1, hidden=16)
    assert isinstance(pol, StepPolicy) and pol.features == "li_malik_obs"
    run = rollout(pol, family, 10, seeds=(0, 1))
    assert run.objective.shape == (2, 11)
    assert bool(torch.isfinite(run.objective).all()) and bool(torch.isfinite(run.x).all())
    assert not bool(run.diverged.any())
    assert not bool(torch.equal(run.objective[:, 0], run.objective[:, -1]))  # it moved


def test_lstm_policy_share_all_runs_on_any_architecture_with_a_fixed_size():
    pol = CoordinatewiseLSTMPolicy(hidden=8, share="all")
    H = 8
    per_set = 4 * H * (3 + H) + 8 * H + H + 1  # LSTM weights and two biases, head
    assert sum(p.numel() for p in pol.parameters()) == per_set
    quad, _ = task_for("optenv/Quadratic-v0")  # n = 10, one group
    logistic = LogisticRegressionFamily(dim=5)  # n = 6, two groups (weight, bias)
    for family in (quad, logistic):
        run = rollout(pol, family, 10, seeds=(0,))
        assert bool(torch.isfinite(run.objective).all())
    assert sum(p.numel() for p in pol.parameters()) == per_set
    grouped = CoordinatewiseLSTMPolicy(num_groups=2, hidden=8)
    assert sum(p.numel() for p in grouped.parameters()) == 2 * per_set
    assert bool(torch.isfinite(rollout(grouped, logistic, 5, seeds=(0,)).objective).all())
    with pytest.raises(ValueError, match="share='all'"):
        rollout(grouped, quad, 5)


@pytest.mark.parametrize(("share", "time_scale"), [("group", None), ("all", None),
                                                  ("group", 4.0), ("all", 4.0)])
def test_lstm_mean_actions_equal_stepping(share, time_scale):
    groups = groups_from_shapes({"w": (2, 3), "b": (3,)})
    pol = CoordinatewiseLSTMPolicy(num_groups=2, hidden=8, share=share, seed=3,
                                   time_scale=time_scale)
    g = torch.Generator().manual_seed(0)
    N, T, n = 3, 6, 9
    obs = torch.randn(N, T, n, 3, generator=g)
    state = pol.reset(n, groups, N)
    keys = {"h", "c"} if time_scale is None else {"h", "c", "t"}
    assert set(state) == keys and state["h"].shape == (N, n, 8)
    steps = []
    with torch.no_grad():
        for t in range(T):
            dx, state = pol.step(obs[:, t], state)
            steps.append(dx / pol.step_scale)
        stepped = torch.stack(steps, 1)  # (N, T, n)
        for i, grp in enumerate(groups):
            seq = pol.mean_actions(obs[:, :, grp.slice], i)
            torch.testing.assert_close(seq, stepped[:, :, grp.slice], rtol=1e-5, atol=1e-6)
    if share == "group":  # the two groups really have different parameters
        with torch.no_grad():
            a0 = pol.mean_actions(obs[:, :, :3], 0)
            a1 = pol.mean_actions(obs[:, :, :3], 1)
        assert not torch.allclose(a0, a1)


def test_s_step_trains_the_lstm_on_two_groups():
    """The S-step runs on the real π: two groups, minibatches, the loss goes down."""
    g = torch.Generator().manual_seed(0)
    pol = CoordinatewiseLSTMPolicy(num_groups=2, hidden=8, seed=1)
    N, T = 4, 6
    obs = [torch.randn(N, T, 5, 3, generator=g), torch.randn(N, T, 2, 3, generator=g)]
    targets = [0.5 * o[..., 1] for o in obs]  # a = ½ × (gradient feature)
    prec = torch.linspace(1.0, 2.0, T, dtype=F64)
    hist = s_step(pol, obs, targets, prec, 0.0, torch.ones(T, dtype=F64), steps=150, lr=0.02,
                  batch_size=10, generator=torch.Generator().manual_seed(0))
    assert all(math.isfinite(h) for h in hist)
    assert sum(hist[-10:]) < 0.2 * sum(hist[:10])


def test_psi_update_names_bad_inputs_before_searching():
    T, ds, da = 4, 2, 1
    dyn, cost, mu0, S0, _ = _system(5, T, ds, da, batch=(2,))
    zeros_K, zeros_k = torch.zeros(2, T, da, ds, dtype=F64), torch.zeros(2, T, da, dtype=F64)
    prev, pi_lin = _lg(zeros_K, zeros_k, 1.0), _lg(zeros_K, zeros_k, 1.0)
    lam = torch.zeros(2, T, da, dtype=F64)
    lam[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match=r"BADMMState\.lam has 1 non-finite entries "
                                         r"\(the first at index \(1, 2, 0\)"):
        psi_update(dyn, cost, BADMMState(lam, torch.ones(2, T, dtype=F64)), pi_lin, prev,
                   mu0, S0, 0.5)
    ok = BADMMState(torch.zeros(2, T, da, dtype=F64), torch.ones(2, T, dtype=F64))
    short = QuadraticCost(cost.C[:, :-1], cost.d[:, :-1], cost.h[:, :-1])
    with pytest.raises(ValueError, match=r"QuadraticCost\.C must have shape"):
        psi_update(dyn, short, ok, pi_lin, prev, mu0, S0, 0.5)
    with pytest.raises(ValueError, match="mu0 must be float64"):
        psi_update(dyn, cost, ok, pi_lin, prev, mu0.float(), S0, 0.5)
    for bad in (0.0, math.inf):
        with pytest.raises(ValueError, match="eta0 must be finite and > 0"):
            psi_update(dyn, cost, ok, pi_lin, prev, mu0, S0, 0.5, eta0=bad)
        with pytest.raises(ValueError, match="epsilon must be finite and > 0"):
            psi_update(dyn, cost, ok, pi_lin, prev, mu0, S0, bad if bad else -1.0)


def test_psi_update_scans_its_inputs_for_nan_once_not_per_eta(monkeypatch):
    """The dual search re-enters backward/forward/kl_divergence for every η it tries;
    the NaN scan runs once, on psi_update's own inputs."""
    import gps.lqg as lqg

    scanned = []
    real = lqg.check_finite
    monkeypatch.setattr(lqg, "check_finite", lambda name, x: (scanned.append(name),
                                                              real(name, x)))
    T, ds, da = 6, 2, 1
    dyn, cost, mu0, S0, g = _system(4, T, ds, da, batch=(3,))
    prev = _lg(torch.zeros(3, T, da, ds, dtype=F64), torch.zeros(3, T, da, dtype=F64), 1.0)
    pi_lin = _lg(0.3 * torch.randn(3, T, da, ds, generator=g, dtype=F64),
                 0.2 * torch.randn(3, T, da, generator=g, dtype=F64), 0.05)
    state = BADMMState(torch.zeros(3, T, da, dtype=F64), torch.full((3, T), 0.1, dtype=F64))
    sol = psi_update(dyn, cost, state, pi_lin, prev, mu0, S0, 0.5)
    assert bool((sol.kl <= 0.5).all())
    inputs = {f"LinearDynamics.{f}" for f in "ABcF"} | {f"QuadraticCost.{f}" for f in "Cdh"} \
        | {f"{c}.{f}" for c in ("prev", "pi_lin") for f in ("K", "k", "cov", "chol", "inv_cov")} \
        | {"mu0", "Sigma0", "BADMMState.lam", "BADMMState.nu"}
    assert sorted(scanned) == sorted(inputs)  # each once, none per η
    scanned.clear()
    lqg.backward(dyn, cost, 1.0, prev)  # outside psi_update the public functions scan again
    assert "QuadraticCost.C" in scanned


def test_lstm_policy_reading_phi_with_a_linear_path():
    """``features="li_malik_state"`` makes π read Φ (75 per coordinate); ``skip=True``
    adds a linear path that starts at zero (π starts as the LSTM alone) and that the
    S-step fits: a linear target in Φ is matched, on fresh states, far better than by
    the LSTM alone."""
    pol = CoordinatewiseLSTMPolicy(hidden=8, seed=2, features="li_malik_state", skip=True)
    plain = CoordinatewiseLSTMPolicy(hidden=8, seed=2, features="li_malik_state")
    assert pol.features == "li_malik_state" and pol.input_dim == 75
    assert pol.make_features().dim == 75
    g = torch.Generator().manual_seed(4)
    N, T, m = 4, 6, 8
    obs = torch.randn(N, T, m, 75, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(pol.mean_actions(obs), plain.mean_actions(obs))
    u = torch.zeros(75)
    u[25:51] = torch.randn(26, generator=g) / 10
    target = obs @ u  # ψ's stationary part, linear in Φ's gradient features
    fresh = torch.randn(N, T, m, 75, generator=g)
    errors = {}
    for name, p in (("skip", pol), ("lstm", plain)):
        s_step(p, obs, target, 1.0, 0.0, 1.0, steps=300, lr=0.02,
               generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            errors[name] = float((p.mean_actions(fresh) - fresh @ u).square().mean())
    assert errors["skip"] < 0.01 * float((fresh @ u).square().mean())
    assert errors["skip"] < 0.1 * errors["lstm"]
    # config round trip (an agent file), and the family of the features runs as a StepPolicy
    again = CoordinatewiseLSTMPolicy(**pol.config())
    again.load_state_dict(pol.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again.mean_actions(obs), pol.mean_actions(obs))
    family, _ = task_for("optenv/Quadratic-v0")
    run = rollout(again, family, 10, seeds=(0, 1))
    assert bool(torch.isfinite(run.objective).all())
    # the defaults are the paper's π, and an old config (no features/skip) rebuilds it
    old = CoordinatewiseLSTMPolicy(hidden=8).config()
    assert (old["features"], old["skip"], old["input_dim"]) == ("li_malik_obs", False, 3)
    del old["features"], old["skip"]
    assert CoordinatewiseLSTMPolicy(**old).features == "li_malik_obs"
    with pytest.raises(ValueError, match="features must be one of"):
        CoordinatewiseLSTMPolicy(features="gradient")
    with pytest.raises(ValueError, match=r"input_dim must be 75 for features 'li_malik_state'"):
        CoordinatewiseLSTMPolicy(features="li_malik_state", input_dim=3)
    with pytest.raises(ValueError, match="skip must be a bool"):
        CoordinatewiseLSTMPolicy(skip=1)


def test_lstm_policy_with_a_time_input_fits_a_gain_schedule():
    """``time_scale=T``: the cell also reads t/T, so a gain that changes halfway through
    (ψ's time-varying K_t) is matched on fresh observations better than without it (an
    LSTM can count from its zero start, so only about 3× better on 12 steps); the step
    count lives in the policy state and restarts with ``reset_where``."""
    g = torch.Generator().manual_seed(5)
    N, T, m = 8, 12, 6
    obs, fresh = torch.randn(N, T, m, 3, generator=g), torch.randn(N, T, m, 3, generator=g)
    gain = torch.where(torch.arange(T) < T // 2, 1.3, 0.4)[None, :, None]
    errors = {}
    for name, scale in (("time", float(T)), ("none", None)):
        pol = CoordinatewiseLSTMPolicy(hidden=16, seed=2, skip=True, time_scale=scale)
        s_step(pol, obs, -gain * obs[..., 1], 1.0, 0.0, 1.0, steps=400, lr=0.02,
               generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            errors[name] = float((pol.mean_actions(fresh) + gain * fresh[..., 1])
                                 .square().mean())
    scale2 = float((gain * fresh[..., 1]).square().mean())
    assert errors["time"] < 0.02 * scale2, errors
    assert errors["time"] < 0.5 * errors["none"], errors
    # the time input travels with the config (agent files), and old configs have none
    again = CoordinatewiseLSTMPolicy(**pol.config())
    assert again.time_scale is None and "time_scale" in pol.config()
    timed = CoordinatewiseLSTMPolicy(hidden=4, time_scale=12)
    assert CoordinatewiseLSTMPolicy(**timed.config()).time_scale == 12.0
    assert timed.lstms[0].input_size == 4  # Ψ's 3 + t/T
    groups = groups_from_shapes({"w": (2,)})
    state = timed.reset(2, groups, 3)
    for _ in range(2):
        _, state = timed.step(torch.zeros(3, 2, 3), state)
    state = timed.reset_where(state, torch.tensor([True, False, False]), 2, groups)
    assert state["t"].tolist() == [0.0, 2.0, 2.0]
    for bad in (0, -1.0, math.inf, True, "10"):
        with pytest.raises(ValueError, match="time_scale must be None or a finite number"):
            CoordinatewiseLSTMPolicy(time_scale=bad)


def test_lstm_policy_gain_head_starts_at_zero_and_steps_like_teacher_forcing():
    groups = groups_from_shapes({"w": (2, 3), "b": (3,)})
    g = torch.Generator().manual_seed(6)
    obs = torch.randn(3, 5, 9, 75, generator=g)
    base = CoordinatewiseLSTMPolicy(hidden=8, seed=1, share="all", features="li_malik_state",
                                    skip=True, time_scale=5.0)
    pol = CoordinatewiseLSTMPolicy(**{**base.config(), "gain_head": True})
    pol.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(pol.mean_actions(obs), base.mean_actions(obs))  # V = 0
        pol.gains[0].weight.normal_(generator=g)
        state, steps = pol.reset(9, groups, 3), []
        for t in range(5):
            dx, state = pol.step(obs[:, t], state)
            steps.append(dx / pol.step_scale)
        torch.testing.assert_close(pol.mean_actions(obs), torch.stack(steps, 1),
                                   rtol=1e-5, atol=1e-6)
        assert not torch.allclose(pol.mean_actions(obs), base.mean_actions(obs))
    assert CoordinatewiseLSTMPolicy(**pol.config()).gain_head
    assert CoordinatewiseLSTMPolicy(hidden=4).config()["gain_head"] is False
    with pytest.raises(ValueError, match="gain_head=True needs skip=True"):
        CoordinatewiseLSTMPolicy(gain_head=True)
    with pytest.raises(ValueError, match="gain_head must be a bool, got 1"):
        CoordinatewiseLSTMPolicy(skip=True, gain_head=1)
