"""Reference policies every learned optimizer must beat: zero steps and random steps.

A learned rule that does not beat ``zero`` (the loss stays at f(x₀)) or ``random``
(``env.action_space.sample()`` every step) has learned nothing; RL agents in particular
are compared with both (issue: stable-baselines3 agents).
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor

from optenv.env import build_loop
from optenv.policy import Agent, PolicyState, StepPolicy
from optenv.problems.base import CoordinateGroup

__all__ = ["LOOP_DEFAULTS", "RandomStepAgent", "ZeroStepAgent"]

#: defaults of the env options (features, step_scale, ...) of optenv.env.build_loop
LOOP_DEFAULTS = {name: p.default for name, p in inspect.signature(build_loop).parameters.items()
                 if p.default is not inspect.Parameter.empty}


class _ReferencePolicy(StepPolicy):
    """Zero steps, or uniform random actions ``step_scale · U(−1, 1)`` (seeded at reset)."""

    features = "gradient"

    def __init__(self, step_scale: float, random: bool, seed: int) -> None:
        self.step_scale, self.random, self.seed = float(step_scale), random, int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        self.generator.manual_seed(self.seed)
        return {}

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        B, n, _ = features.shape
        if not self.random:
            return features.new_zeros(B, n), state
        u = torch.rand(B, n, generator=self.generator, dtype=features.dtype)
        return (2 * u - 1) * self.step_scale, state


class ZeroStepAgent(Agent):
    """``Δx = 0`` (the loss stays at f(x₀)); nothing to train. Registered as ``zero``.

    ``train`` accepts and ignores the bench's tuning options, so ``optenv bench --agents
    zero random`` works; :class:`RandomStepAgent` is the random policy.
    """

    name = "zero"
    random = False

    def __init__(self, seed: int = 0, step_scale: float = float(LOOP_DEFAULTS["step_scale"])
                 ) -> None:
        super().__init__()
        if not step_scale > 0:
            raise ValueError(f"step_scale must be > 0, got {step_scale!r}")
        self.seed, self.step_scale = int(seed), float(step_scale)

    def train(self, env_id: str, **kwargs: Any) -> dict[str, Any]:
        """Take the env's step scale (``env_kwargs`` / task overrides as in ``gym.make``)."""
        merged = {**LOOP_DEFAULTS, **gym.spec(env_id).kwargs, **kwargs.get("env_kwargs", {})}
        self.step_scale = float(merged["step_scale"])
        return {"hyperparams": self.config(), "final": {}}

    def policy(self) -> StepPolicy:
        return _ReferencePolicy(self.step_scale, self.random, self.seed)

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed, "step_scale": self.step_scale}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RandomStepAgent(ZeroStepAgent):
    """The random policy, ``Δx = step_scale · U(−1, 1)`` (what
    ``env.action_space.sample()`` does), seeded by ``seed``. Registered as ``random``."""

    name = "random"
    random = True
