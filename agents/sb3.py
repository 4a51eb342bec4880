"""stable-baselines3 agents on optenv envs: PPO and SAC with coordinatewise policies.

An optimizer env has one action per optimizee parameter. SB3's ``MlpPolicy`` reads the
flat observation and outputs all ``n`` actions at once, so its size grows with the
optimizee and it cannot run on an optimizee of another size. An update rule acts per
coordinate, as every optimizer does (Li & Malik 2017, §3.6; Andrychowicz et al. 2016,
§2.1, "coordinatewise"): the policies here read the env's ``layout="coords"``
observation ``(n, k)`` and

* :class:`CoordinatewiseActorCriticPolicy` (PPO): one small MLP maps each coordinate's
  ``k`` features to that coordinate's action mean; one shared scalar log-std; the value
  function reads a permutation-invariant pooling (mean and max) over per-coordinate
  embeddings;
* :class:`CoordinatewiseSACPolicy` (SAC): the actor is the same per-coordinate MLP (mean
  and log-std per coordinate); each critic Q(s, a) embeds every coordinate's
  (features, action) pair, pools mean and max over coordinates and reads a scalar.

Parameter counts do not depend on ``n``; a policy trained at ``n = 10`` runs at
``n = 50``. Both are SB3 policies built through SB3's extension points (features
extractor, ``_build_mlp_extractor``, ``make_actor`` / ``make_critic``), so PPO and SAC
train them unchanged.

The registered agents ``ppo`` (:class:`PPOAgent`), ``ppo-mlp`` (:class:`PPOMlpAgent`,
SB3's ``MlpPolicy`` on the flat layout) and ``sac`` (:class:`SACAgent`) wrap training,
SB3's zip format (embedded in ``agent.pt`` as a uint8 tensor) and a :class:`StepPolicy`
(:class:`SB3StepPolicy`: the deterministic action times the env's ``step_scale``) that
``optenv bench``, :func:`optenv.policy.rollout` and ``LearnedOptimizer`` run. Training
defaults per env live in one place, :data:`DEFAULTS`.

``python -m agents.sb3 speed --env optenv/MLP-Digits-v0`` measures training timesteps
per second of the coordinatewise policy against ``MlpPolicy`` in one run.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import HumanOutputFormat, KVWriter, Logger
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel, ContinuousCritic
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    create_mlp,
    get_actor_critic_arch,
)
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.sac.policies import Actor, SACPolicy
from torch import Tensor, nn

import optenv  # noqa: F401  (registers the optenv/ ids, also in spawned workers)
from agents.reference import LOOP_DEFAULTS
from optenv.policy import Agent, PolicyState, StepPolicy
from optenv.problems.base import CoordinateGroup
from optenv.runio import append_jsonl, atomic_write_bytes, atomic_write_json, read_json

__all__ = [
    "DEFAULTS",
    "CoordinateFeatures",
    "CoordinatewiseActor",
    "CoordinatewiseActorCriticPolicy",
    "CoordinatewiseCritic",
    "CoordinatewiseMlpExtractor",
    "CoordinatewiseSACPolicy",
    "OptimizeeReward",
    "PPOAgent",
    "PPOConfig",
    "PPOMlpAgent",
    "SACAgent",
    "SACConfig",
    "SB3StepPolicy",
    "defaults_for",
    "make_sb3_env",
    "sac_buffer_size",
]

REWARDS = ("log", "objective")
VEC_ENVS = ("dummy", "subproc")
#: what ``optenv bench`` passes when it tunes a baseline; an RL agent is trained instead
_BENCH_KWARGS = frozenset({"steps", "seeds", "grid", "metric"})
#: defaults of the env options (features, step_scale, ...) of optenv.env.build_loop
_LOOP_DEFAULTS = LOOP_DEFAULTS


# ------------------------------------------------------------------------------ defaults
@dataclass(frozen=True)
class PPOConfig:
    """Training options of :class:`PPOAgent` / :class:`PPOMlpAgent` (SB3 ``PPO`` names).

    ``reward`` is the :class:`OptimizeeReward` kind, ``hidden`` the width of the two
    hidden layers of each network, ``checkpoint_every`` the timesteps between
    checkpoints of a run folder.
    """

    total_timesteps: int = 100_000
    n_envs: int = 8
    reward: str = "log"
    hidden: int = 32
    log_std_init: float = -1.0
    n_steps: int = 100
    batch_size: int = 200
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    checkpoint_every: int = 10_000


@dataclass(frozen=True)
class SACConfig:
    """Training options of :class:`SACAgent` (SB3 ``SAC`` names).

    The replay buffer holds ``min(max_buffer_size, total_timesteps, buffer_bytes //
    bytes per transition)`` transitions (:func:`sac_buffer_size`): on a 2842-parameter
    MLP one transition is ~80 kB, so a fixed count would not fit in memory. A run
    folder's checkpoint includes the buffer (SB3 pickles all of it), up to ``buffer_bytes``.
    """

    total_timesteps: int = 20_000
    n_envs: int = 4
    reward: str = "log"
    hidden: int = 64
    buffer_bytes: int = 256 * 2**20
    max_buffer_size: int = 1_000_000
    learning_starts: int = 1_000
    batch_size: int = 256
    learning_rate: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    train_freq: int = 1
    gradient_steps: int = 1
    ent_coef: str | float = "auto"
    checkpoint_every: int = 10_000


#: per-algorithm defaults: ``"*"`` for any env, then env-specific entries (the only place)
DEFAULTS: dict[str, dict[str, PPOConfig | SACConfig]] = {
    "ppo": {
        "*": PPOConfig(),
        # 2842 coordinates, 400 steps: fewer, longer rollouts; a narrower network and
        # fewer epochs, since every sample is 2842 rows for the per-coordinate network
        # and the update dominates the run time (memory-bound activations of n x hidden);
        # less exploration noise: at std 0.37 the random walk of 2842 weights over 400
        # steps wrecks the network (training losses ~40 against f(x0) ~2.3)
        "optenv/MLP-Digits-v0": PPOConfig(total_timesteps=20_000, n_envs=4, n_steps=200,
                                          batch_size=100, n_epochs=3, hidden=16,
                                          gamma=0.995, log_std_init=-3.0),
    },
    "sac": {
        "*": SACConfig(),
        "optenv/MLP-Digits-v0": SACConfig(n_envs=1, batch_size=64, learning_starts=400),
    },
}


def defaults_for(algo: str, env_id: str) -> PPOConfig | SACConfig:
    """The training defaults of ``algo`` (``"ppo"`` or ``"sac"``) on ``env_id``."""
    if algo not in DEFAULTS:
        raise ValueError(f"unknown algorithm {algo!r}; expected one of {sorted(DEFAULTS)}")
    table = DEFAULTS[algo]
    return table.get(env_id, table["*"])


def sac_buffer_size(observation_space: spaces.Box, action_space: spaces.Box,
                    buffer_bytes: int, max_size: int = 1_000_000) -> int:
    """Transitions that fit in ``buffer_bytes``: obs and next obs, action, reward, done (f32)."""
    per = 4 * (2 * int(np.prod(observation_space.shape)) + int(np.prod(action_space.shape)) + 3)
    size = min(int(max_size), int(buffer_bytes) // per)
    if size < 1:
        raise ValueError(f"buffer_bytes={buffer_bytes} holds no transition of {per} bytes")
    return size


# ------------------------------------------------------------------------------ envs
class OptimizeeReward(gym.Wrapper):
    """Reward shaping for RL on optimizee envs, applied outside SB3's ``Monitor``.

    ``kind="log"``: ``log f(x_t) − log f(x_{t+1})`` summed telescopically, i.e. the step
    reward is ``log(f₀ / f(x_{t+1}))`` — scale-free across problems, whose losses span
    orders of magnitude (Gaussian quadratics are heavy-tailed), and sensitive to progress
    at small losses, where the final loss is decided (Metz et al. 2019 train on log
    losses for the same reason). Assumes objectives ≥ 0 (floored at ``floor``).
    ``kind="objective"``: the env's own reward ``−f(x_{t+1})``.

    Both: a diverged step (``terminated``) is charged its reward for every remaining
    step of the horizon, as if the run stayed at the divergence threshold — as the bench
    scores it. Otherwise ending the episode early would be a way out of negative rewards.
    """

    def __init__(self, env: gym.Env, kind: str = "log", floor: float = 1e-12) -> None:
        super().__init__(env)
        if kind not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {kind!r}")
        if not floor > 0:
            raise ValueError(f"floor must be > 0, got {floor!r}")
        self.kind, self.floor = kind, float(floor)
        spec = env.spec
        self.horizon = int(spec.max_episode_steps) if spec and spec.max_episode_steps else 0
        self._log_f0 = 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._log_f0 = math.log(max(float(info["loss"]), self.floor))
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.kind == "log":
            # -reward is the objective, or the divergence threshold on a diverged step
            reward = self._log_f0 - math.log(max(-float(reward), self.floor))
        if terminated and self.horizon:
            reward = float(reward) * max(self.horizon - int(info.get("t", 0)) + 1, 1)
        return obs, float(reward), terminated, truncated, info


def _make_env(env_id: str, **env_kwargs: Any) -> gym.Env:
    """``gym.make`` at module level, so SubprocVecEnv workers import it by reference."""
    return gym.make(env_id, **env_kwargs)


def make_sb3_env(
    env_id: str,
    n_envs: int = 1,
    *,
    seed: int | None = 0,
    env_kwargs: dict[str, Any] | None = None,
    reward: str = "log",
    vec_env: str = "dummy",
    start_method: str | None = None,
    monitor_dir: str | Path | None = None,
) -> VecEnv:
    """``n_envs`` copies of ``env_id`` as an SB3 ``VecEnv`` (SB3's ``make_vec_env``).

    Each copy is ``gym.make(env_id, **env_kwargs)`` wrapped in SB3's ``Monitor`` with
    info keywords ``loss`` (the final true objective of an episode) and ``diverged``,
    then in :class:`OptimizeeReward` (``reward``), so ``Monitor``'s returns stay the
    env's own. ``vec_env="subproc"`` runs the copies in worker processes
    (``start_method``: ``"spawn"``, ``"forkserver"`` or ``"fork"``; the factory is a
    module-level function, so spawned workers import it). Env ``i`` is seeded
    ``seed + i`` at the first reset.
    """
    if not isinstance(n_envs, int) or isinstance(n_envs, bool) or n_envs < 1:
        raise ValueError(f"n_envs must be a positive int, got {n_envs!r}")
    if vec_env not in VEC_ENVS:
        raise ValueError(f"vec_env must be one of {VEC_ENVS}, got {vec_env!r}")
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    if start_method is not None and vec_env != "subproc":
        raise ValueError(f"start_method={start_method!r} needs vec_env='subproc'")
    gym.spec(env_id)  # an unknown id fails here, not in a worker
    vec_kwargs = {"start_method": start_method} if start_method is not None else {}
    return make_vec_env(
        partial(_make_env, env_id),
        n_envs=n_envs,
        seed=seed,
        env_kwargs=dict(env_kwargs or {}),
        monitor_dir=None if monitor_dir is None else str(monitor_dir),
        monitor_kwargs={"info_keywords": ("loss", "diverged")},
        wrapper_class=OptimizeeReward,
        wrapper_kwargs={"kind": reward},
        vec_env_cls=SubprocVecEnv if vec_env == "subproc" else DummyVecEnv,
        vec_env_kwargs=vec_kwargs,
    )


# ------------------------------------------------------------------------------ networks
def _coords_space(observation_space: spaces.Space) -> spaces.Box:
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 2:
        raise ValueError(
            "coordinatewise policies read the env's layout='coords' observation (n, k); "
            f"got {observation_space}"
        )
    return observation_space


class CoordinateFeatures(BaseFeaturesExtractor):
    """Per-coordinate features ``(B, n, k)`` → ``symlog`` of them, ``(B, n, k)``.

    ``features_dim`` is ``k`` (per coordinate), which is what SB3 hands to the networks
    built after the extractor. ``sign(x)·log(1 + |x|)`` because the Ψ features range
    over orders of magnitude (a gradient ratio, a relative loss change).
    """

    def __init__(self, observation_space: spaces.Box) -> None:
        super().__init__(observation_space, _coords_space(observation_space).shape[1])

    def forward(self, observations: Tensor) -> Tensor:
        return observations.sign() * observations.abs().log1p()


def _mlp(in_dim: int, arch: Sequence[int], activation_fn: type[nn.Module]) -> nn.Sequential:
    """SB3's ``create_mlp`` with an activation after the last layer too (a latent)."""
    if not arch:
        raise ValueError(f"network architecture must have at least one layer, got {arch!r}")
    layers = create_mlp(in_dim, -1, list(arch), activation_fn)
    return nn.Sequential(*layers)


def _pool(x: Tensor) -> Tensor:
    """Mean and max over the coordinate axis ``-2``: permutation-invariant, any ``n``."""
    return torch.cat([x.mean(-2), x.amax(-2)], -1)


class _PerCoordinate(nn.Module):
    """``Linear(h, 1)`` on every coordinate's latent ``(B, n, h)`` → ``(B, n)``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).squeeze(-1)


class CoordinatewiseMlpExtractor(nn.Module):
    """The ``mlp_extractor`` of :class:`CoordinatewiseActorCriticPolicy`.

    Actor: an MLP per coordinate, ``(B, n, k)`` → ``(B, n, h_pi)``. Critic: an MLP per
    coordinate, mean- and max-pooled over coordinates, then one layer: ``(B, h_vf)``.
    """

    def __init__(self, feature_dim: int, net_arch: list[int] | dict[str, list[int]],
                 activation_fn: type[nn.Module]) -> None:
        super().__init__()
        if isinstance(net_arch, dict):
            pi_arch, vf_arch = list(net_arch.get("pi", [])), list(net_arch.get("vf", []))
        else:
            pi_arch, vf_arch = list(net_arch), list(net_arch)
        self.policy_net = _mlp(feature_dim, pi_arch, activation_fn)
        self.value_embed = _mlp(feature_dim, vf_arch, activation_fn)
        self.value_head = _mlp(2 * vf_arch[-1], [vf_arch[-1]], activation_fn)
        self.latent_dim_pi, self.latent_dim_vf = pi_arch[-1], vf_arch[-1]

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: Tensor) -> Tensor:
        return self.policy_net(features)

    def forward_critic(self, features: Tensor) -> Tensor:
        return self.value_head(_pool(self.value_embed(features)))


class CoordinatewiseActorCriticPolicy(ActorCriticPolicy):
    """SB3 ``ActorCriticPolicy`` acting per coordinate (PPO, A2C).

    ``net_arch`` (a list, or ``dict(pi=..., vf=...)``) gives the per-coordinate hidden
    layers (default ``[32, 32]``). The action mean of coordinate ``i`` is
    ``Linear(h, 1)`` of its latent; the Gaussian's log-std is one shared scalar; the
    value reads mean- and max-pooled per-coordinate embeddings. gSDE is not supported.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 lr_schedule: Any, net_arch: list[int] | dict[str, list[int]] | None = None,
                 **kwargs: Any) -> None:
        space = _coords_space(observation_space)
        if not isinstance(action_space, spaces.Box) or action_space.shape != space.shape[:1]:
            raise ValueError(
                f"action space must be a Box of shape {space.shape[:1]} (one action per "
                f"coordinate), got {action_space}"
            )
        if kwargs.get("use_sde"):
            raise ValueError("use_sde=True is not supported by the coordinatewise policy")
        kwargs.setdefault("features_extractor_class", CoordinateFeatures)
        super().__init__(observation_space, action_space, lr_schedule,
                         net_arch=[32, 32] if net_arch is None else net_arch, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = CoordinatewiseMlpExtractor(
            self.features_dim, self.net_arch, self.activation_fn
        )

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # SB3 sized these by n (Linear(h, n), log_std (n,)); replace them with
        # per-coordinate / shared ones and rebuild the optimizer over the new parameters.
        self.action_net = _PerCoordinate(self.mlp_extractor.latent_dim_pi)
        self.log_std = nn.Parameter(torch.full((1,), float(self.log_std_init)))
        if self.ortho_init:
            self.action_net.apply(partial(self.init_weights, gain=0.01))
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )


class CoordinatewiseActor(Actor):
    """SAC actor per coordinate: SB3's ``Actor`` with per-coordinate mean and log-std heads.

    ``latent_pi`` (``create_mlp(k, ...)``) already maps ``(B, n, k)`` → ``(B, n, h)``;
    ``mu`` and ``log_std`` become ``Linear(h, 1)`` per coordinate instead of ``Linear(h, n)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("use_sde"):
            raise ValueError("use_sde=True is not supported by the coordinatewise SAC actor")
        super().__init__(*args, **kwargs)
        last = self.net_arch[-1] if self.net_arch else self.features_dim
        self.mu = _PerCoordinate(last)
        self.log_std = _PerCoordinate(last)  # type: ignore[assignment]


class _PooledQ(nn.Module):
    """Q(s, a): per-coordinate (features, action) embedding, mean/max pooled, MLP → scalar."""

    def __init__(self, in_dim: int, arch: list[int], activation_fn: type[nn.Module]) -> None:
        super().__init__()
        self.embed = _mlp(in_dim, arch, activation_fn)
        self.head = nn.Sequential(*create_mlp(2 * arch[-1], 1, [arch[-1]], activation_fn))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(_pool(self.embed(x)))


class CoordinatewiseCritic(ContinuousCritic):
    """SAC critics Q(s, a) pooled over coordinates (``n_critics`` of them, as SB3's)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box,
                 net_arch: list[int], features_extractor: BaseFeaturesExtractor,
                 features_dim: int, activation_fn: type[nn.Module] = nn.ReLU,
                 normalize_images: bool = True, n_critics: int = 2,
                 share_features_extractor: bool = True) -> None:
        # BaseModel directly: ContinuousCritic.__init__ would build Linear(k + n, ...) nets
        BaseModel.__init__(self, observation_space, action_space,
                           features_extractor=features_extractor,
                           normalize_images=normalize_images)
        self.share_features_extractor = share_features_extractor
        self.n_critics = n_critics
        self.q_networks: list[nn.Module] = []
        for idx in range(n_critics):
            q_net = _PooledQ(features_dim + 1, list(net_arch), activation_fn)
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)

    def forward(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, ...]:
        # as SB3: a shared features extractor learns from the actor loss only
        with torch.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        x = torch.cat([features, actions.unsqueeze(-1)], -1)
        return tuple(q_net(x) for q_net in self.q_networks)

    def q1_forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.extract_features(obs, self.features_extractor)
        return self.q_networks[0](torch.cat([features, actions.unsqueeze(-1)], -1))


class CoordinatewiseSACPolicy(SACPolicy):
    """SB3 ``SACPolicy`` with :class:`CoordinatewiseActor` and :class:`CoordinatewiseCritic`.

    ``net_arch`` (list, or ``dict(pi=..., qf=...)``) gives the per-coordinate hidden
    layers (default ``[64, 64]``).
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box,
                 lr_schedule: Any, net_arch: list[int] | dict[str, list[int]] | None = None,
                 **kwargs: Any) -> None:
        space = _coords_space(observation_space)
        if action_space.shape != space.shape[:1]:
            raise ValueError(f"action space must have shape {space.shape[:1]}, "
                             f"got {action_space.shape}")
        kwargs.setdefault("features_extractor_class", CoordinateFeatures)
        arch = [64, 64] if net_arch is None else net_arch
        for part in get_actor_critic_arch(arch):
            if not part:
                raise ValueError(f"net_arch needs at least one layer per network, got {arch!r}")
        super().__init__(observation_space, action_space, lr_schedule, net_arch=arch, **kwargs)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Actor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return CoordinatewiseActor(**kwargs).to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None
                    ) -> ContinuousCritic:
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return CoordinatewiseCritic(**kwargs).to(self.device)


# ------------------------------------------------------------------------------ step policy
class SB3StepPolicy(StepPolicy):
    """An SB3 policy as a :class:`StepPolicy`: ``Δx = step_scale · clip(a, −1, 1)``.

    ``a`` is the deterministic action (PPO: the Gaussian mean; SAC: ``tanh`` of it),
    clipped as the env clips it. ``layout="flat"`` policies (``MlpPolicy``) reshape the
    features ``(B, n, k)`` to ``(B, n·k)`` as the env does and need the ``n`` they were
    trained on; coordinatewise ones run at any ``n``.
    """

    def __init__(self, sb3_policy: nn.Module, *, features: str,
                 feature_kwargs: dict[str, Any] | None, step_scale: float, layout: str,
                 n: int | None = None) -> None:
        self.sb3_policy = sb3_policy
        self.features = features
        self.feature_kwargs = dict(feature_kwargs or {})  # type: ignore[misc]
        self.step_scale = float(step_scale)
        self.layout = layout
        self.n = n
        sb3_policy.set_training_mode(False)  # type: ignore[operator]

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        if self.layout == "flat" and self.n is not None and n != self.n:
            raise ValueError(
                f"this {type(self.sb3_policy).__name__} was trained on n={self.n} coordinates "
                f"(flat layout) and cannot run on n={n}; use a coordinatewise agent ('ppo')"
            )
        return {}

    @torch.no_grad()
    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        B, n, _ = features.shape
        obs = features.float().reshape(B, -1) if self.layout == "flat" else features.float()
        action = self.sb3_policy._predict(obs, deterministic=True)  # type: ignore[operator]
        delta = action.reshape(B, n).clamp(-1.0, 1.0) * self.step_scale
        return delta.to(features.dtype), state


# ------------------------------------------------------------------------------ training
class _JsonlWriter(KVWriter):
    """SB3 logger output: one JSON line per dump in ``metrics.jsonl`` (appends on resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]],
              step: int = 0) -> None:
        record: dict[str, Any] = {"timesteps": int(step)}
        for key, value in key_values.items():
            if isinstance(value, (int, float, np.integer, np.floating)):
                value = float(value)
                record[key] = value if math.isfinite(value) else None
        append_jsonl(self.path, record)

    def close(self) -> None:
        pass


class _RunCallback(BaseCallback):
    """Logs the median final loss of recent episodes; writes checkpoints atomically."""

    def __init__(self, save: Any, every: int) -> None:
        super().__init__()
        self.save, self.every, self.last_save = save, int(every), 0

    def _on_training_start(self) -> None:
        self.last_save = self.num_timesteps

    def _on_step(self) -> bool:
        if self.save is not None and self.num_timesteps - self.last_save >= self.every:
            self.save(self.model)
            self.last_save = self.num_timesteps
        return True

    def _on_rollout_end(self) -> None:
        stats = _episode_stats(self.model)
        for key, value in stats.items():
            self.logger.record(f"rollout/{key}", value)


def _episode_stats(model: BaseAlgorithm) -> dict[str, float]:
    """Median final loss and divergence rate over SB3's recent-episode buffer."""
    episodes = list(model.ep_info_buffer or [])
    if not episodes:
        return {}
    losses = np.array([float(e.get("loss", np.nan)) for e in episodes])
    return {"final_loss_median": float(np.nanmedian(losses)) if np.isfinite(losses).any()
            else float("nan"),
            "diverged_frac": float(np.mean([bool(e.get("diverged", False)) for e in episodes])),
            "ep_rew_mean": float(np.mean([float(e["r"]) for e in episodes]))}


def _model_bytes(model: BaseAlgorithm) -> bytes:
    buffer = io.BytesIO()
    model.save(buffer)
    return buffer.getvalue()


class _SB3Agent(Agent):
    """Shared training, saving and StepPolicy of the SB3 agents (see the module docstring).

    ``__init__(seed, **defaults)``: ``defaults`` override :data:`DEFAULTS` (fields of the
    config dataclass) or go to the SB3 algorithm (e.g. ``policy_kwargs``).
    """

    tunable = False  # trained by `optenv train`, benched from its file
    algo: ClassVar[str] = "ppo"
    algo_class: ClassVar[type[BaseAlgorithm]] = PPO
    config_class: ClassVar[type[PPOConfig] | type[SACConfig]] = PPOConfig
    layout: ClassVar[str] = "coords"

    def __init__(self, seed: int = 0, **defaults: Any) -> None:
        super().__init__()
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self._defaults = dict(defaults)
        self._split(self._defaults)  # validate now
        self.model: BaseAlgorithm | None = None
        self.meta: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}

    # -- configuration -----------------------------------------------------------------
    def _split(self, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config-dataclass fields, SB3 algorithm keywords)."""
        names = {f.name for f in fields(self.config_class)}
        bad = sorted(_BENCH_KWARGS & set(options))
        if bad:
            raise ValueError(
                f"{type(self).__name__} is trained, not tuned: got tuning options {bad}. Train "
                f"it with `optenv train {self.name} --env ID --out DIR` and bench the result "
                f"as {self.name}:DIR/agent.pt"
            )
        return ({k: v for k, v in options.items() if k in names},
                {k: v for k, v in options.items() if k not in names})

    def resolve(self, env_id: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The training config for ``env_id`` and the extra SB3 keywords."""
        known, extra = self._split({**self._defaults, **options})
        cfg = replace(defaults_for(self.algo, env_id), **known)  # type: ignore[type-var]
        for name in ("total_timesteps", "n_envs", "hidden", "checkpoint_every"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if cfg.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {cfg.reward!r}")
        return cfg, extra

    def _policy_spec(self, cfg: Any, extra: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def _algo_kwargs(self, cfg: Any, env: VecEnv) -> dict[str, Any]:
        raise NotImplementedError

    def _build_model(self, cfg: Any, extra: dict[str, Any], env: VecEnv) -> BaseAlgorithm:
        policy, policy_kwargs = self._policy_spec(cfg, extra)
        return self.algo_class(policy, env, seed=self.seed, device="cpu", verbose=0,
                               policy_kwargs=policy_kwargs,
                               **{**self._algo_kwargs(cfg, env), **extra})

    # -- Agent API ---------------------------------------------------------------------
    def train(self, env_id: str, *, total_timesteps: int | None = None,
              out: str | Path | None = None, resume: bool = False, progress: bool = False,
              env_kwargs: dict[str, Any] | None = None, vec_env: str = "dummy",
              start_method: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Train on ``env_id`` for ``total_timesteps`` env steps (all envs together).

        ``out`` (a run folder) gets ``metrics.jsonl`` (SB3's logger, one line per
        rollout / log interval), ``checkpoint.zip`` + ``checkpoint.json`` (SAC: plus
        ``replay_buffer.pkl``) every ``checkpoint_every`` steps and at the end; with
        ``resume=True`` training continues from the checkpoint to ``total_timesteps``
        (weights, optimizer state and step count are restored; the envs restart).
        Other keywords override :data:`DEFAULTS` or go to the SB3 algorithm.
        """
        if total_timesteps is not None:
            kwargs["total_timesteps"] = total_timesteps
        cfg, extra = self.resolve(env_id, kwargs)
        env_kwargs = dict(env_kwargs or {})
        if env_kwargs.get("layout", self.layout) != self.layout:
            raise ValueError(f"{type(self).__name__} trains on layout={self.layout!r}, "
                             f"got env_kwargs layout={env_kwargs['layout']!r}")
        env_kwargs["layout"] = self.layout
        out_dir = None if out is None else Path(out)
        ckpt = None if out_dir is None else out_dir / "checkpoint.zip"
        if resume and (ckpt is None or not ckpt.is_file()):
            raise ValueError(f"resume=True but there is no checkpoint at {ckpt}")
        env = make_sb3_env(env_id, cfg.n_envs, seed=self.seed, env_kwargs=env_kwargs,
                           reward=cfg.reward, vec_env=vec_env, start_method=start_method)
        try:
            meta = self._env_meta(env_id, env_kwargs, env)
            if resume:
                assert ckpt is not None and out_dir is not None
                saved = read_json(out_dir / "checkpoint.json")
                if saved.get("env_id") != env_id or saved.get("algo") != self.algo:
                    raise ValueError(
                        f"checkpoint in {out_dir} is {saved.get('algo')} on "
                        f"{saved.get('env_id')}, not {self.algo} on {env_id}"
                    )
                model = self.algo_class.load(ckpt, env=env, device="cpu")
                self._load_extra(model, out_dir)
            else:
                model = self._build_model(cfg, extra, env)
            save = None
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                formats: list[KVWriter] = [_JsonlWriter(out_dir / "metrics.jsonl")]
                if progress:
                    formats.append(HumanOutputFormat(sys.stdout))
                model.set_logger(Logger(str(out_dir), formats))
                atomic_write_json(out_dir / "config.json", {
                    "agent": self.algo if self.layout == "coords" else f"{self.algo}-mlp",
                    "env_id": env_id, "env_kwargs": env_kwargs, "seed": self.seed,
                    "config": asdict(cfg), "sb3_kwargs": repr(extra)})
                save = partial(self._checkpoint, out_dir=out_dir, env_id=env_id)
            start, before = time.perf_counter(), model.num_timesteps
            remaining = max(cfg.total_timesteps - model.num_timesteps, 0)
            if remaining:
                model.learn(remaining, callback=_RunCallback(save, cfg.checkpoint_every),
                            reset_num_timesteps=not resume, progress_bar=progress)
            wall = time.perf_counter() - start
            if save is not None:
                save(model)
            stats = _episode_stats(model)
        finally:
            env.close()
        steps = model.num_timesteps - before
        self.model, self.meta = model, meta
        self.training_cost = {
            "env_steps": float(self.training_cost.get("env_steps", 0.0)) + float(steps),
            "wall_s": float(self.training_cost.get("wall_s", 0.0)) + wall,
        }
        self.summary = {
            "config": asdict(cfg),
            "final": {"timesteps": float(model.num_timesteps), "wall_s": wall,
                      "fps": steps / wall if wall > 0 else float("nan"), **stats},
        }
        return self.summary

    def _env_meta(self, env_id: str, env_kwargs: dict[str, Any], env: VecEnv) -> dict[str, Any]:
        """What the StepPolicy needs from the env: features, their kwargs, step scale, n."""
        # the env's own arguments over build_loop's defaults: what the env computes
        merged = {**_LOOP_DEFAULTS, **gym.spec(env_id).kwargs, **env_kwargs}
        return {"algo": self.algo, "env_id": env_id, "env_kwargs": env_kwargs,
                "features": str(merged["features"]),
                "feature_kwargs": dict(merged.get("feature_kwargs") or {}),
                "step_scale": float(merged["step_scale"]), "layout": self.layout,
                "n": int(env.action_space.shape[0])}

    def _checkpoint(self, model: BaseAlgorithm, *, out_dir: Path, env_id: str) -> None:
        self._save_extra(model, out_dir)
        atomic_write_bytes(out_dir / "checkpoint.zip", _model_bytes(model))
        atomic_write_json(out_dir / "checkpoint.json", {
            "algo": self.algo, "env_id": env_id, "num_timesteps": int(model.num_timesteps)})

    def _save_extra(self, model: BaseAlgorithm, out_dir: Path) -> None:
        """Algorithm state beyond the zip (SAC's replay buffer)."""

    def _load_extra(self, model: BaseAlgorithm, out_dir: Path) -> None:
        """Restore what :meth:`_save_extra` wrote."""

    def policy(self) -> StepPolicy:
        if self.model is None:
            raise ValueError(f"{type(self).__name__} is untrained: call train() first or load "
                             "a trained one with optenv.registry.load_agent(path)")
        return SB3StepPolicy(self.model.policy, features=self.meta["features"],
                             feature_kwargs=self.meta["feature_kwargs"],
                             step_scale=self.meta["step_scale"], layout=self.meta["layout"],
                             n=self.meta["n"])

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed, **self._defaults}

    def hyperparams(self) -> dict[str, Any]:
        """What the bench report shows: the training env, steps and policy."""
        if self.model is None:
            return self.config()
        return {"trained_on": self.meta.get("env_id"), "timesteps": int(self.model.num_timesteps),
                "policy": type(self.model.policy).__name__, "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        """SB3's own zip (``model.save``) as a uint8 tensor, plus the env metadata."""
        if self.model is None:
            raise ValueError(f"{type(self).__name__} is untrained: nothing to save")
        data = np.frombuffer(_model_bytes(self.model), dtype=np.uint8).copy()
        return {"sb3_zip": torch.from_numpy(data), "meta": json.loads(json.dumps(self.meta)),
                "summary": json.loads(json.dumps(self.summary.get("final", {})))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        zipped = state["sb3_zip"]
        if not isinstance(zipped, Tensor) or zipped.dtype != torch.uint8:
            raise ValueError("state['sb3_zip'] must be a uint8 tensor holding SB3's zip")
        self.model = self.algo_class.load(io.BytesIO(zipped.numpy().tobytes()), device="cpu")
        self.meta = dict(state["meta"])
        self.summary = {"final": dict(state.get("summary", {}))}

    def save_zip(self, path: str | Path) -> Path:
        """The model in SB3's zip format alone (``PPO.load(path)`` / ``SAC.load(path)``)."""
        if self.model is None:
            raise ValueError(f"{type(self).__name__} is untrained: nothing to save")
        return atomic_write_bytes(Path(path), _model_bytes(self.model))


class PPOAgent(_SB3Agent):
    """PPO (SB3) with :class:`CoordinatewiseActorCriticPolicy` on the ``coords`` layout."""

    name = "ppo"

    def _policy_spec(self, cfg: Any, extra: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        kwargs = {"net_arch": [cfg.hidden, cfg.hidden], "log_std_init": cfg.log_std_init,
                  **extra.pop("policy_kwargs", {})}
        return CoordinatewiseActorCriticPolicy, kwargs

    def _algo_kwargs(self, cfg: Any, env: VecEnv) -> dict[str, Any]:
        return {k: getattr(cfg, k) for k in (
            "n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda",
            "clip_range", "ent_coef", "max_grad_norm")}


class PPOMlpAgent(PPOAgent):
    """PPO (SB3) with SB3's plain ``MlpPolicy`` on the flat layout (fixed ``n``)."""

    name = "ppo-mlp"
    layout = "flat"

    def _policy_spec(self, cfg: Any, extra: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        kwargs = {"net_arch": [64, 64], "log_std_init": cfg.log_std_init,
                  **extra.pop("policy_kwargs", {})}
        return "MlpPolicy", kwargs


class SACAgent(_SB3Agent):
    """SAC (SB3) with :class:`CoordinatewiseSACPolicy` on the ``coords`` layout."""

    name = "sac"
    algo = "sac"
    algo_class = SAC
    config_class = SACConfig

    def _policy_spec(self, cfg: Any, extra: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return CoordinatewiseSACPolicy, {"net_arch": [cfg.hidden, cfg.hidden],
                                         **extra.pop("policy_kwargs", {})}

    def _algo_kwargs(self, cfg: Any, env: VecEnv) -> dict[str, Any]:
        # never more than the run collects: SB3 preallocates (and checkpoints) all of it
        size = sac_buffer_size(env.observation_space, env.action_space,  # type: ignore[arg-type]
                               cfg.buffer_bytes, min(cfg.max_buffer_size, cfg.total_timesteps))
        return {"buffer_size": size, "learning_starts": cfg.learning_starts,
                **{k: getattr(cfg, k) for k in ("batch_size", "learning_rate", "gamma", "tau",
                                                "train_freq", "gradient_steps", "ent_coef")}}

    def _save_extra(self, model: BaseAlgorithm, out_dir: Path) -> None:
        buffer = io.BytesIO()
        model.save_replay_buffer(buffer)  # type: ignore[attr-defined]
        atomic_write_bytes(out_dir / "replay_buffer.pkl", buffer.getvalue())

    def _load_extra(self, model: BaseAlgorithm, out_dir: Path) -> None:
        path = out_dir / "replay_buffer.pkl"
        if path.is_file():
            model.load_replay_buffer(path)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ references
# ------------------------------------------------------------------------------ speed
def measure_speed(env_id: str, timesteps: int, agents: Sequence[str] = ("ppo", "ppo-mlp"),
                  seed: int = 0) -> dict[str, dict[str, float]]:
    """Training timesteps per second of each agent on ``env_id`` (same config, one process)."""
    classes: dict[str, type[_SB3Agent]] = {"ppo": PPOAgent, "ppo-mlp": PPOMlpAgent,
                                           "sac": SACAgent}
    results = {}
    for name in agents:
        if name not in classes:
            raise ValueError(f"unknown agent {name!r}; expected one of {sorted(classes)}")
        agent = classes[name](seed=seed)
        final = agent.train(env_id, total_timesteps=timesteps)["final"]
        assert agent.model is not None
        params = sum(p.numel() for p in agent.model.policy.parameters())
        results[name] = {"timesteps": final["timesteps"], "wall_s": final["wall_s"],
                         "fps": final["fps"], "policy_params": float(params)}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.sb3 speed --env ID --timesteps N``: prints and writes JSON."""
    parser = argparse.ArgumentParser(prog="python -m agents.sb3")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed", help="training timesteps/s: coordinatewise PPO vs MlpPolicy")
    p.add_argument("--env", default="optenv/MLP-Digits-v0")
    p.add_argument("--timesteps", type=int, default=3200)
    p.add_argument("--agents", nargs="+", default=["ppo", "ppo-mlp"])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = measure_speed(args.env, args.timesteps, args.agents)
    for name, r in results.items():
        print(f"{name:8s} {r['timesteps']:8.0f} steps {r['wall_s']:8.1f} s "
              f"{r['fps']:8.1f} steps/s  {r['policy_params']:9.0f} policy params")
    if args.json:
        atomic_write_json(Path(args.json), {"env": args.env, "threads": args.threads,
                                            "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
