"""OptimizeeEnv / OptimizeeVectorEnv semantics: actions, rewards, divergence, resets."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import optenv
from optenv.problems.quadratic import QuadraticFamily

QUAD = "optenv/Quadratic-v0"


def test_spaces_and_types():
    env = gym.make(QUAD)
    assert env.action_space == gym.spaces.Box(-1, 1, (10,), np.float32)
    assert env.observation_space.shape == (30,) and env.observation_space.dtype == np.float32
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32
    obs2, reward, terminated, truncated, info = env.step(np.zeros(10, np.float32))
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert set(info) >= {"loss", "minibatch_loss", "grad_norm", "diverged", "t"}
    assert obs2 is not obs and not np.shares_memory(obs, obs2)


def test_coords_layout_matches_flat():
    flat, coords = gym.make(QUAD), gym.make(QUAD, layout="coords")
    assert coords.observation_space.shape == (10, 3)
    a, _ = flat.reset(seed=1)
    b, _ = coords.reset(seed=1)
    np.testing.assert_array_equal(a, b.reshape(-1))


def test_reward_is_minus_true_objective_after_the_step():
    env = gym.make(QUAD)
    env.reset(seed=0)
    loop = env.unwrapped.loop
    action = np.full(10, -0.3, np.float32)
    x_next = loop.x + loop.step_scale * torch.from_numpy(action)
    expected = loop.problem.objective(x_next)
    _, reward, _, _, info = env.step(action)
    assert reward == pytest.approx(-float(expected[0]), rel=1e-6)
    assert info["loss"] == pytest.approx(-reward)


def test_minibatch_reward_option():
    env = gym.make("optenv/MLP-Digits-v0", reward="minibatch")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert reward == pytest.approx(-info["minibatch_loss"])
    assert info["minibatch_loss"] != pytest.approx(info["loss"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_raises(bad):
    env = gym.make(QUAD)
    env.reset(seed=0)
    action = np.zeros(10, np.float32)
    action[3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(action)


def test_wrong_action_shape_raises():
    env = gym.make(QUAD)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(9,\), expected \(10,\)"):
        env.unwrapped.step(np.zeros(9, np.float32))


def test_out_of_range_actions_are_clipped():
    a, b = gym.make(QUAD), gym.make(QUAD)
    a.reset(seed=0)
    b.reset(seed=0)
    out_a = a.step(np.full(10, 7.0, np.float32))
    out_b = b.step(np.ones(10, np.float32))
    np.testing.assert_array_equal(out_a[0], out_b[0])
    assert out_a[1] == out_b[1]


def test_divergence_terminates_with_finite_reward():
    env = gym.make(QUAD, step_scale=1e4)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(np.ones(10, np.float32))
    assert terminated and not truncated and info["diverged"]
    assert np.isfinite(reward) and reward < 0
    f0 = float(env.unwrapped.loop.f0[0])
    assert reward == pytest.approx(-1e3 * max(abs(f0), 1.0), rel=1e-6)


def test_overflow_to_inf_is_divergence_not_nan():
    env = gym.make(QUAD, step_scale=1e30)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(np.ones(10, np.float32))
    assert terminated and info["diverged"]
    assert np.isfinite(obs).all() and np.isfinite(reward)


def test_truncated_at_horizon():
    env = gym.make(QUAD)
    env.reset(seed=0)
    for t in range(100):
        _, _, terminated, truncated, _ = env.step(np.zeros(10, np.float32))
        assert not terminated
        assert truncated == (t == 99)


def test_reset_with_given_problem_and_x0():
    problem = QuadraticFamily(dim=10).sample(torch.Generator().manual_seed(9), 1)
    x0 = np.linspace(-1, 1, 10, dtype=np.float32)
    env = gym.make(QUAD)
    _, info = env.reset(seed=0, options={"problem": problem, "x0": x0})
    assert info["loss"] == pytest.approx(float(problem.objective(torch.from_numpy(x0)[None])[0]))
    assert env.unwrapped.loop.problem is problem
    with pytest.raises(ValueError, match=r"x0 has shape \(3,\)"):
        env.reset(options={"x0": np.zeros(3)})
    with pytest.raises(ValueError, match="n=4 parameters, expected n=10"):
        env.reset(options={"problem": QuadraticFamily(dim=4).sample(torch.Generator(), 1)})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"x_0": x0})


def test_step_before_reset_raises():
    env = optenv.OptimizeeEnv("quadratic")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(10, np.float32))


def test_gym_make_kwargs_reach_the_task():
    env = gym.make("optenv/MLP-Digits-v0", hidden=[16])
    assert env.action_space.shape == (48 * 16 + 16 + 16 * 10 + 10,)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['hiden'\]"):
        gym.make("optenv/MLP-Digits-v0", hiden=[16])
    with pytest.raises(ValueError, match="layout must be one of"):
        gym.make(QUAD, layout="grid")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        optenv.OptimizeeEnv("nope")


def test_missing_torchvision_root_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(optenv.data.DATA_ROOT_ENV, raising=False)
    with pytest.raises(ValueError, match="OPTENV_DATA_ROOT"):
        gym.make("optenv/MLP-Torchvision-v0")


def test_user_registration_is_idempotent_and_checked():
    env_id = optenv.register_optimizee("Quad5", "quadratic", horizon=7, dim=5, namespace="optenv-t")
    assert optenv.register_optimizee("Quad5", "quadratic", horizon=7, dim=5,
                                     namespace="optenv-t") == env_id
    with pytest.raises(ValueError, match="already registered"):
        optenv.register_optimizee("Quad5", "quadratic", horizon=8, dim=5, namespace="optenv-t")
    env = gym.make(env_id)
    assert env.action_space.shape == (5,)
    assert env_id in optenv.registered_ids()


# -- vector env --------------------------------------------------------------------------------
def test_vector_env_autoreset_next_step():
    envs = gym.make_vec(QUAD, num_envs=3, max_episode_steps=4)
    assert isinstance(envs, optenv.OptimizeeVectorEnv)
    envs.reset(seed=0)
    zeros = np.zeros((3, 10), np.float32)
    for t in range(4):
        _, reward, terminated, truncated, info = envs.step(zeros)
        assert not terminated.any()
        assert truncated.all() == (t == 3)
    _, reward, terminated, truncated, info = envs.step(zeros)
    np.testing.assert_array_equal(reward, 0.0)
    np.testing.assert_array_equal(info["t"], 0)
    assert not truncated.any()


def test_vector_env_divergence_only_ends_that_instance():
    envs = gym.make_vec(QUAD, num_envs=3, step_scale=1e4)
    envs.reset(seed=0)
    action = np.zeros((3, 10), np.float32)
    action[1] = 1.0
    obs, reward, terminated, _, info = envs.step(action)
    np.testing.assert_array_equal(terminated, [False, True, False])
    assert np.isfinite(obs).all() and np.isfinite(reward).all()
    losses_before = info["loss"].copy()
    obs, reward, terminated, _, info = envs.step(np.zeros((3, 10), np.float32))
    assert reward[1] == 0.0 and info["t"][1] == 0 and info["t"][0] == 2
    np.testing.assert_allclose(info["loss"][[0, 2]], losses_before[[0, 2]], rtol=1e-6)


def test_vector_env_instances_match_single_env_dynamics():
    """Each vector instance follows the same dynamics a single env gives that problem."""
    envs = gym.make_vec(QUAD, num_envs=2)
    envs.reset(seed=0)
    problem = envs.loop.problem
    x0 = envs.loop.x.clone()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (5, 2, 10)).astype(np.float32)
    for a in actions:
        _, rewards, *_ = envs.step(a)
    for i in range(2):
        single = gym.make(QUAD)
        single.reset(seed=0, options={"problem": _select(problem, i), "x0": x0[i].numpy()})
        for a in actions:
            _, reward, *_ = single.step(a[i])
        assert reward == pytest.approx(float(rewards[i]), rel=1e-5)


def _select(problem, i):
    """Instance ``i`` of a batched quadratic, as a one-instance problem."""
    out = QuadraticFamily(dim=10).sample(torch.Generator(), 1)
    for k, v in problem.instance_data.items():
        out.instance_data[k] = v[i : i + 1].clone()
    return out


def test_vector_env_bad_input():
    envs = gym.make_vec(QUAD, num_envs=2)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected \(2, 10\)"):
        envs.step(np.zeros((3, 10), np.float32))
    bad = np.zeros((2, 10), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        envs.step(bad)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        optenv.OptimizeeVectorEnv("quadratic", num_envs=0)


def test_vector_env_reset_mask_restarts_only_masked():
    envs = gym.make_vec(QUAD, num_envs=3)
    envs.reset(seed=0)
    for _ in range(3):
        envs.step(np.full((3, 10), 0.2, np.float32))
    x_before = envs.loop.x.clone()
    _, info = envs.reset(options={"reset_mask": np.array([False, True, False])})
    np.testing.assert_array_equal(info["t"], [3, 0, 3])
    torch.testing.assert_close(envs.loop.x[[0, 2]], x_before[[0, 2]])
    assert not torch.equal(envs.loop.x[1], x_before[1])


def test_vector_env_return_state():
    envs = gym.make_vec(QUAD, num_envs=2, return_state=True)
    _, info = envs.reset(seed=0)
    assert info["state"].shape == (2, 10, 76)
    # the quadratic's gradient is exact: 2 Wᵀ(Wx − y)
    expected = envs.loop.problem.analytic_grad(envs.loop.x)
    np.testing.assert_allclose(info["grad"], expected.numpy(), rtol=1e-4, atol=1e-6)


def test_scale_free_gradient_option_reaches_psi_and_phi():
    """``feature_kwargs``/``state_feature_kwargs`` set Ψ's and Φ's ``grad_scale``."""
    scale = {"grad_scale": "instance_rms"}
    env = gym.make(QUAD, return_state=True, feature_kwargs=scale, state_feature_kwargs=scale)
    obs, info = env.reset(seed=3)
    loop = env.unwrapped.loop
    assert loop.features.grad_scale == loop.state_features.grad_scale == "instance_rms"
    # at t = 0 Ψ's gradient feature and Φ's first one are both ĝ/(|ĝ| + 1), ĝ = g/rms(g)
    g = info["grad"].astype(np.float64)
    g_hat = g / np.sqrt(np.mean(g**2))
    expected = g_hat / (np.abs(g_hat) + 1)
    np.testing.assert_allclose(obs[1::3], expected, rtol=1e-5)
    np.testing.assert_allclose(info["state"][:, 1 + 25], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="state_feature_kwargs needs return_state=True"):
        gym.make(QUAD, state_feature_kwargs=scale)


def test_adagrad_gradient_option_in_the_env_and_both_checkers():
    """``grad_scale="adagrad"``: at t = 0 ĝ = sign(g), so Ψ's and Φ's first gradient
    features are ±½; after a step, ĝ = g₁/√(g₀² + g₁²) per coordinate; both checkers pass."""
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    scale = {"grad_scale": "adagrad"}
    env = gym.make(QUAD, return_state=True, feature_kwargs=scale, state_feature_kwargs=scale)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)
    obs, info = env.reset(seed=4)
    g0 = info["grad"].astype(np.float64)
    np.testing.assert_allclose(obs[1::3], np.sign(g0) / 2, rtol=1e-6)
    np.testing.assert_allclose(info["state"][:, 1 + 25], np.sign(g0) / 2, rtol=1e-6)
    obs, _, _, _, info = env.step(np.full(env.action_space.shape, 0.1, dtype=np.float32))
    g1 = info["grad"].astype(np.float64)
    g_hat = g1 / np.sqrt(g0**2 + g1**2)
    np.testing.assert_allclose(obs[1::3], g_hat / (1 + 1), rtol=1e-5)  # |ĝ₀| = 1
