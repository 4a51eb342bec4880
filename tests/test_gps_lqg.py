"""gps/lqg.py: Riccati recursion, forward moments, closed-form KL and the η dual search."""

from __future__ import annotations

import itertools
import math
from dataclasses import fields

import numpy as np
import pytest
import torch

from gps import (
    LinearDynamics,
    LinearGaussianController,
    LQGError,
    QuadraticCost,
    backward,
    forward,
    kl_divergence,
    solve,
)
from gps.lqg import dual_search

torch.set_num_threads(1)  # tiny problems; a benchmark shares the machine

F64 = torch.float64


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64)


def _spd(g: torch.Generator, *shape: int, scale: float = 1.0, floor: float = 0.1) -> torch.Tensor:
    n = shape[-1]
    M = _rand(g, *shape) / math.sqrt(n)
    return scale * (M @ M.mT + floor * torch.eye(n, dtype=F64))


def make_problem(
    seed: int,
    T: int = 5,
    ds: int = 3,
    da: int = 2,
    batch: tuple[int, ...] = (),
    action_cost: float = 0.0,
    prev_cov: float = 0.05,
):
    """Random dynamics, a PSD cost (state-only unless ``action_cost``) and an old controller."""
    g = torch.Generator().manual_seed(seed)
    A = 0.9 * torch.eye(ds, dtype=F64) + 0.2 * _rand(g, *batch, T, ds, ds)
    dyn = LinearDynamics(
        A,
        _rand(g, *batch, T, ds, da),
        0.1 * _rand(g, *batch, T, ds),
        _spd(g, *batch, T, ds, ds, scale=0.01),
    )
    C = torch.zeros(*batch, T, ds + da, ds + da, dtype=F64)
    C[..., :ds, :ds] = _spd(g, *batch, T, ds, ds)
    if action_cost:
        C[..., ds:, ds:] = _spd(g, *batch, T, da, da, scale=action_cost)
    cost = QuadraticCost(C, _rand(g, *batch, T, ds + da), _rand(g, *batch, T))
    prev = LinearGaussianController.from_cov(
        0.3 * _rand(g, *batch, T, da, ds),
        _rand(g, *batch, T, da),
        _spd(g, *batch, T, da, da, scale=prev_cov, floor=0.5),
    )
    mu0 = _rand(g, *batch, ds)
    Sigma0 = _spd(g, *batch, ds, ds, scale=0.1)
    return dyn, cost, prev, mu0, Sigma0


def expected_cost(cost: QuadraticCost, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """E[½xᵀCx + dᵀx + h] for x ~ N(mean, cov), per time step."""
    quad = (cost.C * (cov + mean[..., :, None] * mean[..., None, :])).sum((-1, -2))
    return 0.5 * quad + (cost.d * mean).sum(-1) + cost.h


def numpy_riccati(dyn: LinearDynamics, cost: QuadraticCost, eta: float):
    """Max-entropy LQR for c/η written plainly: loop over t, numpy float64."""
    A, B, c, F = (x.numpy() for x in (dyn.A, dyn.B, dyn.c, dyn.F))
    C, d, h = (x.numpy() / eta for x in (cost.C, cost.d, cost.h))
    T, ds, da = B.shape
    V, v, v0 = np.zeros((ds, ds)), np.zeros(ds), 0.0
    out = {key: [None] * T for key in ("K", "k", "cov", "V", "v", "v0")}
    for t in range(T - 1, -1, -1):
        Qxx, qx, q0 = C[t].copy(), d[t].copy(), h[t]
        if t < T - 1:
            AB = np.hstack([A[t], B[t]])
            Qxx += AB.T @ V @ AB
            qx += AB.T @ (V @ c[t] + v)
            q0 += 0.5 * c[t] @ V @ c[t] + v @ c[t] + 0.5 * np.trace(F[t] @ V) + v0
        Qss, Qsu, Quu, qs, qu = Qxx[:ds, :ds], Qxx[:ds, ds:], Qxx[ds:, ds:], qx[:ds], qx[ds:]
        K = -np.linalg.solve(Quu, Qsu.T)
        k = -np.linalg.solve(Quu, qu)
        V = Qss - Qsu @ np.linalg.solve(Quu, Qsu.T)
        v = qs - Qsu @ np.linalg.solve(Quu, qu)
        v0 = (
            q0
            - 0.5 * qu @ np.linalg.solve(Quu, qu)
            + 0.5 * np.linalg.slogdet(Quu)[1]
            - 0.5 * da * math.log(2 * math.pi)
        )
        for key, val in zip(out, (K, k, np.linalg.inv(Quu), V, v, v0), strict=True):
            out[key][t] = val
    return {key: np.stack(val) for key, val in out.items()}


def _close(a, b, tol: float) -> None:
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


# ----------------------------------------------------------------------------- 1. LQR


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_lqr_matches_numpy_riccati(eta: float) -> None:
    dyn, cost, _, _, _ = make_problem(0, action_cost=1.0)
    ctrl, value = backward(dyn, cost, eta, prev=None)
    ref = numpy_riccati(dyn, cost, eta)
    for name, got in (
        ("K", ctrl.K),
        ("k", ctrl.k),
        ("cov", ctrl.cov),
        ("V", value.V),
        ("v", value.v),
        ("v0", value.v0),
    ):
        _close(got.numpy(), ref[name], 1e-8)
    # The controller's factors: inv_cov is Q_uu, chol is the lower Cholesky factor of cov.
    assert torch.equal(ctrl.chol, ctrl.chol.tril())
    _close((ctrl.chol @ ctrl.chol.mT).numpy(), ctrl.cov.numpy(), 1e-12)
    _close((ctrl.inv_cov @ ctrl.cov).numpy(), np.broadcast_to(np.eye(2), ctrl.cov.shape), 1e-12)


def test_lqr_gain_independent_of_dynamics_noise() -> None:
    dyn, cost, _, _, _ = make_problem(1, action_cost=1.0)
    dyn2 = LinearDynamics(dyn.A, dyn.B, dyn.c, 25.0 * dyn.F + 0.3 * torch.eye(3, dtype=F64))
    (c1, v1), (c2, v2) = backward(dyn, cost), backward(dyn2, cost)
    for a, b in ((c1.K, c2.K), (c1.k, c2.k), (c1.cov, c2.cov), (v1.V, v2.V), (v1.v, v2.v)):
        _close(a.numpy(), b.numpy(), 1e-12)
    assert not torch.allclose(v1.v0[:-1], v2.v0[:-1])  # F only enters the constant


def test_temperature_scales_covariance_only() -> None:
    dyn, cost, _, _, _ = make_problem(2, action_cost=1.0)
    (c1, _), (c2, _) = backward(dyn, cost, 1.0), backward(dyn, cost, 4.0)
    _close(c2.K.numpy(), c1.K.numpy(), 1e-10)
    _close(c2.k.numpy(), c1.k.numpy(), 1e-10)
    _close(c2.cov.numpy(), 4.0 * c1.cov.numpy(), 1e-10)


def test_value_is_cost_plus_kl() -> None:
    """E[V_0(s_0)] = Σ_t E[c̃_t]/η + Σ_t E[KL(ψ ‖ ψ')]: the value, forward pass and KL agree."""
    dyn, cost, prev, mu0, Sigma0 = make_problem(3)
    eta = 0.7
    ctrl, value = backward(dyn, cost, eta, prev)
    mom = forward(dyn, ctrl, mu0, Sigma0)
    EV0 = (
        0.5 * (value.V[0] * (Sigma0 + torch.outer(mu0, mu0))).sum() + value.v[0] @ mu0 + value.v0[0]
    )
    total = expected_cost(cost, mom.mean, mom.cov).sum() / eta
    total = total + kl_divergence(ctrl, prev, mom).sum()
    _close(EV0.item(), total.item(), 1e-9)


# ----------------------------------------------------------------------------- 2. KL only


def test_kl_only_returns_old_controller() -> None:
    dyn, cost, prev, mu0, Sigma0 = make_problem(4)
    zero = QuadraticCost(
        torch.zeros_like(cost.C), torch.zeros_like(cost.d), torch.zeros_like(cost.h)
    )
    for eta in (1e-3, 1.0, 1e3):
        ctrl, value = backward(dyn, zero, eta, prev)
        for a, b in ((ctrl.K, prev.K), (ctrl.k, prev.k), (ctrl.cov, prev.cov)):
            assert (a - b).abs().max() < 1e-10
        assert value.V.abs().max() < 1e-10 and value.v0.abs().max() < 1e-10
    sol = solve(dyn, zero, prev, mu0, Sigma0, epsilon=0.1)
    assert (sol.controller.K - prev.K).abs().max() < 1e-10
    assert sol.eta.item() == pytest.approx(1e-6)  # constraint inactive: η_min
    assert abs(sol.kl.item()) < 1e-10


# ----------------------------------------------------------------------------- 3. dual search


def _kl_at(dyn, cost, prev, mu0, Sigma0, eta) -> float:
    ctrl, _ = backward(dyn, cost, eta, prev)
    return kl_divergence(ctrl, prev, forward(dyn, ctrl, mu0, Sigma0)).sum().item()


def test_kl_non_increasing_in_eta() -> None:
    problem = make_problem(5)
    kls = np.array([_kl_at(*problem, eta) for eta in np.logspace(-6, 10, 33)])
    assert np.all(np.diff(kls) <= 1e-9 * kls[:-1])
    assert kls[0] > 1e3 and kls[-1] < 1e-12  # the grid spans the search range


@pytest.mark.parametrize("eta0", [1.0, 1e-4, 1e8])
def test_dual_search_meets_epsilon(eta0: float) -> None:
    problem = make_problem(5)
    assert _kl_at(*problem, 1e-6) > 1e3  # the unconstrained step exceeds every ε below
    for eps in np.logspace(-3, 3, 7):
        ctrl, eta, kl = solve(*problem, epsilon=float(eps), eta0=eta0)
        assert abs(kl.item() - eps) < 0.1 * eps and kl.item() <= eps * (1 + 1e-12)
        again = kl_divergence(ctrl, problem[2], forward(problem[0], ctrl, *problem[3:]))
        _close(again.sum().item(), kl.item(), 1e-10)
        _close(_kl_at(*problem, eta.item()), kl.item(), 1e-10)


def _toy_evaluate(scale: torch.Tensor, eta_pd: torch.Tensor, calls: list[torch.Tensor]):
    """KL(η) = scale/η per flat row, "non-PD" below eta_pd; the controller stores log η."""

    def evaluate(x: torch.Tensor, rows: torch.Tensor):
        calls.append(rows.clone())
        k = x[:, None, None]  # (k, T=1, da=1)
        one = torch.ones(x.shape[0], 1, 1, 1, dtype=F64)
        ctrl = LinearGaussianController(torch.zeros_like(one), k, one, one, one)
        fail = torch.where(x.exp() < eta_pd[rows], 0, -1)
        return ctrl, scale[rows] / x.exp(), fail

    return evaluate


@pytest.mark.parametrize("illinois", [True, False])
def test_dual_search_generic_rows_window_and_events(illinois: bool) -> None:
    # rows: active, inactive (KL(η_min) ≤ ε), non-PD below η = 100, stuck at η_max
    scale = torch.tensor([1.0, 1e-9, 100.0, 1e9], dtype=F64)
    eta_pd = torch.tensor([0.0, 0.0, 100.0, 0.0], dtype=F64)
    eps = torch.tensor([0.3, 1.0, 0.3, 1.0], dtype=F64).reshape(2, 2)
    calls: list[torch.Tensor] = []
    out = dual_search(
        _toy_evaluate(scale, eta_pd, calls), eps, torch.tensor(1.0, dtype=F64), (2, 2),
        eta_min=1e-6, eta_max=1e6, rtol=0.1, max_iter=60, illinois=illinois,
    )  # fmt: skip
    eta, kl = out.eta.reshape(-1), out.kl.reshape(-1)
    assert out.eta.shape == (2, 2) and out.chosen.k.shape == (2, 2, 1, 1)
    torch.testing.assert_close(out.chosen.k.reshape(-1).exp(), eta)  # ψ evaluated at η
    torch.testing.assert_close(kl, scale / eta)
    e = eps.reshape(-1)
    for i in (0, 2):  # active: in the acceptance window
        assert 0.9 * e[i] < kl[i] <= e[i]
    assert eta[1].item() == pytest.approx(1e-6)  # inactive: η_min
    assert eta[2] >= 100.0  # non-PD counted as KL = ∞: η raised past it
    assert eta[3].item() == pytest.approx(1e6) and kl[3] > e[3]  # stuck at η_max
    assert ("stuck", 1) in out.events
    # only unfinished rows are evaluated: every row at first, then a shrinking subset
    assert calls[0].tolist() == [0, 1, 2, 3] and len(calls[-1]) == 1
    for prev_rows, rows in itertools.pairwise(calls):
        assert set(rows.tolist()) <= set(prev_rows.tolist())


def test_dual_search_errors_name_the_row_or_use_the_callback() -> None:
    scale = torch.ones(3, dtype=F64)
    eta_pd = torch.tensor([0.0, 1e9, 0.0], dtype=F64)  # row 1 is non-PD even at η_max
    args = (torch.full((3,), 0.3, dtype=F64), torch.tensor(1.0, dtype=F64), (3,))
    kw = {"eta_min": 1e-6, "eta_max": 1e6, "rtol": 0.1, "max_iter": 60}
    with pytest.raises(LQGError, match=r"eta_max=1e\+06 for batch element \(1,\), time step 0"):
        dual_search(_toy_evaluate(scale, eta_pd, []), *args, **kw)
    with pytest.raises(LQGError, match=r"^eta_max 1 0$"):
        dual_search(_toy_evaluate(scale, eta_pd, []), *args, **kw,
                    error=lambda kind, row, t: f"{kind} {row} {t}")  # fmt: skip
    kw["max_iter"] = 1  # from η = 1 (KL = 1 > ε) nothing feasible is seen in one step
    with pytest.raises(LQGError, match=r"within max_iter=1 for batch element \(0,\)"):
        dual_search(_toy_evaluate(scale, torch.zeros(3, dtype=F64), []), *args, **kw)


def test_inactive_constraint_returns_eta_min() -> None:
    problem = make_problem(5)
    big = 10 * _kl_at(*problem, 1e-6)
    sol = solve(*problem, epsilon=big, eta0=10.0)
    assert sol.eta.item() == pytest.approx(1e-6) and sol.kl.item() <= big


# ----------------------------------------------------------------------------- 4. Monte Carlo


def _sample_gaussian(g, mean, chol, n):
    return mean + (chol @ _rand(g, n, mean.shape[-1])[..., None])[..., 0]


def test_forward_and_kl_match_monte_carlo() -> None:
    T, ds, da, n = 4, 2, 2, 200_000
    dyn, cost, prev, mu0, Sigma0 = make_problem(6, T=T, ds=ds, da=da)
    ctrl, _ = backward(dyn, cost, 2.0, prev)
    mom = forward(dyn, ctrl, mu0, Sigma0)
    kl = kl_divergence(ctrl, prev, mom)
    g = torch.Generator().manual_seed(123)
    s = _sample_gaussian(g, mu0, torch.linalg.cholesky(Sigma0), n)
    Fchol = torch.linalg.cholesky(dyn.F)
    for t in range(T):
        a = _sample_gaussian(g, (ctrl.K[t] @ s[..., None])[..., 0] + ctrl.k[t], ctrl.chol[t], n)
        x = torch.cat([s, a], dim=-1)
        mean, cov = mom.mean[t], mom.cov[t]
        se_mean = (torch.diagonal(cov) / n).sqrt()
        assert ((x.mean(0) - mean).abs() < 4 * se_mean).all(), t
        dev = x - mean
        emp = dev.T @ dev / n
        var = torch.diagonal(cov)
        se_cov = ((torch.outer(var, var) + cov**2) / n).sqrt()
        assert ((emp - cov).abs() < 5 * se_cov).all(), t
        # E_s[KL(new ‖ old)] per step: sample s from the marginal, a ~ new(·|s).
        log_new = _log_normal(a, (ctrl.K[t] @ s[..., None])[..., 0] + ctrl.k[t], ctrl.chol[t])
        log_old = _log_normal(a, (prev.K[t] @ s[..., None])[..., 0] + prev.k[t], prev.chol[t])
        r = log_new - log_old
        assert abs(r.mean() - kl[t]) < 3 * r.std() / math.sqrt(n), t
        if t < T - 1:
            s = _sample_gaussian(
                g, x @ torch.cat([dyn.A[t], dyn.B[t]], -1).T + dyn.c[t], Fchol[t], n
            )


def _log_normal(x, mean, chol):
    z = torch.linalg.solve_triangular(chol, (x - mean)[..., None], upper=False)[..., 0]
    logdet = 2 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (z**2).sum(-1) - 0.5 * logdet - 0.5 * x.shape[-1] * math.log(2 * math.pi)


# ----------------------------------------------------------------------------- 5. non-PD


def _negative_action_cost(T: int, ds: int, da: int) -> QuadraticCost:
    C = torch.zeros(T, ds + da, ds + da, dtype=F64)
    C[:, ds:, ds:] = -torch.eye(da, dtype=F64)
    return QuadraticCost(C, torch.zeros(T, ds + da, dtype=F64), torch.zeros(T, dtype=F64))


def test_non_pd_recovered_by_raising_eta() -> None:
    dyn, _, prev, mu0, Sigma0 = make_problem(7, prev_cov=1.0)
    cost = _negative_action_cost(5, 3, 2)
    with pytest.raises(LQGError, match="time step"):
        backward(dyn, cost, 1.0, prev)  # genuinely not PD at the start
    ctrl, eta, kl = solve(dyn, cost, prev, mu0, Sigma0, epsilon=1.0, eta0=1.0)
    assert eta.item() > 1.0
    assert abs(kl.item() - 1.0) < 0.1
    for x in (ctrl.K, ctrl.k, ctrl.cov, ctrl.chol, ctrl.inv_cov):
        assert torch.isfinite(x).all()
    assert (torch.linalg.eigvalsh(ctrl.cov) > 0).all()


def test_impossible_non_pd_raises() -> None:
    dyn, _, prev, mu0, Sigma0 = make_problem(7, prev_cov=1.0)
    cost = _negative_action_cost(5, 3, 2)
    with pytest.raises(LQGError, match=r"batch element \(\), time step 4.*no old controller"):
        backward(dyn, cost, 1.0, prev=None)
    with pytest.raises(LQGError, match=r"eta_max.*batch element \(\), time step"):
        solve(dyn, cost, prev, mu0, Sigma0, epsilon=1.0, eta_max=1.5)  # PD needs η > 2


def test_non_pd_only_raises_eta_of_its_own_batch_element() -> None:
    dyn, cost, prev, mu0, Sigma0 = make_problem(8, batch=(2,), prev_cov=1.0)
    C = cost.C.clone()
    C[0, :, 3:, 3:] = -torch.eye(2, dtype=F64)
    cost = QuadraticCost(C, cost.d, cost.h)
    sol = solve(dyn, cost, prev, mu0, Sigma0, epsilon=0.5)
    one = solve(*(_index(x, 1) for x in (dyn, cost, prev, mu0, Sigma0)), epsilon=0.5)
    _close(sol.eta[1].item(), one.eta.item(), 1e-10)
    assert torch.isfinite(sol.controller.cov).all() and (sol.kl <= 0.5).all()


# ----------------------------------------------------------------------------- 7. convolution


def _block_diag(M: torch.Tensor, G: int) -> torch.Tensor:
    """(T, p, q) → (T, G·p, G·q) with G copies on the diagonal."""
    return torch.stack([torch.block_diag(*[m] * G) for m in M])


def _blockdiag_x(C: torch.Tensor, G: int, ds: int) -> torch.Tensor:
    """Per-group x-matrix over [s; a] → full x-matrix over [s¹..s^G; a¹..a^G]."""
    blocks = [
        [_block_diag(C[:, i0:i1, j0:j1], G) for j0, j1 in ((0, ds), (ds, None))]
        for i0, i1 in ((0, ds), (ds, None))
    ]
    return torch.cat([torch.cat(row, dim=-1) for row in blocks], dim=-2)


def test_convolutional_groups_match_block_diagonal_system() -> None:
    G, T, ds, da, eps_total = 3, 5, 2, 1, 0.6
    dyn, cost, prev, mu0, Sigma0 = make_problem(9, T=T, ds=ds, da=da)

    def rep(x: torch.Tensor) -> torch.Tensor:
        return x.expand(G, *x.shape).clone()

    per = solve(
        LinearDynamics(*(rep(x) for x in (dyn.A, dyn.B, dyn.c, dyn.F))),
        QuadraticCost(*(rep(x) for x in (cost.C, cost.d, cost.h))),
        LinearGaussianController(
            *(rep(x) for x in (prev.K, prev.k, prev.cov, prev.chol, prev.inv_cov))
        ),
        rep(mu0),
        rep(Sigma0),
        epsilon=eps_total / G,
    )

    def cat(x: torch.Tensor) -> torch.Tensor:  # (T, n) → (T, G·n)
        return x.repeat(*[1] * (x.ndim - 1), G)

    full_dyn = LinearDynamics(
        _block_diag(dyn.A, G), _block_diag(dyn.B, G), cat(dyn.c), _block_diag(dyn.F, G)
    )
    d = torch.cat([cat(cost.d[:, :ds]), cat(cost.d[:, ds:])], dim=-1)
    full_cost = QuadraticCost(_blockdiag_x(cost.C, G, ds), d, G * cost.h)
    full_prev = LinearGaussianController.from_cov(
        _block_diag(prev.K, G), cat(prev.k), _block_diag(prev.cov, G)
    )
    full = solve(
        full_dyn, full_cost, full_prev, cat(mu0), torch.block_diag(*[Sigma0] * G), epsilon=eps_total
    )

    assert full.eta.item() == pytest.approx(per.eta[0].item(), rel=1e-6)
    _close(per.eta.numpy(), np.full(G, per.eta[0].item()), 1e-12)
    _close(full.kl.item(), per.kl.sum().item(), 1e-6)
    fc = full.controller
    for gi in range(G):
        s, a = slice(gi * ds, (gi + 1) * ds), slice(gi * da, (gi + 1) * da)
        _close(fc.K[:, a, s].numpy(), per.controller.K[gi].numpy(), 1e-6)
        _close(fc.k[:, a].numpy(), per.controller.k[gi].numpy(), 1e-6)
        _close(fc.cov[:, a, a].numpy(), per.controller.cov[gi].numpy(), 1e-6)
    off = fc.K.clone()
    for gi in range(G):
        off[:, gi * da : (gi + 1) * da, gi * ds : (gi + 1) * ds] = 0
    assert off.abs().max() < 1e-12


# ----------------------------------------------------------------------------- batching


def _index(obj, i: int):
    """Batch element ``i`` of a tensor or a gps.types container."""
    if isinstance(obj, torch.Tensor):
        return obj[i]
    return type(obj)(**{f.name: getattr(obj, f.name)[i] for f in fields(obj)})


def test_batched_solve_equals_separate_solves() -> None:
    problem = make_problem(10, batch=(4,))
    eps = torch.tensor([1e-2, 0.3, 3.0, 30.0], dtype=F64)
    eta0 = torch.tensor([1.0, 1e-3, 1e3, 1.0], dtype=F64)
    sol = solve(*problem, epsilon=eps, eta0=eta0)
    for i in range(4):
        one = solve(*(_index(x, i) for x in problem), epsilon=eps[i].item(), eta0=eta0[i].item())
        _close(sol.eta[i].item(), one.eta.item(), 1e-10)
        _close(sol.kl[i].item(), one.kl.item(), 1e-10)
        for name in ("K", "k", "cov", "chol", "inv_cov"):
            _close(
                getattr(sol.controller, name)[i].numpy(),
                getattr(one.controller, name).numpy(),
                1e-10,
            )


def test_two_batch_dims_and_broadcast_eta() -> None:
    dyn, cost, prev, mu0, Sigma0 = make_problem(11, batch=(2, 3), action_cost=1.0)
    eta = torch.tensor([0.5, 2.0, 8.0], dtype=F64)  # broadcasts over the last batch dim
    ctrl, value = backward(dyn, cost, eta, prev)
    assert ctrl.K.shape == (2, 3, 5, 2, 3) and value.v0.shape == (2, 3, 5)
    for i in range(2):
        for j in range(3):
            one, _ = backward(
                *(_index(_index(x, i), j) for x in (dyn, cost)),
                eta[j].item(),
                _index(_index(prev, i), j),
            )
            _close(ctrl.K[i, j].numpy(), one.K.numpy(), 1e-12)
    sol = solve(dyn, cost, prev, mu0[0], Sigma0, epsilon=0.2)  # mu0 broadcast over dim 0
    assert sol.eta.shape == (2, 3) and ((sol.kl - 0.2).abs() < 0.02).all()


# ----------------------------------------------------------------------------- validation


def test_float32_and_shape_errors_name_the_field() -> None:
    dyn, cost, prev, mu0, Sigma0 = make_problem(12)
    with pytest.raises(ValueError, match=r"LinearDynamics\.A must be float64"):
        LinearDynamics(dyn.A.float(), dyn.B, dyn.c, dyn.F)
    bad = LinearDynamics(dyn.A, dyn.B, dyn.c, dyn.F)
    bad.B = dyn.B.float()  # mutated after construction: caught again by the LQG
    with pytest.raises(ValueError, match=r"LinearDynamics\.B must be float64"):
        solve(bad, cost, prev, mu0, Sigma0, epsilon=1.0)
    with pytest.raises(ValueError, match="mu0 must be float64"):
        solve(dyn, cost, prev, mu0.float(), Sigma0, epsilon=1.0)
    with pytest.raises(ValueError, match="Sigma0 must be float64"):
        forward(dyn, prev, mu0, Sigma0.float())
    with pytest.raises(ValueError, match="eta must be float64"):
        backward(dyn, cost, torch.tensor(1.0), prev)
    with pytest.raises(ValueError, match=r"QuadraticCost\.d must have shape"):
        backward(dyn, QuadraticCost(cost.C, cost.d[..., :-1], cost.h), 1.0, prev)
    with pytest.raises(ValueError, match=r"prev\.K must have shape"):
        backward(
            dyn,
            cost,
            1.0,
            LinearGaussianController(
                prev.K[:-1], prev.k[:-1], prev.cov[:-1], prev.chol[:-1], prev.inv_cov[:-1]
            ),
        )
    with pytest.raises(ValueError, match="do not broadcast"):
        solve(dyn, cost, prev, mu0.expand(2, 3), Sigma0.expand(3, 3, 3), epsilon=1.0)
    with pytest.raises(ValueError, match="eta must be finite and > 0"):
        backward(dyn, cost, -1.0, prev)
    with pytest.raises(ValueError, match="epsilon"):
        solve(dyn, cost, prev, mu0, Sigma0, epsilon=0.0)
    with pytest.raises(ValueError, match="needs the old controller"):
        solve(dyn, cost, None, mu0, Sigma0, epsilon=1.0)  # type: ignore[arg-type]


def test_non_finite_inputs_are_named_not_taken_for_a_small_eta() -> None:
    """A NaN in the fits would otherwise look like "KL > ε at every η" and end as
    η = η_max with a NaN controller; it is a ValueError naming the field and index."""
    dyn, cost, prev, mu0, Sigma0 = make_problem(12)
    d = cost.d.clone()
    d[3, 1] = math.nan
    with pytest.raises(ValueError, match=r"QuadraticCost\.d has 1 non-finite entries "
                                         r"\(the first at index \(3, 1\): nan\)"):
        solve(dyn, QuadraticCost(cost.C, d, cost.h), prev, mu0, Sigma0, epsilon=1.0)
    F = dyn.F.clone()
    F[0, 0, 0] = math.inf
    with pytest.raises(ValueError, match=r"LinearDynamics\.F has 1 non-finite"):
        backward(LinearDynamics(dyn.A, dyn.B, dyn.c, F), cost, 1.0, prev)
    bad_mu0 = mu0.clone()
    bad_mu0[..., :2] = math.nan
    with pytest.raises(ValueError, match="mu0 has 2 non-finite"):
        solve(dyn, cost, prev, bad_mu0, Sigma0, epsilon=1.0)
