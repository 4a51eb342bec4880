"""Metz et al. (2019)'s learned optimizer: the policy, the outer trainer, the agent, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from agents.estimators import antithetic_noise, antithetic_thetas
from agents.metz import (
    MetzAgent,
    MetzConfig,
    MetzPolicy,
    MetzTrainer,
    _Antithetic,
    init_weights,
    num_weights,
    truncation_length,
)
from agents.unroll import start, unroll
from optenv.cli import main as cli_main
from optenv.policy import LearnedOptimizer, rollout
from optenv.problems.base import Optimizee, groups_from_shapes, unflatten
from optenv.problems.quadratic import QuadraticFamily
from optenv.registry import load_agent

N_IN = 2 + 5 + 11  # gradient, parameter, 5 momentum averages, 11 time features


def _policy(seed: int = 0, **kwargs) -> MetzPolicy:
    return MetzPolicy(init_weights(N_IN, 32, torch.Generator().manual_seed(seed)), **kwargs)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(3, 5)
        self.fc1 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(torch.tanh(self.fc0(x)))


class _NetProblem(Optimizee):
    """The same network as a (B = 1) optenv problem on fixed data, parameters flat."""

    def __init__(self, net: _Net, x: torch.Tensor, y: torch.Tensor) -> None:
        shapes = {f"p{i}": tuple(p.shape) for i, p in enumerate(net.parameters())}
        super().__init__(groups_from_shapes(shapes), 1)
        self.net, self.x, self.y = net, x, y

    def init(self, generator):
        return torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])[None]

    def sample_batch(self, generator):
        return None

    def loss(self, params, batch=None):
        w0, b0, w1, b1 = (t[0] for t in unflatten(params, self.groups).values())
        out = torch.tanh(self.x @ w0.T + b0) @ w1.T + b1  # _Net.forward, functionally
        return nn.functional.mse_loss(out, self.y)[None]

    def objective(self, params):
        return self.loss(params)


def test_learned_optimizer_reproduces_rollout():
    torch.manual_seed(0)
    net = _Net()
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    problem = _NetProblem(net, x, y)
    policy = _policy(1)
    steps = 25
    x0 = problem.init(None).clone()
    run = rollout(policy, problem, steps, x0=x0)
    opt = LearnedOptimizer(net.parameters(), policy)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(flat, run.x[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(losses), run.minibatch_loss[0, :steps],
                               rtol=1e-5, atol=1e-6)
    assert (flat - x0[0]).abs().max() > 1e-2  # it did move


def test_per_instance_weights_match_shared_weights_row_by_row():
    policy = _policy(2)
    P = num_weights(N_IN, 32)
    assert policy.weights.shape == (P,)
    B, n = 3, 7
    groups = groups_from_shapes({"w": (2, 3), "b": (1,)})
    state = policy.reset(n, groups, B)
    feats = torch.randn(B, n, 7, generator=torch.Generator().manual_seed(0))
    shared, _ = policy.step(feats, state)
    stacked = policy.with_weights(policy.weights.expand(B, P).clone())
    per_instance, new_state = stacked.step(feats, state)
    torch.testing.assert_close(per_instance, shared)
    assert torch.equal(new_state["t"], torch.ones(B))
    other = policy.weights.expand(B, P).clone()
    other[1] = init_weights(N_IN, 32, torch.Generator().manual_seed(9))
    changed, _ = policy.with_weights(other).step(feats, state)
    torch.testing.assert_close(changed[[0, 2]], shared[[0, 2]])
    assert not torch.allclose(changed[1], shared[1])


def test_per_tensor_normalization_makes_the_step_scale_invariant_per_tensor():
    """Inputs are divided by their RMS over each tensor (appendix D): scaling one tensor's
    gradients, parameters and momenta by 1000 leaves the step unchanged."""
    policy = _policy(3)
    groups = groups_from_shapes({"w": (2, 3), "b": (4,)})
    state = policy.reset(10, groups, 1)
    feats = torch.randn(1, 10, 7, generator=torch.Generator().manual_seed(1))
    scaled = feats.clone()
    scaled[:, :6] *= 1000.0
    torch.testing.assert_close(policy.step(scaled, state)[0], policy.step(feats, state)[0],
                               rtol=1e-4, atol=1e-6)


def test_batched_es_unroll_gives_per_sample_gradients():
    """S antithetic samples x tasks run as one unroll; ∇ of the summed meta-loss w.r.t. the
    (S, P) weights is each sample's own gradient (checked against a separate unroll)."""
    family = QuadraticFamily(dim=4)
    half = family.sample(torch.Generator().manual_seed(0), 2)
    problem = _Antithetic(half)
    policy = _policy(4)
    P = policy.weights.shape[0]
    noise = antithetic_noise(2, P, torch.Generator().manual_seed(1))
    thetas = antithetic_thetas(policy.weights, noise, 0.1).requires_grad_(True)
    x0 = problem.init(torch.Generator().manual_seed(2))
    carry = start(policy, problem, x0, torch.Generator().manual_seed(3))
    res = unroll(policy.with_weights(thetas), problem, carry, 5,
                 generator=torch.Generator().manual_seed(3))
    (grads,) = torch.autograd.grad(res.meta_loss.sum(), thetas)
    # member 2 (the − member of pair 0) alone, with its own weights, on its own problem
    alone = problem.select(torch.tensor([2]))
    w2 = thetas[2].detach().clone().requires_grad_(True)
    c2 = start(policy, alone, x0[2:3], torch.Generator().manual_seed(3))
    r2 = unroll(policy.with_weights(w2), alone, c2, 5, generator=torch.Generator().manual_seed(3))
    (g2,) = torch.autograd.grad(r2.meta_loss.sum(), w2)
    torch.testing.assert_close(grads[2], g2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.meta_loss[2], r2.meta_loss[0])


def test_antithetic_members_share_task_init_and_minibatches():
    from optenv.problems.regression import LogisticRegressionFamily

    family = LogisticRegressionFamily(batch_size=8)
    problem = _Antithetic(family.sample(torch.Generator().manual_seed(0), 3))
    x0 = problem.init(torch.Generator().manual_seed(1))
    assert torch.equal(x0[:3], x0[3:])
    batch = problem.sample_batch(torch.Generator().manual_seed(2))
    assert torch.equal(batch[:3], batch[3:])
    loss = problem.loss(x0, batch)
    torch.testing.assert_close(loss[:3], loss[3:])


def test_truncation_curriculum_grows_linearly_with_jitter():
    cfg = MetzConfig(iterations=100, trunc_min=10, trunc_max=110, jitter=0.2)
    gen = torch.Generator().manual_seed(0)
    early = [truncation_length(0, cfg, gen) for _ in range(200)]
    mid = [truncation_length(50, cfg, gen) for _ in range(200)]
    late = [truncation_length(500, cfg, gen) for _ in range(200)]
    assert 8 <= min(early) and max(early) <= 12
    assert 48 <= min(mid) and max(mid) <= 72 and len(set(mid)) > 10
    assert 88 <= min(late) and max(late) <= 132
    assert abs(sum(mid) / 200 - 60) < 2


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="'adam'"):
        MetzConfig(estimator="adam")
    with pytest.raises(ValueError, match="trunc_max"):
        MetzConfig(trunc_min=10, trunc_max=5)
    with pytest.raises(ValueError, match="outer_loss"):
        MetzConfig(outer_loss="test")
    with pytest.raises(ValueError, match="weights must be"):
        MetzPolicy(torch.zeros(5))
    with pytest.raises(TypeError, match="unknown metz option"):
        MetzAgent().train("optenv/Quadratic-v0", iterations=1, bogus=1)
    for kwargs, match in (({"pes": "no"}, "pes must be True or False, got 'no'"),
                          ({"decays": [2.0]}, "decays must be"),
                          ({"timescales": [0.0]}, "timescales must be"),
                          ({"sigma": math.inf}, "sigma must be a finite number > 0"),
                          ({"seed": True}, "seed must be an int")):
        with pytest.raises(ValueError, match=match):
            MetzConfig(**kwargs)
    with pytest.raises(ValueError, match="resume=True needs the run folder"):
        MetzTrainer(MetzConfig(iterations=1, horizon=4, trunc_min=2, trunc_max=2),
                    QuadraticFamily(dim=3), 4, resume=True)


def test_episode_start_is_not_a_replay_of_the_task_draw():
    """x0 continues the generator the tasks came from: on quadratics it used to equal
    init_std times the first entries of W (the same seed drawn twice)."""
    cfg = MetzConfig(iterations=1, pairs=2, horizon=4, trunc_min=2, trunc_max=2)
    family = QuadraticFamily(dim=4)
    trainer = MetzTrainer(cfg, family, 4)
    trainer._new_episode()
    seed = trainer._episode_seed(trainer.episode)
    gen = torch.Generator().manual_seed(seed)
    expected = family.sample(gen, 2).init(gen)  # the stream after the task draw
    torch.testing.assert_close(trainer.carry.x, expected.repeat(2, 1), rtol=0, atol=0)
    replay = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed))
    assert not torch.allclose(trainer.carry.x[:2], replay * family.init_std)


@pytest.mark.parametrize("estimator", ["merged", "rp", "es"])
def test_training_on_quadratics_improves_the_optimizer(estimator):
    cfg = MetzConfig(estimator=estimator, iterations=40, pairs=4, trunc_min=5, trunc_max=10,
                     horizon=20, eval_every=40, eval_tasks=8, outer_lr=1e-2, seed=0,
                     log_loss=False)
    family = QuadraticFamily(dim=4, data_dist="uniform")
    trainer = MetzTrainer(cfg, family, 20)
    before, _ = trainer.validate()
    history = trainer.run()
    assert len(history) == 40 and all(math.isfinite(r["outer_loss"]) for r in history)
    assert {"truncation", "var_rp", "var_es", "w_rp", "val_final"} <= set(history[-1])
    assert trainer.best_score < 0.75 * before
    if estimator == "merged":
        assert 0.0 < sum(r["w_rp"] for r in history) / 40 <= 1.0
    else:
        assert all(r["w_rp"] == (1.0 if estimator == "rp" else 0.0) for r in history)


def test_pes_option_runs_and_keeps_members_apart(monkeypatch):
    import agents.estimators as est

    drawn = []  # every truncation's antithetic noise, as the trainer drew it
    draw = est.antithetic_noise
    monkeypatch.setattr(est, "antithetic_noise", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    cfg = MetzConfig(estimator="es", pes=True, iterations=6, pairs=4, trunc_min=3,
                     trunc_max=3, jitter=0.0, horizon=9, eval_every=6, eval_tasks=2)
    trainer = MetzTrainer(cfg, QuadraticFamily(dim=3), 9)
    trainer.step()
    x = trainer.carry.x
    assert not torch.equal(x[:4], x[4:])  # PES: each member keeps its own state
    torch.testing.assert_close(trainer.pes_noise, drawn[0], rtol=0, atol=0)
    trainer.step()
    trainer.step()  # the run ends here (3 x 3 = 9 steps): ξ summed the three draws...
    torch.testing.assert_close(trainer.pes_noise, drawn[0] + drawn[1] + drawn[2])
    trainer.step()  # ...so this one restarts: accumulated noise is fresh noise again
    assert trainer.episode == 1
    torch.testing.assert_close(trainer.pes_noise, drawn[3], rtol=0, atol=0)
    cfg_tes = MetzConfig(**{**cfg.to_dict(), "pes": False})
    t2 = MetzTrainer(cfg_tes, QuadraticFamily(dim=3), 9)
    t2.step()
    assert torch.equal(t2.carry.x[:4], t2.carry.x[4:])  # truncated ES: pairs re-synced


def test_save_load_round_trip(tmp_path):
    agent = MetzAgent(seed=3, hidden=16, pairs=4)
    agent.train("optenv/Quadratic-v0", iterations=3, trunc_min=2, trunc_max=3,
                eval_every=3, eval_tasks=2, env_kwargs={"dim": 3})
    path = agent.save(tmp_path / "metz.pt")
    loaded = load_agent(path)
    assert isinstance(loaded, MetzAgent) and loaded.config() == agent.config()
    assert torch.equal(loaded.policy().weights, agent.policy().weights)
    assert loaded.policy().config() == agent.policy().config()
    assert loaded.training_cost["env_steps"] == agent.training_cost["env_steps"] > 0
    # the bench's table shows what θ was trained with, also after loading
    shown = loaded.hyperparams()
    assert shown == agent.hyperparams()
    assert (shown["env"], shown["env_kwargs"], shown["pairs"], shown["iterations"],
            shown["hidden"]) == ("optenv/Quadratic-v0", {"dim": 3}, 4, 3, 16)
    assert MetzAgent(seed=3).hyperparams() == {"seed": 3}  # untrained: its config
    family = QuadraticFamily(dim=3)
    a = rollout(agent.policy(), family, 10, seeds=[7, 8])
    b = rollout(loaded.policy(), family, 10, seeds=[7, 8])
    assert torch.equal(a.objective, b.objective)


def test_cli_train_resume_matches_uninterrupted(tmp_path):
    common = ["train", "metz", "--env", "optenv/Quadratic-v0", "--env-kwargs", '{"dim": 3}',
              "--set", "pairs=4", "--set", "trunc_min=2", "--set", "trunc_max=4",
              "--set", "eval_every=2", "--set", "eval_tasks=2", "--quiet"]
    assert cli_main([*common, "--iterations", "3", "--out", str(tmp_path / "a")]) == 0
    assert cli_main([*common, "--iterations", "6", "--out", str(tmp_path / "a"),
                     "--resume"]) == 0
    assert cli_main([*common, "--iterations", "6", "--out", str(tmp_path / "b")]) == 0
    ra, rb = ([json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text()
               .splitlines()] for d in ("a", "b"))
    assert [r["iteration"] for r in ra] == list(range(1, 7))
    drop = {"wall_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rb]
    a, b = load_agent(tmp_path / "a" / "agent.pt"), load_agent(tmp_path / "b" / "agent.pt")
    assert torch.equal(a.policy().weights, b.policy().weights)
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 6


def test_outer_loss_options(monkeypatch):
    """``log_loss`` averages log(ℓ + floor) over the truncation; ``outer_loss="valid"``
    needs a held-out split (a quadratic has none: a clear error)."""
    import agents.metz as metz

    steps = []  # each truncation's per-step outer losses (B, K)
    run = metz.unroll
    monkeypatch.setattr(metz, "unroll", lambda *a, **k: steps.append(run(*a, **k)) or steps[-1])
    base = dict(iterations=2, pairs=4, trunc_min=3, trunc_max=3, jitter=0.0, horizon=6,
                eval_every=2, eval_tasks=2)
    plain = MetzTrainer(MetzConfig(**base, log_loss=False), QuadraticFamily(dim=3), 6)
    logged = MetzTrainer(MetzConfig(**base, log_loss=True), QuadraticFamily(dim=3), 6)
    r_plain, r_log = plain.step(), logged.step()
    ell, logs = steps[0].losses, steps[1].losses  # same tasks, noise, start: same iterates
    torch.testing.assert_close(logs, (ell.clamp_min(0) + logged.config.log_floor).log())
    assert r_plain["outer_loss"] == pytest.approx(float(ell.mean()))
    assert r_log["outer_loss"] == pytest.approx(float(logs.mean()))
    assert r_log["outer_loss"] < math.log(r_plain["outer_loss"])  # Jensen: mean log ≤ log mean
    with pytest.raises(ValueError, match="held-out split"):
        MetzTrainer(MetzConfig(**base, outer_loss="valid"), QuadraticFamily(dim=3), 6).step()


def test_per_task_tuned_adam_comparison():
    """Adam tuned per task on a grid: the policy Adam(lr=0.1) ties it when the grid is
    {0.1} and loses (or ties) when the grid also holds other values."""
    from agents.baselines import AdamPolicy
    from agents.metz import compare_with_tuned_adam

    family = QuadraticFamily(dim=3)
    same = compare_with_tuned_adam(AdamPolicy(lr=0.1), family, [1, 2, 3], 15, grid=[0.1])
    torch.testing.assert_close(torch.tensor(same["policy_final"]),
                               torch.tensor(same["adam_final"]))
    assert same["wins"] == 0 and same["adam_lr"] == [0.1] * 3
    wider = compare_with_tuned_adam(AdamPolicy(lr=0.1), family, [1, 2, 3], 15,
                                    grid=[0.01, 0.1, 0.3])
    assert all(a <= p * (1 + 1e-5)
               for a, p in zip(wider["adam_final"], wider["policy_final"], strict=True))
    assert wider["wins"] == 0
