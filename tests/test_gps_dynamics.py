"""Dynamics and cost fits of guided policy search (Li & Malik 2017, §3.4–3.5).

Deterministic (fixed generators) and small: every test runs in well under a second.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gps import cost as cost_mod
from gps import dynamics as dyn_mod
from gps.cost import fit_quadratic_cost
from gps.dynamics import (
    DynamicsPrior,
    GMMPrior,
    dynamics_log_likelihood,
    fit_dynamics,
    global_prior,
    joint_moments,
    predict,
)

torch.set_num_threads(1)

F64 = torch.float64


def randn(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64)


def random_system(T: int, ds: int, da: int, g: torch.Generator, batch: tuple[int, ...] = ()):
    A = 0.6 * randn(*batch, T, ds, ds, g=g) / math.sqrt(ds)
    B = randn(*batch, T, ds, da, g=g)
    c = randn(*batch, T, ds, g=g)
    return A, B, c


def rollout(A, B, c, s0, actions, noise_chol=None, g=None):
    """s_{t+1} = A_t s_t + B_t a_t + c_t (+ noise): states (..., N, T+1, ds)."""
    states = [s0]
    for t in range(actions.shape[-2]):
        s = states[-1]
        nxt = torch.einsum("...ij,...nj->...ni", A[..., t, :, :], s)
        nxt = nxt + torch.einsum("...ij,...nj->...ni", B[..., t, :, :], actions[..., t, :])
        nxt = nxt + c[..., t, :].unsqueeze(-2)
        if noise_chol is not None:
            nxt = nxt + randn(*s.shape, g=g) @ noise_chol.transpose(-1, -2)
        states.append(nxt)
    return torch.stack(states, dim=-2)


def linear_data(N, T, ds, da, seed, noise_chol=None, batch=()):
    g = torch.Generator().manual_seed(seed)
    A, B, c = random_system(T, ds, da, g, batch)
    s0 = randn(*batch, N, ds, g=g)
    actions = randn(*batch, N, T, da, g=g)
    return rollout(A, B, c, s0, actions, noise_chol, g), actions, (A, B, c)


def explicit_conditional(mean, cov, ds, da):
    """[A B], c, F of N(mean, cov) by plain formulas (independent of gps.dynamics)."""
    dx = ds + da
    M = torch.linalg.solve(cov[..., :dx, :dx], cov[..., :dx, dx:]).transpose(-1, -2)
    c = mean[..., dx:] - (M @ mean[..., :dx].unsqueeze(-1)).squeeze(-1)
    F = cov[..., dx:, dx:] - M @ cov[..., :dx, dx:]
    return M, c, F


def rel(x, y):
    return float((x - y).norm() / y.norm().clamp_min(1e-300))


# ------------------------------------------------------------------ dynamics: exactness


def test_noiseless_time_varying_system_is_recovered_exactly():
    ds, da, T = 3, 2, 5
    N = ds + da + 4  # > ds + da + 1: the joint covariance of [s; a] is full rank
    states, actions, (A, B, c) = linear_data(N, T, ds, da, seed=0)
    dyn = fit_dynamics(states, actions, ridge=1e-10)
    assert dyn.A.shape == (T, ds, ds) and dyn.B.shape == (T, ds, da)
    assert dyn.c.shape == (T, ds) and dyn.F.shape == (T, ds, ds)
    assert torch.allclose(dyn.A, A, atol=1e-6)
    assert torch.allclose(dyn.B, B, atol=1e-6)
    assert torch.allclose(dyn.c, c, atol=1e-6)
    assert float(dyn.F.abs().max()) < 1e-8  # noiseless: only ridge and the PD floor remain
    assert bool((torch.linalg.eigvalsh(dyn.F) > 0).all())  # still PD for LQG
    pred = predict(dyn, states[..., :-1, :], actions)
    assert torch.allclose(pred, states[..., 1:, :], atol=1e-6)


def test_zero_strength_prior_is_ordinary_least_squares():
    ds, da, T, N = 4, 2, 3, 25
    W = 0.3 * torch.eye(ds, dtype=F64)
    states, actions, _ = linear_data(N, T, ds, da, seed=1, noise_chol=W)
    X = torch.cat([states[:, :-1], actions, torch.ones(N, T, 1, dtype=F64)], dim=-1)
    Y = states[:, 1:]
    coef = torch.linalg.lstsq(X.transpose(0, 1), Y.transpose(0, 1)).solution  # (T, dx+1, ds)
    resid = Y.transpose(0, 1) - X.transpose(0, 1) @ coef
    F_ols = resid.transpose(-1, -2) @ resid / N  # MLE residual covariance
    for prior in (None, global_prior(states, actions, strength=0.0)):
        dyn = fit_dynamics(states, actions, prior, ridge=0.0, min_var=0.0)
        M = torch.cat([dyn.A, dyn.B], dim=-1)
        assert rel(M, coef[:, : ds + da].transpose(-1, -2)) < 1e-8
        assert rel(dyn.c, coef[:, -1]) < 1e-8
        assert rel(dyn.F, F_ols) < 1e-8


def test_strong_prior_returns_the_prior_conditional():
    ds, da, T = 3, 2, 4
    W = 0.2 * torch.eye(ds, dtype=F64)
    # The prior comes from another system than the (few) samples being fitted.
    p_states, p_actions, _ = linear_data(400, T, ds, da, seed=2, noise_chol=W)
    states, actions, _ = linear_data(10, T, ds, da, seed=3, noise_chol=W)
    prior = global_prior(p_states, p_actions, strength=1e8)
    assert prior.Phi.shape == (1, 2 * ds + da, 2 * ds + da)  # one prior for every step
    M0, c0, F0 = explicit_conditional(prior.mu0, prior.Phi / prior.n0, ds, da)

    dyn = fit_dynamics(states, actions, prior, ridge=0.0, mean="posterior")
    M = torch.cat([dyn.A, dyn.B], dim=-1)
    assert rel(M, M0.expand_as(M)) < 1e-5
    assert rel(dyn.c, c0.expand_as(dyn.c)) < 1e-5
    assert rel(dyn.F, F0.expand_as(dyn.F)) < 1e-5
    own = prior.conditional(ds, da, ridge=0.0)
    assert rel(torch.cat([own.A, own.B], -1), M0) < 1e-10 and rel(own.F, F0) < 1e-10

    # mean="data" (reference GPS): same gains and noise, offset through the data mean.
    dyn = fit_dynamics(states, actions, prior, ridge=0.0)
    M = torch.cat([dyn.A, dyn.B], dim=-1)
    mu_hat, _ = joint_moments(states, actions)
    c_data = mu_hat[..., ds + da :] - (M @ mu_hat[..., : ds + da].unsqueeze(-1)).squeeze(-1)
    assert rel(M, M0.expand_as(M)) < 1e-5 and rel(dyn.F, F0.expand_as(dyn.F)) < 1e-5
    assert rel(dyn.c, c_data) < 1e-10
    assert rel(dyn.c, c0.expand_as(dyn.c)) > 1e-2  # the two conventions differ here


@pytest.mark.parametrize("mean", ["data", "posterior"])
def test_niw_posterior_formula_at_moderate_strength(mean):
    ds, da, T, N = 2, 1, 3, 10
    W = 0.3 * torch.eye(ds, dtype=F64)
    p_states, p_actions, _ = linear_data(300, T, ds, da, seed=13, noise_chol=W)
    states, actions, _ = linear_data(N, T, ds, da, seed=14, noise_chol=W)
    base = global_prior(p_states, p_actions, strength=1.0)
    m, n0 = 3.0, 7.0  # unequal pseudo-counts, so each enters where it should
    prior = DynamicsPrior(n0 * base.Phi, base.mu0, m, n0)
    z = torch.cat([states[:, :-1], actions, states[:, 1:]], dim=-1)  # (N, T, D)
    mu_hat = z.mean(0)
    zc = z - mu_hat
    scatter = torch.einsum("ntd,nte->tde", zc, zc)  # N × the MLE covariance
    dev = mu_hat - prior.mu0
    sigma = (prior.Phi + scatter + N * m / (N + m) * dev[:, :, None] * dev[:, None, :]) / (N + n0)
    mu = mu_hat if mean == "data" else (N * mu_hat + m * prior.mu0) / (N + m)
    M0, c0, F0 = explicit_conditional(mu, sigma, ds, da)
    dyn = fit_dynamics(states, actions, prior, ridge=0.0, mean=mean)
    assert rel(torch.cat([dyn.A, dyn.B], dim=-1), M0) < 1e-10
    assert rel(dyn.c, c0) < 1e-10 and rel(dyn.F, F0) < 1e-10


def test_gmm_eval_is_the_mixture_selected_by_mean_responsibilities():
    (states, actions), *_ = two_systems(40, T=2, seed=15)
    gmm = GMMPrior(k=2, strength=4.0, iters=10, seed=1).fit(states, actions)
    prior = gmm.eval(states[:5], actions[:5])
    comps = torch.distributions.MultivariateNormal(gmm.means, covariance_matrix=gmm.covs)
    for t in range(2):
        z = torch.cat([states[:5, t], actions[:5, t], states[:5, t + 1]], dim=-1)
        logp = comps.log_prob(z[:, None, :]) + gmm.log_weights  # (5, K)
        w = torch.softmax(logp, dim=-1).mean(0)
        mu0 = w @ gmm.means
        dev = gmm.means - mu0
        sigma0 = (w[:, None, None] * (gmm.covs + dev[:, :, None] * dev[:, None, :])).sum(0)
        assert torch.allclose(prior.mu0[t], mu0, atol=1e-10)
        assert rel(prior.Phi[t], 4.0 * sigma0) < 1e-10
    assert float(prior.m) == 4.0 and float(prior.n0) == 4.0


def test_noise_covariance_is_recovered_for_large_n():
    ds, da, T, N = 3, 1, 2, 20_000
    L = torch.tensor([[0.5, 0.0, 0.0], [0.2, 0.3, 0.0], [-0.1, 0.1, 0.4]], dtype=F64)
    states, actions, (A, B, _) = linear_data(N, T, ds, da, seed=4, noise_chol=L)
    dyn = fit_dynamics(states, actions)
    W = L @ L.T
    # Sampling error of a covariance is ~ sqrt(2 / N) ≈ 1 %.
    for t in range(T):
        assert rel(dyn.F[t], W) < 0.05
        assert rel(dyn.A[t], A[t]) < 0.05 and rel(dyn.B[t], B[t]) < 0.05
    # And the fitted density scores the samples about as well as the true one does.
    ll = dynamics_log_likelihood(dyn, states, actions).mean()
    true_ll = -0.5 * (ds + torch.logdet(2 * math.pi * W))
    assert abs(float(ll - true_ll)) < 0.05


def test_posterior_moves_monotonically_from_data_to_prior():
    ds, da, T = 3, 1, 3
    W = 0.3 * torch.eye(ds, dtype=F64)
    p_states, p_actions, _ = linear_data(500, T, ds, da, seed=5, noise_chol=W)
    states, actions, _ = linear_data(12, T, ds, da, seed=6, noise_chol=W)
    ols = fit_dynamics(states, actions, ridge=0.0)
    base = global_prior(p_states, p_actions, strength=1.0)
    target = base.conditional(ds, da, ridge=0.0)

    def gains(d):
        return torch.cat([d.A, d.B], dim=-1)

    to_prior, to_data = [], []
    for strength in (0.0, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1e3, 1e5):
        prior = DynamicsPrior(strength * base.Phi, base.mu0, strength, strength)
        fit = fit_dynamics(states, actions, prior, ridge=0.0)
        to_prior.append(float((gains(fit) - gains(target)).norm()))
        to_data.append(float((gains(fit) - gains(ols)).norm()))
    assert to_data[0] < 1e-10 and to_prior[-1] < 1e-2 * to_prior[0]
    assert all(b < a for a, b in itertools.pairwise(to_prior))
    assert all(b > a for a, b in itertools.pairwise(to_data))


def test_batched_fit_equals_separate_fits():
    ds, da, T, N = 3, 2, 4, 15
    W = 0.2 * torch.eye(ds, dtype=F64)
    states, actions, _ = linear_data(N, T, ds, da, seed=7, noise_chol=W, batch=(3,))
    prior = global_prior(states, actions, strength=5.0)
    batched = fit_dynamics(states, actions, prior)
    assert batched.A.shape == (3, T, ds, ds)
    for i in range(3):
        single = fit_dynamics(states[i], actions[i], global_prior(states[i], actions[i], 5.0))
        for name in ("A", "B", "c", "F"):
            assert torch.allclose(getattr(batched, name)[i], getattr(single, name), atol=1e-12)


def test_given_moments_give_the_same_prior_and_fit_and_are_checked():
    ds, da, T, N = 3, 2, 4, 15
    W = 0.2 * torch.eye(ds, dtype=F64)
    states, actions, _ = linear_data(N, T, ds, da, seed=7, noise_chol=W, batch=(2,))
    moments = joint_moments(states, actions)
    prior = global_prior(states, actions, strength=5.0)
    given = global_prior(states, actions, strength=5.0, moments=moments)
    assert torch.equal(prior.Phi, given.Phi) and torch.equal(prior.mu0, given.mu0)
    fit = fit_dynamics(states, actions, prior)
    fit_given = fit_dynamics(states, actions, given, moments=moments)
    for name in ("A", "B", "c", "F"):
        assert torch.equal(getattr(fit, name), getattr(fit_given, name))
    mean, cov = moments
    with pytest.raises(ValueError, match=r"moments must be joint_moments\(states, actions\): "
                                         r"mean \(2, 4, 8\)"):
        fit_dynamics(states, actions, moments=(mean[..., :-1, :], cov))
    with pytest.raises(ValueError, match=r"got \(2, 4, 8\) and \(2, 4, 8, 7\)"):
        global_prior(states, actions, moments=(mean, cov[..., :-1]))
    with pytest.raises(ValueError, match="the \\(mean, cov\\) pair of tensors joint_moments "
                                         "returns, got Tensor"):
        fit_dynamics(states, actions, moments=mean)
    bad = cov.clone()
    bad[1, 2, 3, 4] = math.nan
    with pytest.raises(ValueError, match=r"moments cov \(\.\.\., T, D, D\) has 1 non-finite"):
        fit_dynamics(states, actions, moments=(mean, bad))


def test_finite_scan_names_nan_and_both_infinities_and_skips_exact_types():
    from gps.types import check_finite

    x = torch.zeros(3, 4, dtype=F64)
    check_finite("x", x)
    check_finite("empty", torch.zeros(0, dtype=F64))
    check_finite("ints", torch.arange(5))
    for value, shown in ((math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")):
        y = x.clone()
        y[2, 1] = value
        with pytest.raises(ValueError, match=rf"y has 1 non-finite entries \(the first at "
                                             rf"index \(2, 1\): {shown}\)"):
            check_finite("y", y)


def test_time_chunking_and_float32_inputs_do_not_change_the_fit(monkeypatch):
    ds, da, T, N = 2, 1, 6, 10
    states, actions, _ = linear_data(
        N, T, ds, da, seed=8, noise_chol=0.1 * torch.eye(ds, dtype=F64)
    )
    whole = fit_dynamics(states, actions)
    monkeypatch.setattr(dyn_mod, "_CHUNK_BYTES", 1)  # one time step per chunk
    chunked = fit_dynamics(states, actions)
    assert torch.allclose(whole.A, chunked.A, atol=1e-12)
    assert torch.allclose(whole.F, chunked.F, atol=1e-12)
    f32 = fit_dynamics(states.float(), actions.float())
    assert f32.A.dtype == F64 and torch.allclose(f32.A, whole.A, atol=1e-4)


def test_log_likelihood_matches_torch_distributions():
    ds, da, T, N = 3, 2, 3, 20
    L = 0.3 * torch.eye(ds, dtype=F64)
    states, actions, _ = linear_data(N, T, ds, da, seed=9, noise_chol=L)
    dyn = fit_dynamics(states, actions)
    ll = dynamics_log_likelihood(dyn, states, actions)
    assert ll.shape == (N, T)
    mean = predict(dyn, states[:, :-1], actions)
    ref = torch.distributions.MultivariateNormal(mean, covariance_matrix=dyn.F.unsqueeze(0))
    assert torch.allclose(ll, ref.log_prob(states[:, 1:]), atol=1e-9)


def test_bad_shapes_are_rejected():
    states = torch.zeros(5, 4, 3, dtype=F64)
    with pytest.raises(ValueError, match="do not match"):
        fit_dynamics(states, torch.zeros(5, 4, 1, dtype=F64))  # needs T+1 states
    with pytest.raises(ValueError, match="mean must be"):
        fit_dynamics(states, torch.zeros(5, 3, 1, dtype=F64), mean="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="before fit"):
        GMMPrior().eval(states, torch.zeros(5, 3, 1, dtype=F64))


# ------------------------------------------------------------------ dynamics: GMM prior


def two_systems(n_per_system: int, T: int, seed: int):
    """Two different linear systems living in far-apart regions of the state space."""
    ds, da = 3, 1
    g = torch.Generator().manual_seed(seed)
    A = torch.stack([0.5 * torch.eye(ds, dtype=F64), -0.3 * torch.eye(ds, dtype=F64)])
    A = A + 0.1 * randn(2, ds, ds, g=g)
    B = torch.stack([torch.ones(ds, da, dtype=F64), -2.0 * torch.ones(ds, da, dtype=F64)])
    centre = torch.stack([6.0 * torch.ones(ds, dtype=F64), -6.0 * torch.ones(ds, dtype=F64)])
    c = centre - (A @ centre.unsqueeze(-1)).squeeze(-1)  # each system stays near its centre
    expand = {"A": A, "B": B, "c": c}
    for key, value in expand.items():
        expand[key] = value.unsqueeze(1).expand(2, T, *value.shape[1:])

    def sample(system: int, n: int):
        s0 = centre[system] + 0.5 * randn(n, ds, g=g)
        actions = randn(n, T, da, g=g)
        noise = 0.05 * torch.eye(ds, dtype=F64)
        sys = (expand["A"][system], expand["B"][system], expand["c"][system])
        return rollout(*sys, s0, actions, noise, g), actions

    data = [sample(k, n_per_system) for k in (0, 1)]
    pooled = (torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data]))
    return pooled, sample, ds, da


def test_gmm_em_log_likelihood_never_decreases():
    (states, actions), _, ds, da = two_systems(60, T=4, seed=10)
    gmm = GMMPrior(k=3, iters=15, seed=0).fit(states, actions)
    ll = gmm.log_likelihood
    assert ll.shape == (16,)
    steps = ll[1:] - ll[:-1]
    assert bool((steps >= -1e-9 * ll.abs()[1:]).all()), steps
    assert float(ll[-1] - ll[0]) > 1.0  # and EM does improve on the initialization
    assert gmm.means.shape == (3, 2 * ds + da) and gmm.covs.shape == (3, 2 * ds + da, 2 * ds + da)


def test_gmm_em_is_batched_and_deterministic():
    (states, actions), _, _, _ = two_systems(30, T=3, seed=11)
    stacked = (torch.stack([states, states + 1.0]), torch.stack([actions, actions]))
    a = GMMPrior(k=2, iters=5, seed=3).fit(*stacked)
    b = GMMPrior(k=2, iters=5, seed=3).fit(*stacked)
    assert a.log_likelihood.shape == (6, 2)
    assert torch.equal(a.means, b.means) and torch.equal(a.log_likelihood, b.log_likelihood)
    steps = a.log_likelihood[1:] - a.log_likelihood[:-1]
    assert bool((steps >= -1e-9 * a.log_likelihood.abs()[1:]).all())
    prior = a.eval(*stacked)
    assert prior.Phi.shape == (2, 3, 7, 7) and prior.mu0.shape == (2, 3, 7)


def test_gmm_prior_beats_no_prior_on_few_samples_of_a_mixed_system():
    T = 3
    (p_states, p_actions), sample, ds, da = two_systems(150, T=T, seed=12)
    gmm = GMMPrior(k=2, strength=1.0, iters=20, seed=0).fit(p_states, p_actions)
    few_states, few_actions = sample(0, 4)  # N = 4 < ds + da + 1: underdetermined alone
    test_states, test_actions = sample(0, 500)

    def held_out(prior):
        dyn = fit_dynamics(few_states, few_actions, prior)
        return float(dynamics_log_likelihood(dyn, test_states, test_actions).mean())

    ll_none = held_out(None)
    ll_global = held_out(global_prior(p_states, p_actions, strength=1.0))
    ll_gmm = held_out(gmm)
    # The 2-cluster prior picks out system 0; no prior overfits; one Gaussian over both
    # systems blurs them.
    assert ll_gmm > ll_none + 10.0
    assert ll_gmm > ll_global + 1.0
    # The GMM prior's own conditional at these samples is close to system 0.
    prior = gmm.eval(few_states, few_actions)
    own = prior.conditional(ds, da)
    assert float(dynamics_log_likelihood(own, test_states, test_actions).mean()) > ll_global


# ------------------------------------------------------------------ cost


def quadratic_costs(states, C, d, h):
    return 0.5 * torch.einsum("...ti,...tij,...tj->...t", states, C, states) + (
        (states * d).sum(-1) + h
    )


def cost_data(N, T, ds, seed, C_kind):
    g = torch.Generator().manual_seed(seed)
    states = 2.0 * randn(N, T, ds, g=g) + randn(T, ds, g=g)  # off-centre, per-step means
    if C_kind == "diag":
        C = torch.diag_embed(torch.rand(T, ds, generator=g, dtype=F64) + 0.1)
    else:
        R = randn(T, ds, ds, g=g)
        C = R @ R.transpose(-1, -2) / ds + 0.1 * torch.eye(ds, dtype=F64)
    d, h = randn(T, ds, g=g), randn(T, g=g)
    return states, quadratic_costs(states, C, d, h), (C, d, h)


@pytest.mark.parametrize("form", ["diag", "full"])
def test_cost_fit_is_exact_on_a_known_quadratic(form):
    ds, da, T = 4, 1, 3
    N = 40  # > 4 + 6 + 4 + 1 terms of the full form
    states, costs, (C, d, h) = cost_data(N, T, ds, seed=20, C_kind=form)
    fit = fit_quadratic_cost(states, costs, da, ridge=0.0, form=form)
    assert torch.allclose(fit.C[..., :ds, :ds], C, atol=1e-8)
    assert torch.allclose(fit.d[..., :ds], d, atol=1e-8)
    assert torch.allclose(fit.h, h, atol=1e-8)


def test_full_cost_with_fewer_samples_than_terms_interpolates():
    ds, T, N = 6, 2, 20  # full form: 6 + 15 + 6 + 1 = 28 terms > N (dual system)
    states, costs, _ = cost_data(N, T, ds, seed=21, C_kind="full")
    fit = fit_quadratic_cost(states, costs, 0, ridge=1e-10, form="full", psd=False)
    assert torch.allclose(quadratic_costs(states, fit.C, fit.d, fit.h), costs, atol=1e-5)


def test_psd_projection_removes_negative_curvature():
    ds, T, N = 3, 2, 200
    g = torch.Generator().manual_seed(22)
    states = randn(N, T, ds, g=g)
    C = torch.diag(torch.tensor([2.0, -1.0, 0.5], dtype=F64)).expand(T, ds, ds)
    d = randn(T, ds, g=g)
    costs = quadratic_costs(states, C, d, torch.zeros(T, dtype=F64))
    raw = fit_quadratic_cost(states, costs, 1, ridge=0.0, psd=False)
    assert torch.allclose(raw.C[..., :ds, :ds], C, atol=1e-8)  # the fit itself is exact
    proj = fit_quadratic_cost(states, costs, 1, ridge=0.0)
    expected = torch.diag(torch.tensor([2.0, 0.0, 0.5], dtype=F64)).expand(T, ds, ds)
    assert torch.allclose(proj.C[..., :ds, :ds], expected, atol=1e-8)
    # d, h are refitted under the projected C: the residual is centred and orthogonal to s.
    resid = costs - quadratic_costs(states, proj.C[..., :ds, :ds], proj.d[..., :ds], proj.h)
    assert float(resid.mean(0).abs().max()) < 1e-8
    assert float((resid[..., None] * states).mean(0).abs().max()) < 1e-8

    # Full form: a rotated indefinite quadratic.
    Q = torch.linalg.qr(randn(ds, ds, g=g)).Q
    C_rot = (Q @ torch.diag(torch.tensor([2.0, -1.0, 0.5], dtype=F64)) @ Q.T).expand(T, ds, ds)
    costs = quadratic_costs(states, C_rot, d, torch.zeros(T, dtype=F64))
    raw = fit_quadratic_cost(states, costs, 1, ridge=0.0, form="full", psd=False)
    assert float(torch.linalg.eigvalsh(raw.C).min()) < -0.9
    proj = fit_quadratic_cost(states, costs, 1, ridge=0.0, form="full")
    eig = torch.linalg.eigvalsh(proj.C)
    assert float(eig.min()) > -1e-10
    assert float(eig[..., -1].min()) > 1.5  # the positive curvature survives


def test_cost_shapes_action_block_and_batching(monkeypatch):
    ds, da, T, N = 5, 2, 3, 30
    g = torch.Generator().manual_seed(23)
    states = torch.randn(2, N, T, ds, generator=g)  # float32 in, float64 out
    costs = (states**2).sum(-1) + states[..., 0]
    fit = fit_quadratic_cost(states, costs, da)
    dx = ds + da
    assert fit.C.shape == (2, T, dx, dx) and fit.d.shape == (2, T, dx) and fit.h.shape == (2, T)
    assert fit.C.dtype == F64
    assert torch.equal(fit.C[..., ds:, :], torch.zeros(2, T, da, dx, dtype=F64))
    assert torch.equal(fit.C[..., :, ds:], torch.zeros(2, T, dx, da, dtype=F64))
    assert torch.equal(fit.d[..., ds:], torch.zeros(2, T, da, dtype=F64))
    assert torch.equal(fit.C, fit.C.transpose(-1, -2))
    single = fit_quadratic_cost(states[1], costs[1], da)
    assert torch.allclose(fit.C[1], single.C, atol=1e-12)
    monkeypatch.setattr(cost_mod, "_CHUNK_BYTES", 1)  # one step per chunk
    chunked = fit_quadratic_cost(states, costs, da)
    assert torch.allclose(fit.C, chunked.C, atol=1e-12) and torch.allclose(fit.h, chunked.h)
    with pytest.raises(ValueError, match="form"):
        fit_quadratic_cost(states, costs, da, form="cubic")  # type: ignore[arg-type]


def test_diag_cost_at_the_papers_state_size():
    ds, da, T, N = 76, 1, 2, 200  # Φ of §3.6 plus the iterate: 153 diag-form terms < N
    states, costs, (C, d, h) = cost_data(N, T, ds, seed=24, C_kind="diag")
    fit = fit_quadratic_cost(states, costs, da, ridge=0.0)
    assert torch.allclose(fit.C[..., :ds, :ds], C, atol=1e-7)
    assert torch.allclose(fit.d[..., :ds], d, atol=1e-7)
    assert torch.allclose(fit.h, h, atol=1e-6)


# ---------------------------------------------------------------- Taylor cost (gps.cost)


def test_taylor_cost_is_each_coordinates_share_of_the_next_objective():
    from gps.cost import fit_taylor_cost

    gen = torch.Generator().manual_seed(0)
    G, N, T, ds, sigma, h = 2, 300, 4, 6, 0.1, 3.0
    s = torch.randn(G, N, T, ds, generator=gen, dtype=torch.float64)
    w = torch.randn(G, T, ds, generator=gen, dtype=torch.float64)
    grad = torch.einsum("gnti,gti->gnt", s, w) + 0.5  # a gradient linear in the state
    cost = fit_taylor_cost(s, grad, sigma, h, ridge=0.0, normalize=False)
    a = torch.randn(G, N, T, 1, generator=gen, dtype=torch.float64)
    z = torch.cat([s, a], -1)
    value = 0.5 * torch.einsum("gnti,gtij,gntj->gnt", z, cost.C, z) \
        + torch.einsum("gnti,gti->gnt", z, cost.d) + cost.h[:, None]
    expected = sigma * grad * a[..., 0] + 0.5 * sigma**2 * h * a[..., 0].square()
    torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-9)
    assert torch.count_nonzero(cost.C[..., :ds, :ds]) == 0  # f(x_t) is no coordinate's doing
    scaled = fit_taylor_cost(s, grad, sigma, h, ridge=0.0)  # normalize: unit-RMS σg
    rms = (sigma * grad).square().mean((1, 2)).sqrt()
    torch.testing.assert_close(scaled.C, cost.C / rms[:, None, None, None])


def test_step_curvature_recovers_h_and_floors_negative_estimates():
    from gps.cost import step_curvature

    gen = torch.Generator().manual_seed(1)
    lin = torch.randn(8, 50, generator=gen, dtype=torch.float64)
    sq = torch.rand(8, 50, generator=gen, dtype=torch.float64)
    df = lin + 0.5 * 2.5 * sq
    df[0, 0] = math.nan  # a diverged step is ignored
    assert float(step_curvature(df, lin, sq)) == pytest.approx(2.5, rel=1e-12)
    assert float(step_curvature(lin - sq, lin, sq, floor=1e-3)) == 1e-3
    with pytest.raises(ValueError, match=r"equal shapes.*\(8, 50\), \(8, 49\)"):
        step_curvature(df, lin[:, :49], sq)


def test_step_curvature_per_window_fits_each_block_of_steps():
    from gps.cost import step_curvature

    gen = torch.Generator().manual_seed(2)
    lin = torch.randn(8, 50, generator=gen, dtype=torch.float64)
    sq = torch.rand(8, 50, generator=gen, dtype=torch.float64)
    true = torch.where(torch.arange(50) < 20, 0.1, 30.0)  # a sharper minimum late
    true[40:] = 5.0
    df = lin + 0.5 * true * sq
    h = step_curvature(df, lin, sq, window=20)
    assert h.shape == (50,)
    torch.testing.assert_close(h, true.to(torch.float64), rtol=1e-10, atol=0)
    # one block's fit is the global fit on its steps; a short last block is fitted alone
    assert float(h[45]) == float(step_curvature(df[:, 40:], lin[:, 40:], sq[:, 40:]))
    # one curvature for all steps lies between the blocks'
    assert 0.1 < float(step_curvature(df, lin, sq)) < 30.0
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="window must be a positive int"):
            step_curvature(df, lin, sq, window=bad)


def test_taylor_cost_takes_a_curvature_per_step():
    from gps.cost import fit_taylor_cost

    gen = torch.Generator().manual_seed(3)
    G, N, T, ds, sigma = 2, 40, 5, 3, 0.5
    s = torch.randn(G, N, T, ds, generator=gen, dtype=torch.float64)
    grad = torch.randn(G, N, T, generator=gen, dtype=torch.float64)
    h = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    cost = fit_taylor_cost(s, grad, sigma, h, normalize=False)
    torch.testing.assert_close(cost.C[..., ds, ds], (sigma**2 * h).expand(G, T))
    per_group = torch.tensor([[1.0], [3.0]], dtype=torch.float64)  # (G, 1): one per group
    cost = fit_taylor_cost(s, grad, sigma, per_group, normalize=False)
    torch.testing.assert_close(cost.C[..., ds, ds], (sigma**2 * per_group).expand(G, T))
    with pytest.raises(ValueError, match=r"curvature of shape \(4,\) does not broadcast "
                                         r"to \(\.\.\., T\) = \(2, 5\)"):
        fit_taylor_cost(s, grad, sigma, h[:4])


def test_taylor_cost_rejects_bad_shapes_and_scales():
    from gps.cost import fit_taylor_cost

    s = torch.zeros(1, 5, 3, 4)
    with pytest.raises(ValueError, match="grads"):
        fit_taylor_cost(s, torch.zeros(1, 5, 2), 0.1, 1.0)
    with pytest.raises(ValueError, match="step_scale"):
        fit_taylor_cost(s, torch.zeros(1, 5, 3), 0.0, 1.0)


def test_fits_name_non_finite_samples():
    """A NaN sample is named where it enters, not found later as a failed Cholesky."""
    from gps.cost import fit_taylor_cost

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 6, 4, 3, generator=g, dtype=F64)  # (G, N, T+1, ds)
    U = torch.randn(2, 6, 3, 1, generator=g, dtype=F64)
    bad = X.clone()
    bad[1, 4, 2, 0] = math.nan
    with pytest.raises(ValueError, match=r"states \(\.\.\., N, T\+1, ds\) has 1 non-finite "
                                         r"entries \(the first at index \(1, 4, 2, 0\)"):
        fit_dynamics(bad, U, global_prior(X, U))
    with pytest.raises(ValueError, match=r"states \(\.\.\., N, T\+1, ds\) has 1 non-finite"):
        global_prior(bad, U)
    U_inf = U.clone()
    U_inf[0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match=r"actions \(\.\.\., N, T, da\) has 1 non-finite"):
        fit_dynamics(X, U_inf, global_prior(X, U))
    S, c = X[:, :, :3], torch.randn(2, 6, 3, generator=g, dtype=F64)
    c[0, 1, 2] = math.nan
    with pytest.raises(ValueError, match=r"costs \(\.\.\., N, T\) has 1 non-finite"):
        fit_quadratic_cost(S, c, 1)
    with pytest.raises(ValueError, match=r"grads \(\.\.\., N, T\) has 1 non-finite"):
        fit_taylor_cost(S, c, 0.1, 1.0)
    with pytest.raises(ValueError, match="curvature has 1 non-finite"):
        fit_taylor_cost(S, c.nan_to_num(), 0.1, math.nan)
