"""The policy protocol: rollout, make_problem, LearnedOptimizer, the agent registry."""

from __future__ import annotations

import copy

import pytest
import torch

import optenv
from optenv.policy import LearnedOptimizer, StepPolicy, make_problem, rollout
from optenv.problems.quadratic import QuadraticFamily
from optenv.registry import task_for


class SignSGD(StepPolicy):
    """Δx = −lr · sign(g): a policy with no state, for the protocol tests."""

    features = "gradient"

    def __init__(self, lr: float | torch.Tensor = 0.01) -> None:
        self.lr = torch.as_tensor(lr, dtype=torch.float32)

    def reset(self, n, groups, batch):
        return {"t": torch.zeros(batch)}

    def step(self, features, state):
        lr = self.lr.reshape(-1, 1) if self.lr.ndim else self.lr
        return -lr * features[..., 0].sign(), {"t": state["t"] + 1}


class HeavyBall(StepPolicy):
    """Momentum with state: x ← x + v, v ← μ v − lr g."""

    features = "gradient"

    def __init__(self, lr: float = 0.05, mu: float = 0.9) -> None:
        self.lr, self.mu = lr, mu

    def reset(self, n, groups, batch):
        return {"v": torch.zeros(batch, n)}

    def step(self, features, state):
        v = self.mu * state["v"] - self.lr * features[..., 0]
        return v, {"v": v}


class ObsPolicy(HeavyBall):
    features = "li_malik_obs"

    def step(self, features, state):
        return super().step(features[..., 1:2], state)


def test_make_problem_seed_does_not_depend_on_neighbours():
    family = QuadraticFamily(dim=5)
    a, xa = make_problem(family, [3, 7])
    b, xb = make_problem(family, [9, 7, 1])
    torch.testing.assert_close(a.instance_data["W"][1], b.instance_data["W"][1])
    torch.testing.assert_close(xa[1], xb[1])
    assert not torch.equal(a.instance_data["W"][0], b.instance_data["W"][0])


def test_rollout_batches_seeds_and_matches_single_runs():
    family, _ = task_for("optenv/Quadratic-v0")
    batched = rollout(SignSGD(0.01), family, 30, seeds=[0, 1, 2])
    assert batched.objective.shape == (3, 31)
    for i, s in enumerate([0, 1, 2]):
        single = rollout(SignSGD(0.01), family, 30, seeds=[s])
        torch.testing.assert_close(single.objective[0], batched.objective[i])
    assert (batched.objective[:, -1] < batched.objective[:, 0]).all()


def test_rollout_freezes_and_flags_divergence():
    family, _ = task_for("optenv/Quadratic-v0")
    lr = torch.tensor([0.01, 1e6])
    r = rollout(SignSGD(lr), family, 10, seeds=[0, 0])
    assert r.diverged.tolist() == [False, True]
    assert torch.isinf(r.final[1]) and torch.isfinite(r.final[0])
    assert torch.isfinite(r.objective).all()  # frozen at the threshold, never NaN


def test_rollout_rejects_bad_arguments():
    family, _ = task_for("optenv/Quadratic-v0")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        rollout(SignSGD(), family, 0)
    with pytest.raises(ValueError, match="TaskFamily or an Optimizee"):
        rollout(SignSGD(), "optenv/Quadratic-v0", 5)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=g), torch.randn(32, 2, generator=g)


def test_learned_optimizer_matches_the_policy_on_the_flat_vector():
    """Heavy ball through LearnedOptimizer = the same recursion on the flat parameters."""
    model = _model()
    x, y = _data()
    opt = LearnedOptimizer(model.parameters(), HeavyBall(lr=0.05, mu=0.9))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    v = torch.zeros_like(flat)
    reference = _model()
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        reference.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        g = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
        v = 0.9 * v - 0.05 * g
        with torch.no_grad():
            offset = 0
            for p in reference.parameters():
                p.add_(v[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_learned_optimizer_state_dict_resumes_exactly():
    x, y = _data()

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step(loss=loss)

    model_a = _model()
    opt_a = LearnedOptimizer(model_a.parameters(), ObsPolicy())
    train(model_a, opt_a, 10)
    model_b = copy.deepcopy(model_a)
    opt_b = LearnedOptimizer(model_b.parameters(), ObsPolicy())
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    train(model_a, opt_a, 5)
    train(model_b, opt_b, 5)
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_learned_optimizer_closure_and_loss_requirements():
    model = _model()
    x, y = _data()
    opt = LearnedOptimizer(model.parameters(), ObsPolicy())
    with pytest.raises(ValueError, match="needs the loss"):
        opt.step()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = float(closure().detach())
    for _ in range(30):
        opt.step(closure)
    assert float(closure().detach()) < first
    with pytest.raises(ValueError, match="StepPolicy"):
        LearnedOptimizer(model.parameters(), policy="adam")


def test_agent_registry_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown agent 'nope'"):
        optenv.make_agent("nope")
    with pytest.raises(FileNotFoundError, match="no saved agent"):
        optenv.load_agent(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a saved optenv agent"):
        optenv.load_agent(bad)
    with pytest.raises(ValueError, match="module:Class"):
        optenv.register_agent("x", "no_colon")


def test_tune_grid_refinement_never_loses_to_the_coarse_grid():
    from optenv.tuning import tune_grid

    family, _ = task_for("optenv/Quadratic-v0")
    coarse = tune_grid(SignSGD, family, 20, grid=[1e-3, 1e-2, 1e-1], seeds=[0, 1])
    fine = tune_grid(SignSGD, family, 20, grid=[1e-3, 1e-2, 1e-1], seeds=[0, 1], refine=4)
    assert len(fine.grid) == 3 + 4 and fine.grid[:3] == coarse.grid
    assert min(fine.scores) <= min(coarse.scores)
    neighbours = sorted(coarse.grid)
    i = neighbours.index(coarse.best)
    lo, hi = neighbours[max(i - 1, 0)], neighbours[min(i + 1, 2)]
    assert all(lo < v < hi for v in fine.grid[3:])
    with pytest.raises(ValueError, match="refine"):
        tune_grid(SignSGD, family, 5, grid=[0.1], seeds=[0], refine=-1)
