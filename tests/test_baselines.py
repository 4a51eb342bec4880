"""Baseline optimizers (agents.baselines): exact agreement with torch.optim, the CG and
L-BFGS adaptations, learning-rate tuning and agent persistence.

Tolerances: the element-wise rules are compared with torch.optim in float64 with
``atol = rtol = 1e-9`` on every iterate of a 40-step run (far inside the required
1e-6); the float32 run through ``LearnedOptimizer`` uses ``rtol = 1e-5, atol = 1e-6``.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.baselines import (
    AdadeltaPolicy,
    AdaGradPolicy,
    AdamAgent,
    AdamPolicy,
    BaselineAgent,
    ConjugateGradientPolicy,
    LBFGSPolicy,
    MomentumPolicy,
    NAGPolicy,
    RMSpropPolicy,
    SGDAgent,
    SGDPolicy,
)
from optenv.policy import LearnedOptimizer, rollout
from optenv.problems.base import Optimizee, TaskFamily, groups_from_shapes
from optenv.problems.quadratic import QuadraticFamily
from optenv.registry import load_agent, make_agent, register_optimizee

F64 = torch.float64
B, N, STEPS = 4, 6, 40
BASELINES = ["sgd", "momentum", "nag", "adam", "rmsprop", "adagrad", "adadelta", "cg", "lbfgs"]


# --------------------------------------------------------------------------- problems
def noisy_quadratic(seed: int = 0, b: int = B, n: int = N, steps: int = STEPS):
    """Gradients g_t(x) = A (x − x*) + ξ_t of B random quadratics, deterministic per seed."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(b, n, n, generator=gen, dtype=F64))
    eig = 0.1 + 1.9 * torch.rand(b, n, generator=gen, dtype=F64)
    A = Q @ torch.diag_embed(eig) @ Q.transpose(1, 2)
    x_star = torch.randn(b, n, generator=gen, dtype=F64)
    x0 = torch.randn(b, n, generator=gen, dtype=F64)
    noise = 0.3 * torch.randn(steps, b, n, generator=gen, dtype=F64)

    def grad(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.einsum("bij,bj->bi", A, x - x_star) + noise[t]

    return grad, x0


def run_policy(policy, grad, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """Iterates (steps + 1, B, n) of ``policy`` driven by ``grad(x, t)``."""
    x, state = x0.clone(), policy.reset(x0.shape[1], (), x0.shape[0])
    xs = [x]
    for t in range(steps):
        delta, state = policy.step(grad(x, t)[..., None], state)
        x = x + delta
        xs.append(x)
    return torch.stack(xs)


def run_torch(make_opt, grad, x0: torch.Tensor, steps: int, hypers: list[dict]) -> torch.Tensor:
    """B separate torch.optim runs on the same gradients (instance b sees grad(...)[b])."""
    runs = []
    for b in range(x0.shape[0]):
        p = torch.nn.Parameter(x0[b].clone())
        opt = make_opt([p], **hypers[b])
        xs = [p.detach().clone()]
        for t in range(steps):
            full = x0.clone()
            full[b] = p.detach()
            p.grad = grad(full, t)[b].clone()
            opt.step()
            xs.append(p.detach().clone())
        runs.append(torch.stack(xs))
    return torch.stack(runs, 1)


# name: (policy class, torch optimizer factory, hyperparameters of both)
TORCH_CASES: dict[str, tuple[type, Any, dict[str, Any]]] = {
    "sgd": (SGDPolicy, torch.optim.SGD, {"lr": 0.1}),
    "momentum": (MomentumPolicy, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "momentum_0.5": (MomentumPolicy, torch.optim.SGD, {"lr": 0.1, "momentum": 0.5}),
    "nag": (NAGPolicy, lambda p, **kw: torch.optim.SGD(p, nesterov=True, **kw),
            {"lr": 0.05, "momentum": 0.9}),
    "adam": (AdamPolicy, torch.optim.Adam, {"lr": 0.05}),  # torch defaults otherwise
    "adam_custom": (AdamPolicy, torch.optim.Adam, {"lr": 0.05, "betas": (0.8, 0.99),
                                                   "eps": 1e-3}),
    "rmsprop": (RMSpropPolicy, torch.optim.RMSprop, {"lr": 0.01}),
    "rmsprop_centered_momentum": (RMSpropPolicy, torch.optim.RMSprop,
                                  {"lr": 0.005, "alpha": 0.9, "momentum": 0.5,
                                   "centered": True}),
    "adagrad": (AdaGradPolicy, torch.optim.Adagrad, {"lr": 0.3}),
    "adagrad_decay": (AdaGradPolicy, torch.optim.Adagrad,
                      {"lr": 0.3, "lr_decay": 0.05, "initial_accumulator_value": 0.1}),
    "adadelta": (AdadeltaPolicy, torch.optim.Adadelta, {}),  # torch defaults, lr = 1
    "adadelta_custom": (AdadeltaPolicy, torch.optim.Adadelta,
                        {"lr": 0.5, "rho": 0.8, "eps": 1e-4}),
}

TOL = {"rtol": 1e-9, "atol": 1e-9}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_matches_torch_optim(case):
    policy_cls, make_opt, hypers = TORCH_CASES[case]
    grad, x0 = noisy_quadratic(seed=1)
    ours = run_policy(policy_cls(**hypers), grad, x0, STEPS)
    ref = run_torch(make_opt, grad, x0, STEPS, [hypers] * B)
    assert (ours[-1] - ours[0]).abs().max() > 0.1  # the runs went somewhere
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_per_instance_learning_rates_match_separate_torch_optimizers(case):
    policy_cls, make_opt, hypers = TORCH_CASES[case]
    base = hypers.get("lr", 1.0)
    lrs = base * torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=F64)
    grad, x0 = noisy_quadratic(seed=2)
    ours = run_policy(policy_cls(**{**hypers, "lr": lrs}), grad, x0, STEPS)
    ref = run_torch(make_opt, grad, x0, STEPS,
                    [{**hypers, "lr": float(lr)} for lr in lrs])
    torch.testing.assert_close(ours, ref, **TOL)
    # the lrs matter: the instances would differ with one shared lr
    shared = run_policy(policy_cls(**{**hypers, "lr": base}), grad, x0, STEPS)
    assert not torch.allclose(ours[:, 0], shared[:, 0])


def test_per_instance_betas_and_momentum_match_torch():
    grad, x0 = noisy_quadratic(seed=3)
    b1 = torch.tensor([0.5, 0.8, 0.9, 0.95], dtype=F64)
    b2 = torch.tensor([0.9, 0.99, 0.999, 0.9999], dtype=F64)
    ours = run_policy(AdamPolicy(lr=0.05, betas=(b1, b2)), grad, x0, STEPS)
    hypers = [{"lr": 0.05, "betas": (float(u), float(v))} for u, v in zip(b1, b2, strict=True)]
    ref = run_torch(torch.optim.Adam, grad, x0, STEPS, hypers)
    torch.testing.assert_close(ours, ref, **TOL)
    mu = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=F64)
    ours = run_policy(NAGPolicy(lr=0.05, momentum=mu), grad, x0, STEPS)
    ref = run_torch(lambda p, **kw: torch.optim.SGD(p, nesterov=True, **kw), grad, x0,
                    STEPS, [{"lr": 0.05, "momentum": float(m)} for m in mu])
    torch.testing.assert_close(ours, ref, **TOL)


def test_learned_optimizer_adam_matches_torch_adam_float32():
    """End to end in float32 on a small MLP: policy via LearnedOptimizer vs torch.optim.Adam."""
    torch.manual_seed(0)  # only for the model init and data below; copied to both runs
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin.load_state_dict(model.state_dict())
    data = torch.randn(30, 16, 5)
    target = torch.randn(30, 16, 2)
    ours = LearnedOptimizer(model.parameters(), AdamPolicy(lr=0.01))
    ref = torch.optim.Adam(twin.parameters(), lr=0.01)
    for t in range(30):
        for net, opt in ((model, ours), (twin, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(data[t]), target[t]).backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- all policies
def make_policy(name: str, lr: Any):
    cls = make_agent(name).policy_class
    return cls(lr=lr)


LRS = {"sgd": 0.1, "momentum": 0.05, "nag": 0.05, "adam": 0.05, "rmsprop": 0.01,
       "adagrad": 0.3, "adadelta": 1.0, "cg": 0.1, "lbfgs": 0.5}


@pytest.mark.parametrize("name", BASELINES)
def test_batched_run_equals_separate_runs_and_reset_where(name):
    """No leakage between instances; state tensors lead with B; reset_where restarts."""
    grad, x0 = noisy_quadratic(seed=4, steps=12)
    lrs = LRS[name] * torch.tensor([0.5, 1.0, 1.5, 0.75], dtype=F64)
    batched = run_policy(make_policy(name, lrs), grad, x0, 12)
    for b in range(B):
        alone = run_policy(make_policy(name, float(lrs[b])),
                           lambda x, t, b=b: grad(_embed(x, x0, b), t)[b:b + 1],
                           x0[b:b + 1], 12)
        torch.testing.assert_close(batched[:, b], alone[:, 0], rtol=1e-10, atol=1e-12)

    policy = make_policy(name, lrs)
    state = policy.reset(N, (), B)
    x = x0.clone()
    for t in range(5):
        delta, state = policy.step(grad(x, t)[..., None], state)
        x = x + delta
    assert all(v.shape[0] == B for v in state.values())
    mask = torch.tensor([True, False, True, False])
    kept = {k: v.clone() for k, v in state.items()}
    state = policy.reset_where(state, mask, N, ())
    fresh = policy.reset(N, (), B)
    for key, value in state.items():
        torch.testing.assert_close(value[mask], fresh[key][mask].to(value.dtype))
        torch.testing.assert_close(value[~mask], kept[key][~mask])


def _embed(x1: torch.Tensor, x0: torch.Tensor, b: int) -> torch.Tensor:
    full = x0.clone()
    full[b] = x1[0]
    return full


@pytest.mark.parametrize("name", BASELINES)
def test_rollout_through_optenv_is_finite_and_descends(name):
    policy = make_policy(name, {"adadelta": 1.0, "lbfgs": 1.0, "rmsprop": 0.01,
                                "adam": 0.01, "adagrad": 0.1}.get(name, 0.01))
    result = rollout(policy, QuadraticFamily(dim=5), 30, seeds=(0, 1))
    assert torch.isfinite(result.objective).all() and not result.diverged.any()
    assert (result.objective[:, -1] < result.objective[:, 0]).all()


def test_invalid_hyperparameters_are_named():
    with pytest.raises(ValueError, match="lr"):
        SGDPolicy(lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        AdamPolicy(betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="lr"):
        SGDPolicy(lr=torch.ones(2, 2))
    with pytest.raises(ValueError, match="history_size"):
        LBFGSPolicy(history_size=0)
    policy = AdamPolicy(lr=torch.full((3,), 0.1))
    with pytest.raises(ValueError, match="lr has 3 per-instance values"):
        policy.step(torch.zeros(2, 4, 1), policy.reset(4, (), 2))
    with pytest.raises(ValueError, match="momentum"):
        make_agent("momentum", momentum=1.5)


# --------------------------------------------------------------------------- CG
def test_cg_matches_hand_written_polak_ribiere_reference():
    """Exact gradients of quadratics, 3 steps, against a plain numpy transcription.

    Steps that overshoot the largest curvature (lr·λ_max > 1) take the conjugate
    branch; with a short fixed step (lr = 0.3) PR+ clips β to 0 on a quadratic, and
    seed 3's large β gives non-descent directions, hence restarts.
    """
    n, problems = 5, []
    for seed, lrs in ((2, (1.0, 0.5)), (3, (1.0,)), (2, (0.3,))):
        gen = np.random.default_rng(seed)
        for lr in lrs:
            M = gen.standard_normal((n, n))
            problems.append((M @ M.T / n + 0.1 * np.eye(n), gen.standard_normal(n),
                             gen.standard_normal(n), lr))
    conjugate, restarts, clipped, ref_steps = 0, 0, 0, []
    for A, bvec, x, lr in problems:
        steps = []
        g_prev = A @ x - bvec
        d = -g_prev
        steps.append(lr * d)
        x = x + lr * d
        for _ in range(2):
            g = A @ x - bvec
            beta = g @ (g - g_prev) / (g_prev @ g_prev)
            clipped += beta < 0
            beta = max(0.0, beta)
            d = -g + beta * d
            if d @ g >= 0:
                d = -g
                restarts += 1
            elif beta > 0.05:
                conjugate += 1
            steps.append(lr * d)
            x = x + lr * d
            g_prev = g
        ref_steps.append(np.stack(steps))
    assert conjugate == 4 and restarts == 2 and clipped == 2  # every branch is exercised

    A_t = torch.tensor(np.stack([p[0] for p in problems]))
    b_t = torch.tensor(np.stack([p[1] for p in problems]))
    policy = ConjugateGradientPolicy(lr=torch.tensor([p[3] for p in problems], dtype=F64))
    x, state = torch.tensor(np.stack([p[2] for p in problems])), policy.reset(n, (), 4)
    ours = []
    for _ in range(3):
        g = torch.einsum("bij,bj->bi", A_t, x) - b_t
        delta, state = policy.step(g[..., None], state)
        ours.append(delta)
        x = x + delta
    np.testing.assert_allclose(torch.stack(ours, 1).numpy(), np.stack(ref_steps),
                               rtol=1e-12, atol=1e-12)


def test_cg_restarts():
    grad, x0 = noisy_quadratic(seed=5)
    sgd = run_policy(SGDPolicy(lr=0.3), grad, x0, 20)
    cg_every_step = run_policy(ConjugateGradientPolicy(lr=0.3, restart_every=1), grad, x0, 20)
    torch.testing.assert_close(cg_every_step, sgd, rtol=1e-12, atol=1e-12)
    cg = run_policy(ConjugateGradientPolicy(lr=0.3), grad, x0, 20)
    assert not torch.allclose(cg, sgd)
    # the step is always a descent direction for the gradient it was computed from
    policy, state, x = ConjugateGradientPolicy(lr=1.5), None, x0.clone()
    state = policy.reset(N, (), B)
    for t in range(20):
        g = grad(x, t)
        delta, state = policy.step(g[..., None], state)
        assert ((delta * g).sum(1) < 0).all()
        x = x + delta


# --------------------------------------------------------------------------- L-BFGS
def ill_conditioned_quadratic(b: int = 4, n: int = 10, kappa: float = 100.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(b, n, n, generator=gen, dtype=F64))
    eig = torch.logspace(0, -math.log10(kappa), n, dtype=F64).expand(b, n)
    A = Q @ torch.diag_embed(eig) @ Q.transpose(1, 2)
    x_star = torch.randn(b, n, generator=gen, dtype=F64)
    x0 = torch.randn(b, n, generator=gen, dtype=F64)

    def f(x: torch.Tensor) -> torch.Tensor:
        r = x - x_star
        return 0.5 * torch.einsum("bi,bij,bj->b", r, A, r)

    return f, (lambda x, t: torch.einsum("bij,bj->bi", A, x - x_star)), x0


def test_lbfgs_beats_tuned_sgd_on_ill_conditioned_quadratic():
    """10-dim, condition number 100, exact gradients, lr = 1: 1e-8 relative objective
    error within 40 steps; SGD with the best of a fine learning-rate grid is far off."""
    f, grad, x0 = ill_conditioned_quadratic()
    steps = 40
    policy = LBFGSPolicy(lr=1.0)
    x, state = x0.clone(), policy.reset(10, (), 4)
    for t in range(steps):
        delta, state = policy.step(grad(x, t)[..., None], state)
        x = x + delta
    rel = f(x) / f(x0)
    assert (rel < 1e-8).all(), rel
    assert (state["skipped"] == 0).all() and state["valid"].all()  # convex: no pair skipped
    grid = torch.logspace(-2, math.log10(2.0), 30, dtype=F64)
    best_sgd = min(float((f(run_policy(SGDPolicy(lr=float(lr)), grad, x0, steps)[-1])
                          / f(x0)).max()) for lr in grid)
    assert best_sgd > 1e-3


def dense_lbfgs_step(state: dict, g: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for one instance: H built densely by the BFGS update from the memory."""
    S, Y = state["s"][state["valid"]], state["y"][state["valid"]]
    n = g.shape[0]
    gamma = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if len(S) else torch.tensor(1.0, dtype=F64)
    H = gamma * torch.eye(n, dtype=F64)
    eye = torch.eye(n, dtype=F64)
    for s, y in zip(S, Y, strict=True):
        rho = 1.0 / (s @ y)
        H = (eye - rho * torch.outer(s, y)) @ H @ (eye - rho * torch.outer(y, s)) \
            + rho * torch.outer(s, s)
    return -lr * H @ g, H


def double_wells(b: int = 6, n: int = 8, seed: int = 1, noise: float = 0.0, steps: int = 150):
    """f(x) = Σ w_i (z_i² − 1)² / 4 with z = Q x: non-convex near 0 (negative curvature)."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(b, n, n, generator=gen, dtype=F64))
    w = 0.5 + 2 * torch.rand(b, n, generator=gen, dtype=F64)
    x0 = 0.1 * torch.randn(b, n, generator=gen, dtype=F64)
    xi = noise * torch.randn(steps, b, n, generator=gen, dtype=F64)

    def f(x):
        z = torch.einsum("bij,bj->bi", Q, x)
        return (w * (z * z - 1) ** 2 / 4).sum(1)

    def grad(x, t):
        z = torch.einsum("bij,bj->bi", Q, x)
        return torch.einsum("bji,bj->bi", Q, w * (z * z - 1) * z) + xi[t]

    return f, grad, x0


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_lbfgs_skip_rule_keeps_nonconvex_run_finite_and_descending(noise):
    f, grad, x0 = double_wells(noise=noise)
    policy = LBFGSPolicy(lr=1.0, history_size=5)
    x, state = x0.clone(), policy.reset(x0.shape[1], (), x0.shape[0])
    checked = 0
    for t in range(150):
        g = grad(x, t)
        delta, state = policy.step(g[..., None], state)
        assert torch.isfinite(delta).all()
        # every stored pair satisfies the curvature condition: H stays positive definite
        S, Y, valid = state["s"], state["y"], state["valid"]
        sy = (S * Y).sum(2)
        bound = policy.curvature_eps * S.norm(dim=2) * Y.norm(dim=2)
        assert (sy[valid] > bound[valid]).all()
        if t in (3, 10, 40):  # the two-loop recursion equals the dense BFGS matrix
            for b in range(x.shape[0]):
                ref, H = dense_lbfgs_step({k: v[b] for k, v in state.items()}, g[b], 1.0)
                assert torch.linalg.eigvalsh(0.5 * (H + H.T)).min() > 0
                torch.testing.assert_close(delta[b], ref, rtol=1e-8, atol=1e-10)
                checked += 1
        x = x + delta
    assert checked == 3 * x.shape[0]
    assert (state["skipped"] > 0).all()  # negative curvature at the start was skipped
    assert torch.isfinite(x).all()
    assert (f(x) < 0.05 * f(x0)).all()


def test_lbfgs_falls_back_to_gradient_step_on_a_corrupt_memory():
    """A memory holding a negative-curvature pair (e.g. a foreign state) cannot make the
    step go uphill: the two-loop direction (uphill here) is replaced by −lr·γ g, with
    γ = 1 since the pair's sᵀy/yᵀy is negative."""
    policy = LBFGSPolicy(lr=1.0, history_size=2)
    state = policy.reset(2, (), 1)
    state["s"][0, 1] = torch.tensor([1.0, 0.0])
    state["y"][0, 1] = torch.tensor([-1.0, 0.1])  # sᵀy < 0
    state["valid"][0, 1] = True
    g = torch.tensor([[1.0, 0.0]])
    delta, _ = policy.step(g[..., None], state)
    assert torch.isfinite(delta).all() and float((delta * g).sum()) < 0
    torch.testing.assert_close(delta, -g)


def test_lbfgs_max_step_caps_the_step_norm():
    _, grad, x0 = ill_conditioned_quadratic()
    policy = LBFGSPolicy(lr=1.0, max_step=0.1)
    x, state = x0.clone(), policy.reset(10, (), 4)
    for t in range(10):
        delta, state = policy.step(grad(x, t)[..., None], state)
        assert (delta.norm(dim=1) <= 0.1 + 1e-12).all()
        x = x + delta


# --------------------------------------------------------------------------- agents
class Parabola(Optimizee):
    """f(x) = h/2 (x − c)², one coordinate, exact gradients: lr = 1/h solves it in one step."""

    def __init__(self, c: torch.Tensor, h: float) -> None:
        super().__init__(groups_from_shapes({"x": (1,)}), c.shape[0], {"c": c})
        self.h = h

    def init(self, generator: torch.Generator) -> torch.Tensor:
        return self.instance_data["c"][:, None] + 1.0 + torch.rand(
            self.num_instances, 1, generator=generator)

    def sample_batch(self, generator: torch.Generator) -> None:
        return None

    def loss(self, params: torch.Tensor, batch: Any = None) -> torch.Tensor:
        return 0.5 * self.h * (params[:, 0] - self.instance_data["c"]) ** 2

    def objective(self, params: torch.Tensor) -> torch.Tensor:
        return self.loss(params)


class ParabolaFamily(TaskFamily):
    """1-D parabolas h/2 (x − c)² with random centres c."""

    def __init__(self, h: float = 4.0) -> None:
        self.h = float(h)

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> Parabola:
        return Parabola(torch.randn(num_instances, generator=generator), self.h)


@pytest.fixture
def parabola_env():
    env_id = register_optimizee("Parabola", "tests.test_baselines:ParabolaFamily",
                                namespace="optenv-test-baselines", horizon=6)
    yield env_id
    del gym.registry[env_id]  # keep the id out of other tests' registry filters


@pytest.mark.parametrize("metric", ["final", "auc"])
def test_tuning_picks_the_analytically_best_learning_rate(parabola_env, metric):
    h = 4.0
    grid = [1 / 16, 1 / 8, 1 / h, 1 / 2, 1.0]  # 1/2: oscillates; 1: diverges
    agent = SGDAgent(grid=grid, tune_seeds=(0, 1, 2), metric=metric)
    summary = agent.train(parabola_env)
    assert agent.lr == 1 / h and summary["tuning"]["best"] == 1 / h
    assert summary["hyperparams"] == {"lr": 1 / h}
    scores = summary["tuning"]["scores"]
    assert scores[2] == min(scores) and scores[2] < 1e-10
    assert scores[4] == math.inf  # the diverging value is never picked
    assert int(np.argmin(scores)) == 2
    assert agent.training_cost["env_steps"] == len(grid) * 3 * 6  # G × seeds × horizon
    assert agent.training_cost["wall_s"] > 0
    # a given grid / steps / seeds at train time override the constructor's
    summary = agent.train(parabola_env, steps=2, seeds=[5], grid=[1 / 16, 1 / 8])
    assert agent.lr == 1 / 8 and summary["tuning"]["steps"] == 2
    assert agent.training_cost["env_steps"] == len(grid) * 3 * 6 + 2 * 1 * 2


def test_given_lr_is_used_until_train(parabola_env):
    agent = make_agent("adam", lr=0.1)
    assert isinstance(agent, AdamAgent) and agent.name == "adam"
    policy = agent.policy()
    assert isinstance(policy, AdamPolicy) and policy.lr == 0.1
    assert policy.betas == (0.9, 0.999) and policy.eps == 1e-8
    agent.train(parabola_env, grid=[0.5, 1e-3])
    assert agent.lr == 0.5 and agent.policy().lr == 0.5


@pytest.mark.parametrize("name", BASELINES)
def test_agent_registry_names_and_untrained_policy_error(name):
    agent = make_agent(name)
    assert isinstance(agent, BaselineAgent) and agent.name == name
    assert agent.hyperparams()["lr"] is None
    with pytest.raises(ValueError, match=f"'{name}' agent"):
        agent.policy()


@pytest.mark.parametrize("name", BASELINES)
def test_save_load_round_trip_gives_identical_steps(name, parabola_env, tmp_path):
    agent = make_agent(name, grid=[0.01, 0.1, 0.3], tune_seeds=[0, 1])
    agent.train(parabola_env, steps=3)
    loaded = load_agent(agent.save(tmp_path / f"{name}.pt"))
    assert type(loaded) is type(agent)
    assert loaded.hyperparams() == agent.hyperparams()
    assert loaded.config() == agent.config()
    assert loaded.tuning == agent.tuning and loaded.tuning is not None
    assert loaded.training_cost == agent.training_cost
    grad, x0 = noisy_quadratic(seed=6, steps=8)
    torch.testing.assert_close(run_policy(loaded.policy(), grad, x0, 8),
                               run_policy(agent.policy(), grad, x0, 8), rtol=0, atol=0)


def test_save_load_keeps_non_default_hyperparameters(tmp_path):
    agent = make_agent("lbfgs", lr=0.7, history_size=3, max_step=2.0, curvature_eps=1e-3)
    loaded = load_agent(agent.save(tmp_path / "lbfgs.pt"))
    policy = loaded.policy()
    assert (policy.lr, policy.history_size, policy.max_step, policy.curvature_eps) == \
        (0.7, 3, 2.0, 1e-3)
    agent = make_agent("adam", lr=0.2, betas=(0.5, 0.9))
    assert load_agent(agent.save(tmp_path / "adam.pt")).policy().betas == (0.5, 0.9)
