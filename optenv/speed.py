"""``optenv speed``: what the environment layer costs, measured against bare torch.

Two ratios, each measured within one run on the same machine and thread settings:

1. **Env overhead** on ``optenv/MLP-Digits-v0`` (48 → 48 ReLU → 10, batch 64): one
   ``env.step`` plus an Adam update computed from the observed gradient, against a
   bare ``nn.Module`` loop doing the same work per step (minibatch forward/backward,
   the full training-set objective, ``torch.optim.Adam.step``).
2. **Batching**: steps per second of ``OptimizeeVectorEnv`` with ``B`` instances
   against ``gymnasium.vector.SyncVectorEnv`` over ``B`` single envs.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import torch

__all__ = ["run_speed"]

ENV_ID = "optenv/MLP-Digits-v0"


def _bare_loop(steps: int, seed: int = 0) -> float:
    """Seconds per step of a plain torch training loop doing the env's work."""
    from optenv.data import load_dataset

    data = load_dataset("digits", dim=48)
    x_train, y_train = data.train_x, data.train_y
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(48, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.functional.cross_entropy

    def one_step() -> None:
        idx = torch.randint(0, len(x_train), (64,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_train[idx]), y_train[idx])
        loss.backward()
        with torch.no_grad():
            loss_fn(model(x_train), y_train)
        opt.step()

    for _ in range(20):  # warm-up
        one_step()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return (time.perf_counter() - start) / steps


class _AdamOnObs:
    """Adam on the ``gradient`` observation, turned into an env action."""

    def __init__(self, n: int, step_scale: float, lr: float = 1e-3) -> None:
        self.m = torch.zeros(n)
        self.v = torch.zeros(n)
        self.t = 0
        self.lr, self.step_scale = lr, step_scale

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        g = torch.from_numpy(obs)
        self.t += 1
        self.m.mul_(0.9).add_(g, alpha=0.1)
        self.v.mul_(0.999).addcmul_(g, g, value=0.001)
        m_hat = self.m / (1 - 0.9**self.t)
        v_hat = self.v / (1 - 0.999**self.t)
        return (-self.lr * m_hat / (v_hat.sqrt() + 1e-8) / self.step_scale).numpy()


def _env_loop(steps: int, features: str, seed: int = 0) -> float:
    """Seconds per step of ``gym.make(ENV_ID)`` driven by Adam on the observed gradient."""
    env = gym.make(ENV_ID, features=features, max_episode_steps=10**9)
    obs, _ = env.reset(seed=seed)
    step_scale = env.unwrapped.loop.step_scale
    adam = _AdamOnObs(env.action_space.shape[0], step_scale)
    n = env.action_space.shape[0]
    grad_of = (lambda o: o) if features == "gradient" else (lambda o: o.reshape(n, -1)[:, 1])
    for _ in range(20):
        obs, *_ = env.step(adam(grad_of(obs)))
    start = time.perf_counter()
    for _ in range(steps):
        obs, *_ = env.step(adam(grad_of(obs)))
    elapsed = (time.perf_counter() - start) / steps
    env.close()
    return elapsed


def _vector_rates(num_envs: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """Environment steps per second: batched vector env, and SyncVectorEnv of single envs."""
    rates = []
    for mode in ("vector_entry_point", "sync"):
        env = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode=mode,
                           max_episode_steps=10**9)
        env.reset(seed=seed)
        action = np.zeros(env.action_space.shape, dtype=np.float32)
        for _ in range(5):
            env.step(action)
        start = time.perf_counter()
        for _ in range(steps):
            env.step(action)
        rates.append(num_envs * steps / (time.perf_counter() - start))
        env.close()
    return rates[0], rates[1]


def run_speed(steps: int = 400, num_envs: int = 32, threads: int | None = None) -> dict:
    """Measure both ratios, print a table, return the numbers."""
    from rich.console import Console
    from rich.table import Table

    import optenv  # noqa: F401 - registers the suite

    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    bare = _bare_loop(steps)
    env_grad = _env_loop(steps, "gradient")
    env_psi = _env_loop(steps, "li_malik_obs")
    vec_steps = max(steps // 4, 20)
    batched, sync = _vector_rates(num_envs, vec_steps)
    result = {
        "env": ENV_ID,
        "torch_threads": threads,
        "bare_torch_ms_per_step": 1e3 * bare,
        "env_gradient_ms_per_step": 1e3 * env_grad,
        "env_li_malik_obs_ms_per_step": 1e3 * env_psi,
        "env_over_bare_gradient": env_grad / bare,
        "env_over_bare_li_malik_obs": env_psi / bare,
        "num_envs": num_envs,
        "vector_steps_per_s": batched,
        "sync_vector_steps_per_s": sync,
        "vector_over_sync": batched / sync,
    }
    table = Table(title=f"optenv speed ({ENV_ID}, torch threads = {threads})")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_row("bare torch loop, ms/step", f"{1e3 * bare:.3f}")
    table.add_row("env step + Adam, features=gradient, ms/step", f"{1e3 * env_grad:.3f}")
    table.add_row("env step + Adam, features=li_malik_obs, ms/step", f"{1e3 * env_psi:.3f}")
    table.add_row("ratio env/bare (gradient)", f"{env_grad / bare:.2f}x")
    table.add_row("ratio env/bare (li_malik_obs)", f"{env_psi / bare:.2f}x")
    table.add_row(f"OptimizeeVectorEnv B={num_envs}, steps/s", f"{batched:,.0f}")
    table.add_row(f"SyncVectorEnv {num_envs} envs, steps/s", f"{sync:,.0f}")
    table.add_row("ratio vector/sync", f"{batched / sync:.1f}x")
    Console().print(table)
    return result
