"""Register your own optimizee as a Gymnasium env and run it.

    python examples/custom_optimizee.py

A batched Rosenbrock family: every instance has its own shift ``a``. Subclass
``Optimizee`` (batched over B instances, parameters ``(B, n)``), wrap it in a
``TaskFamily``, register it, and it is an ``optenv/...`` id like the built-ins: it
works with ``gym.make``, ``gym.make_vec`` (batched) and every optenv agent.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

import optenv
from optenv.problems.base import Optimizee, TaskFamily, groups_from_shapes


class Rosenbrock(Optimizee):
    """f(x) = Σ 100 (x_{i+1} − x_i²)² + (a − x_i)², one shift ``a`` per instance."""

    def __init__(self, a: torch.Tensor, dim: int) -> None:
        super().__init__(groups_from_shapes({"x": (dim,)}), a.shape[0], {"a": a})
        self.dim = dim

    def init(self, generator: torch.Generator) -> torch.Tensor:
        return -1.0 + 0.1 * torch.randn(self.num_instances, self.dim, generator=generator)

    def sample_batch(self, generator: torch.Generator) -> None:
        return None  # deterministic: the minibatch loss is the objective

    def loss(self, params: torch.Tensor, batch: None) -> torch.Tensor:
        a = self.instance_data["a"]
        x, x_next = params[:, :-1], params[:, 1:]
        return (100 * (x_next - x**2) ** 2 + (a - x) ** 2).sum(dim=1)

    def objective(self, params: torch.Tensor) -> torch.Tensor:
        return self.loss(params, None)


class RosenbrockFamily(TaskFamily):
    """Rosenbrock functions with a random shift a ~ U(0.5, 1.5)."""

    def __init__(self, dim: int = 4) -> None:
        if dim < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        self.dim = dim

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> Rosenbrock:
        a = 0.5 + torch.rand(num_instances, 1, generator=generator)
        return Rosenbrock(a, self.dim)


def main() -> None:
    env_id = optenv.register_optimizee(
        "Rosenbrock", RosenbrockFamily, namespace="example", horizon=200, dim=4, step_scale=0.01
    )
    print("registered", env_id)

    # One env, driven by plain gradient descent read from the `gradient` features.
    env = gym.make(env_id, features="gradient")
    obs, info = env.reset(seed=0)
    print(f"step   0: objective {info['loss']:.4f}")
    for t in range(1, 201):
        action = np.clip(-1e-3 * obs / 0.01, -1, 1).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(action)
        if t % 50 == 0:
            print(f"step {t:3d}: objective {info['loss']:.4f}")
        if terminated or truncated:
            break

    # Sixteen instances as one batched computation.
    envs = gym.make_vec(env_id, num_envs=16)
    obs, info = envs.reset(seed=0)
    print("vector env:", type(envs).__name__, obs.shape, "mean initial objective",
          float(info["loss"].mean()))


if __name__ == "__main__":
    main()
