"""Every registered optimizee env (built-in and user-registered) against Gymnasium and SB3."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import optenv
from tests.conftest import USER_ENV_ID

ENV_IDS = optenv.registered_ids()
SEEDS = (0, 1)


def test_registry_has_the_suite_and_user_envs():
    expected = {
        "optenv/Quadratic-v0", "optenv/LogisticRegression-v0", "optenv/RobustLinearRegression-v0",
        "optenv/MLP-Digits-v0", "optenv/MLP-Digits-Wide-v0", "optenv/MLP-MNIST1D-v0",
        "optenv/MLP-Sigmoid-Digits-v0", "optenv/CNN-Digits-v0", "optenv/LSTM-Sine-v0",
        "optenv/MLP-Torchvision-v0", USER_ENV_ID,
    }
    assert expected <= set(ENV_IDS)


def _rollout(env: gym.Env, seed: int, steps: int) -> list:
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    record = [(obs, info["loss"])]
    for _ in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        record.append((obs, reward, terminated, truncated, info["loss"], info["minibatch_loss"]))
        if terminated or truncated:
            break
    return record


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_check_env(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_check_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env.unwrapped, warn=True)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeded_determinism_over_50_steps(env_id):
    a = _rollout(gym.make(env_id), seed=123, steps=50)
    b = _rollout(gym.make(env_id), seed=123, steps=50)
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(x, y)
    c = _rollout(gym.make(env_id), seed=124, steps=3)
    assert not np.array_equal(a[1][0], c[1][0]) or a[0][1] != c[0][1]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_round_trip_continues_identically(env_id):
    env = gym.make(env_id)
    env.reset(seed=5)
    action = np.full(env.action_space.shape, 0.1, dtype=np.float32)
    env.step(action)
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(3):
        out_a = env.step(action)
        out_b = clone.step(action)
        np.testing.assert_array_equal(out_a[0], out_b[0])
        assert out_a[1:4] == out_b[1:4]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spec_to_json_round_trip(env_id):
    spec = gym.spec(env_id)
    restored = EnvSpec.from_json(spec.to_json())
    assert restored.id == spec.id and restored.kwargs == spec.kwargs
    assert restored.vector_entry_point == "optenv.vector:OptimizeeVectorEnv"
    env = gym.make(restored)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("mode", ["sync", "async", "vector_entry_point"])
def test_make_vec(env_id, mode):
    vector_kwargs = {"context": "spawn"} if mode == "async" else {}
    kwargs = {"vector_kwargs": vector_kwargs} if vector_kwargs else {}
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, **kwargs)
    try:
        obs, info = envs.reset(seed=3)
        assert envs.observation_space.contains(obs)
        assert obs.dtype == np.float32 and obs.shape[0] == 2
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
            assert envs.observation_space.contains(obs)
            assert reward.shape == (2,) and np.isfinite(reward).all()
            assert terminated.dtype == np.bool_ and truncated.dtype == np.bool_
            assert np.isfinite(info["loss"]).all()
    finally:
        envs.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_ppo_smoke_64_steps(env_id):
    from stable_baselines3 import PPO

    env = gym.make(env_id)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert action.shape == env.action_space.shape


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_random_actions_never_give_non_finite_outputs(env_id):
    env = gym.make(env_id, max_episode_steps=10)
    n = env.action_space.shape[0]

    @settings(max_examples=8, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**31 - 1),
           scale=st.sampled_from([0.0, 1e-3, 1.0, 1e3, 1e30]),
           pattern=st.sampled_from(["uniform", "ones", "alternating"]))
    def check(seed, scale, pattern):
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        assert np.isfinite(obs).all()
        for t in range(10):
            if pattern == "uniform":
                action = rng.uniform(-1, 1, n)
            elif pattern == "ones":
                action = np.ones(n)
            else:
                action = np.full(n, (-1.0) ** t)
            obs, reward, terminated, truncated, _ = env.step((scale * action).astype(np.float32))
            assert np.isfinite(obs).all() and env.observation_space.contains(obs)
            assert np.isfinite(reward) and isinstance(reward, float)
            if terminated or truncated:
                break

    check()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_return_state_gives_x_and_phi_per_coordinate(env_id):
    env = gym.make(env_id, return_state=True)
    _, info = env.reset(seed=0)
    n = env.action_space.shape[0]
    assert info["state"].shape == (n, 76) and info["state"].dtype == np.float32
    x0 = info["state"][:, 0].copy()
    action = np.full(n, 0.5, dtype=np.float32)
    _, _, _, _, info = env.step(action)
    np.testing.assert_allclose(info["state"][:, 0], x0 + 0.5 * env.unwrapped.loop.step_scale,
                               rtol=1e-6, atol=1e-6)
    assert info["grad"].shape == (n,) and info["grad"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(info["grad"]), info["grad_norm"], rtol=1e-4)
