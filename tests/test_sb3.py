"""stable-baselines3 agents (agents/sb3.py): envs, coordinatewise policies, train/save/load."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from agents.reference import RandomStepAgent, ZeroStepAgent
from agents.sb3 import (
    DEFAULTS,
    CoordinatewiseActorCriticPolicy,
    CoordinatewiseSACPolicy,
    OptimizeeReward,
    PPOAgent,
    PPOConfig,
    PPOMlpAgent,
    SACAgent,
    SB3StepPolicy,
    defaults_for,
    make_sb3_env,
    sac_buffer_size,
)
from optenv.policy import LearnedOptimizer, rollout
from optenv.registry import load_agent, make_agent, task_for

ENV = "optenv/Quadratic-v0"
EVAL_SEEDS = range(1000, 1004)
#: a few hundred steps, small rollouts (tests only)
PPO_TINY = {"n_envs": 2, "n_steps": 100, "batch_size": 100, "n_epochs": 2}
SAC_TINY = {"n_envs": 2, "learning_starts": 100, "batch_size": 32, "hidden": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, Path]]:
    """ppo, sac and ppo-mlp, each trained 400 steps on the 10-dim quadratic and saved."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sb3")
    agents = {}
    for agent, options in ((PPOAgent(seed=0), PPO_TINY), (SACAgent(seed=0), SAC_TINY),
                           (PPOMlpAgent(seed=0), PPO_TINY)):
        out = root / agent.name
        agent.train(ENV, total_timesteps=400, out=out, **options)
        agents[agent.name] = (agent, agent.save(out / "agent.pt"))
    return agents


def _obs(n: int, k: int = 3) -> spaces.Box:
    return spaces.Box(-1e6, 1e6, (n, k), dtype=np.float32)


def _act(n: int) -> spaces.Box:
    return spaces.Box(-1.0, 1.0, (n,), dtype=np.float32)


# -- envs ------------------------------------------------------------------------------------
def test_check_env_on_coords_layout():
    env = gym.make(ENV, layout="coords")
    assert env.observation_space.shape == (10, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True)  # raises on any API violation
    # the only complaint is the 2-d observation, which the custom policies read
    messages = [str(w.message) for w in caught]
    assert all("unconventional shape" in m for m in messages), messages


def test_make_sb3_env_monitor_reports_final_loss():
    env = make_sb3_env(ENV, 2, seed=3, env_kwargs={"layout": "coords", "max_episode_steps": 5})
    assert isinstance(env, DummyVecEnv) and env.observation_space.shape == (10, 3)
    obs = env.reset()
    assert obs.shape == (2, 10, 3) and obs.dtype == np.float32
    for _ in range(5):
        obs, rewards, dones, infos = env.step(np.zeros((2, 10), dtype=np.float32))
    assert dones.all()
    for info in infos:
        # zero steps: x stays at x0, the final loss is f(x0), the log reward 0
        episode = info["episode"]
        assert episode["l"] == 5 and not episode["diverged"]
        assert episode["loss"] == pytest.approx(-episode["r"] / 5, rel=1e-5)
    assert rewards == pytest.approx(np.zeros(2), abs=1e-6)
    env.close()


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_subproc_vec_env_matches_dummy(start_method: str):
    kwargs = {"layout": "coords"}
    sub = make_sb3_env(ENV, 2, seed=7, env_kwargs=kwargs, vec_env="subproc",
                       start_method=start_method)
    dummy = make_sb3_env(ENV, 2, seed=7, env_kwargs=kwargs)
    try:
        assert isinstance(sub, SubprocVecEnv)
        np.testing.assert_array_equal(sub.reset(), dummy.reset())
        action = np.full((2, 10), -0.5, dtype=np.float32)
        got, want = sub.step(action), dummy.step(action)
        np.testing.assert_array_equal(got[0], want[0])
        # rewards: DummyVecEnv stores float32, SubprocVecEnv stacks the workers' floats
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
        np.testing.assert_array_equal(got[2], want[2])
    finally:
        sub.close()
        dummy.close()


def test_log_reward_and_divergence_penalty():
    env = OptimizeeReward(gym.make(ENV, max_episode_steps=10), kind="log")
    _, info = env.reset(seed=0)
    f0 = info["loss"]
    _, reward, _, _, info = env.step(np.full(10, 0.3, dtype=np.float32))
    assert reward == pytest.approx(math.log(f0) - math.log(info["loss"]), rel=1e-5)
    # a huge step diverges at t = 1: charged for the 10 steps left, as if stuck there
    env = OptimizeeReward(gym.make(ENV, max_episode_steps=10, step_scale=1e4), kind="objective")
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.ones(10, dtype=np.float32))
    assert terminated and info["diverged"]
    threshold = 1e3 * max(f0, 1.0)
    assert reward == pytest.approx(-10 * threshold, rel=1e-4)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'sometimes'"):
        make_sb3_env(ENV, 1, vec_env="sometimes")
    with pytest.raises(ValueError, match="n_envs"):
        make_sb3_env(ENV, 0)
    with pytest.raises(ValueError, match="'squared'"):
        PPOAgent().train(ENV, total_timesteps=10, reward="squared")
    with pytest.raises(ValueError, match="layout"):
        PPOAgent().train(ENV, total_timesteps=10, env_kwargs={"layout": "flat"})
    with pytest.raises(ValueError, match=r"ppo:DIR/agent.pt"):
        make_agent("ppo").train(ENV, steps=100, seeds=(0, 1, 2), grid=None, metric="final")
    with pytest.raises(ValueError, match="untrained"):
        make_agent("sac").policy()
    with pytest.raises(ValueError, match="layout='coords'"):
        CoordinatewiseActorCriticPolicy(spaces.Box(-1, 1, (30,)), _act(10), lambda _: 1e-3)


def test_defaults_live_in_one_table():
    assert defaults_for("ppo", "optenv/MLP-Digits-v0") is DEFAULTS["ppo"]["optenv/MLP-Digits-v0"]
    assert defaults_for("ppo", "optenv/LSTM-Sine-v0") == PPOConfig()
    with pytest.raises(ValueError, match="'dqn'"):
        defaults_for("dqn", ENV)
    # SAC's buffer is sized by memory: the 2842-parameter MLP gets far fewer transitions
    small = sac_buffer_size(_obs(10), _act(10), 256 * 2**20)
    large = sac_buffer_size(_obs(2842), _act(2842), 256 * 2**20)
    assert small > 200 * large and 3000 < large < 4000
    assert large * 4 * (2 * 2842 * 3 + 2842) <= 256 * 2**20


# -- coordinatewise policies -----------------------------------------------------------------
def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("policy_class", [CoordinatewiseActorCriticPolicy,
                                          CoordinatewiseSACPolicy])
def test_parameter_count_does_not_depend_on_n(policy_class: type):
    counts = {n: _count(policy_class(_obs(n), _act(n), lambda _: 1e-3)) for n in (10, 50, 500)}
    assert len(set(counts.values())) == 1, counts
    # while SB3's MlpPolicy grows with n
    from stable_baselines3.common.policies import ActorCriticPolicy

    mlp = {n: _count(ActorCriticPolicy(spaces.Box(-1, 1, (3 * n,)), _act(n), lambda _: 1e-3))
           for n in (10, 50)}
    assert mlp[50] > mlp[10]


def test_coordinatewise_policy_is_permutation_equivariant():
    torch.manual_seed(0)
    policy = CoordinatewiseActorCriticPolicy(_obs(10), _act(10), lambda _: 1e-3)
    obs = torch.randn(4, 10, 3)
    perm = torch.randperm(10)
    actions, values, _ = policy(obs, deterministic=True)
    actions_p, values_p, _ = policy(obs[:, perm], deterministic=True)
    torch.testing.assert_close(actions_p, actions[:, perm])
    torch.testing.assert_close(values_p, values)  # pooled value: invariant
    assert policy.log_std.shape == (1,)


# -- agents ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ppo", "sac"])
def test_smoke_run_trains_and_records(trained: dict, name: str):
    agent, path = trained[name]
    out = path.parent
    assert agent.training_cost["env_steps"] == 400 and agent.training_cost["wall_s"] > 0
    assert agent.summary["final"]["timesteps"] == 400
    assert math.isfinite(agent.summary["final"]["final_loss_median"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["timesteps"] <= 400
    assert json.loads((out / "checkpoint.json").read_text())["num_timesteps"] == 400
    family, horizon = task_for(ENV)
    run = rollout(agent.policy(), family, horizon, seeds=EVAL_SEEDS)
    assert torch.isfinite(run.final).all()
    # the policy moved the iterate, by at most step_scale per coordinate and step
    steps = run.x - rollout(SB3StepPolicy(agent.model.policy, features="li_malik_obs",
                                          feature_kwargs={}, step_scale=0.0, layout="coords"),
                            family, horizon, seeds=EVAL_SEEDS).x
    assert 0 < steps.abs().max() <= 0.1 * horizon + 1e-4


@pytest.mark.parametrize("name", ["ppo", "sac", "ppo-mlp"])
def test_save_load_round_trip_gives_identical_actions(trained: dict, name: str):
    agent, path = trained[name]
    loaded = load_agent(path)
    assert type(loaded) is type(agent) and loaded.training_cost == agent.training_cost
    torch.manual_seed(0)
    features = torch.randn(5, 10, 3)
    want, _ = agent.policy().step(features, agent.policy().reset(10, (), 5))
    got, _ = loaded.policy().step(features, loaded.policy().reset(10, (), 5))
    assert torch.equal(got, want) and want.abs().max() > 0
    for a, b in zip(agent.model.policy.state_dict().values(),
                    loaded.model.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_training_is_deterministic_given_the_seed(trained: dict):
    again = PPOAgent(seed=0)
    again.train(ENV, total_timesteps=400, **PPO_TINY)
    first = trained["ppo"][0].model.policy.state_dict()
    for key, value in again.model.policy.state_dict().items():
        assert torch.equal(value, first[key]), key


def test_policy_trained_at_10_dims_runs_at_50(trained: dict):
    for name in ("ppo", "sac"):
        agent, _ = trained[name]
        family, horizon = task_for(ENV, dim=50)
        run = rollout(agent.policy(), family, horizon, seeds=EVAL_SEEDS)
        assert run.x.shape == (4, 50) and torch.isfinite(run.final).all()
        # and on the 50-dim env directly, through SB3's own policy
        env = gym.make(ENV, dim=50, layout="coords")
        obs, _ = env.reset(seed=0)
        action = agent.model.policy._predict(torch.as_tensor(obs)[None], deterministic=True)
        assert action.shape == (1, 50)
    mlp, _ = trained["ppo-mlp"]
    with pytest.raises(ValueError, match="n=10"):
        rollout(mlp.policy(), task_for(ENV, dim=50)[0], 5)


def test_learned_optimizer_runs_the_sb3_policy(trained: dict):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = LearnedOptimizer(model.parameters(), trained["ppo"][0].policy())
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(loss=loss)
    moved = [(p - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True)]
    assert all(0 < m <= 5 * 0.1 + 1e-6 for m in moved)


def test_cli_train_and_resume(tmp_path: Path):
    from optenv.cli import main

    out = tmp_path / "run"
    common = ["train", "ppo", "--env", ENV, "--out", str(out), "--quiet",
              "--set", "n_envs=2", "--set", "n_steps=100", "--set", "batch_size=100",
              "--set", "n_epochs=1"]
    assert main([*common, "--timesteps", "200"]) == 0
    first = load_agent(out / "agent.pt")
    assert first.summary["final"]["timesteps"] == 200
    assert (out / "metrics.jsonl").is_file() and (out / "config.json").is_file()
    assert main([*common, "--timesteps", "400", "--resume"]) == 0
    resumed = json.loads((out / "checkpoint.json").read_text())
    assert resumed["num_timesteps"] == 400
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["timesteps"] for r in records] == [200, 400]  # appended, not overwritten
    assert load_agent(out / "agent.pt").summary["final"]["timesteps"] == 400


def test_sac_resume_restores_replay_buffer(tmp_path: Path):
    first = SACAgent(seed=0)
    first.train(ENV, total_timesteps=200, out=tmp_path, **SAC_TINY)
    # buffer sized by what the run collects (200), not SB3's default million
    assert first.model.replay_buffer.buffer_size * 2 == 200
    resumed = SACAgent(seed=0)
    resumed.train(ENV, total_timesteps=220, out=tmp_path, resume=True, **SAC_TINY)
    assert resumed.model.num_timesteps == 220
    # the restored buffer was full; 20 new transitions (10 per env) wrapped around it
    buffer = resumed.model.replay_buffer
    assert buffer.full and buffer.pos == 10
    with pytest.raises(ValueError, match="checkpoint"):
        SACAgent().train(ENV, total_timesteps=10, out=tmp_path / "empty", resume=True)


def test_example_runs_tiny(tmp_path: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import sb3_ppo
    finally:
        sys.path.pop(0)
    medians = sb3_ppo.main(["--timesteps", "200", "--n-envs", "2", "--seeds", "2",
                            "--out", str(tmp_path), "--quiet"])
    assert set(medians) == {"adam", "zero", "random", "ppo"}
    assert all(math.isfinite(v) and v >= 0 for v in medians.values())
    assert (tmp_path / "training.png").stat().st_size > 0
    assert (tmp_path / "bench" / "optenv_Quadratic-v0.png").is_file()
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert results["envs"][ENV]["agents"]["ppo"]["source"] == "path"
    # zero steps leave every seed at f(x0)
    zero = results["envs"][ENV]["agents"]["zero"]["curve"]["median"]
    assert zero[0] == zero[-1] > 1


def test_reference_agents(tmp_path: Path):
    family, horizon = task_for(ENV)
    for cls in (ZeroStepAgent, RandomStepAgent):
        agent = cls(seed=1)
        agent.train(ENV, steps=horizon, seeds=(0, 1, 2), grid=None, metric="final")
        run = rollout(agent.policy(), family, 3, seeds=EVAL_SEEDS)
        again = rollout(load_agent(agent.save(tmp_path / f"{agent.name}.pt")).policy(), family,
                        3, seeds=EVAL_SEEDS)
        assert torch.equal(run.objective, again.objective)  # seeded: reproducible
        moved = (run.x - rollout(ZeroStepAgent().policy(), family, 3, seeds=EVAL_SEEDS).x).abs()
        assert (moved.max() > 0) == agent.random and moved.max() <= 0.3 + 1e-6
