"""``optenv speed``: what the environment layer costs, measured against bare torch.

Two ratios, each measured within one run on the same machine and thread settings:

1. **Env overhead** on ``optenv/MLP-Digits-v0`` (48 → 48 ReLU → 10, batch 64): one
   ``env.step`` plus an Adam update computed from the observed gradient, against a
   bare ``nn.Module`` loop doing the same work per step (minibatch forward/backward,
   the full training-set objective, ``torch.optim.Adam.step``).
2. **Batching**: steps per second of ``OptimizeeVectorEnv`` with ``B`` instances
   against ``gymnasium.vector.SyncVectorEnv`` over ``B`` single envs.

Timing on a shared machine drifts by ±15% between seconds, so every measurement is
taken ``repeats`` times, interleaved (bare, env, env, vector, sync; the order rotates
each round): each ratio is the median of per-round ratios, whose neighbours in time
saw the same machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

__all__ = ["run_speed"]

ENV_ID = "optenv/MLP-Digits-v0"

#: a runner advances its loop by ``steps`` steps and returns the seconds that took
Runner = Callable[[int], float]


def _timed(step: Callable[[], object]) -> Runner:
    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - start

    run(20)  # warm-up
    return run


def _bare_loop(seed: int = 0) -> Runner:
    """A plain torch training loop doing the env's work."""
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

    return _timed(one_step)


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


def _env_loop(features: str, seed: int = 0) -> tuple[Runner, gym.Env]:
    """``gym.make(ENV_ID)`` driven by Adam on the observed gradient."""
    env = gym.make(ENV_ID, features=features, max_episode_steps=10**9)
    obs, _ = env.reset(seed=seed)
    adam = _AdamOnObs(env.action_space.shape[0], env.unwrapped.loop.step_scale)
    n = env.action_space.shape[0]
    grad_of = (lambda o: o) if features == "gradient" else (lambda o: o.reshape(n, -1)[:, 1])
    last = [obs]

    def one_step() -> None:
        last[0] = env.step(adam(grad_of(last[0])))[0]

    return _timed(one_step), env


def _vector_loop(num_envs: int, mode: str, seed: int = 0) -> tuple[Runner, gym.vector.VectorEnv]:
    """``gym.make_vec(ENV_ID, num_envs)`` stepped with zero actions."""
    env = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode=mode,
                       max_episode_steps=10**9)
    env.reset(seed=seed)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    return _timed(lambda: env.step(action)), env


def run_speed(steps: int = 400, num_envs: int = 32, threads: int | None = None,
              repeats: int = 5) -> dict:
    """Measure both ratios (``repeats`` interleaved rounds), print a table, return them."""
    from rich.console import Console
    from rich.table import Table

    import optenv  # noqa: F401 - registers the suite

    for name, value in (("steps", steps), ("num_envs", num_envs), ("repeats", repeats)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if threads is not None:
        if isinstance(threads, bool) or int(threads) < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads!r}")
        torch.set_num_threads(int(threads))
    threads = torch.get_num_threads()
    env_grad, grad_env = _env_loop("gradient")
    env_psi, psi_env = _env_loop("li_malik_obs")
    vector, vector_env = _vector_loop(num_envs, "vector_entry_point")
    sync, sync_env = _vector_loop(num_envs, "sync")
    vec_steps = max(steps // 4, 10)
    # per step of one (sub-)environment, in seconds
    work: dict[str, tuple[Runner, int, int]] = {
        "bare": (_bare_loop(), steps, 1),
        "env_gradient": (env_grad, steps, 1),
        "env_li_malik_obs": (env_psi, steps, 1),
        "vector": (vector, vec_steps, num_envs),
        "sync": (sync, vec_steps, num_envs),
    }
    names = list(work)
    rounds: list[dict[str, float]] = []
    for r in range(repeats):
        times = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            runner, n_steps, per = work[name]
            times[name] = runner(n_steps) / (n_steps * per)
        rounds.append(times)
    for env in (grad_env, psi_env, vector_env, sync_env):
        env.close()

    def median(key: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(key(t) for t in rounds)

    def spread(key: Callable[[dict[str, float]], float]) -> list[float]:
        return [min(key(t) for t in rounds), max(key(t) for t in rounds)]

    ratios = {
        "env_over_bare_gradient": lambda t: t["env_gradient"] / t["bare"],
        "env_over_bare_li_malik_obs": lambda t: t["env_li_malik_obs"] / t["bare"],
        "vector_over_sync": lambda t: t["sync"] / t["vector"],
    }
    result = {
        "env": ENV_ID,
        "torch_threads": threads,
        "repeats": repeats,
        "bare_torch_ms_per_step": 1e3 * median(lambda t: t["bare"]),
        "env_gradient_ms_per_step": 1e3 * median(lambda t: t["env_gradient"]),
        "env_li_malik_obs_ms_per_step": 1e3 * median(lambda t: t["env_li_malik_obs"]),
        "num_envs": num_envs,
        "vector_steps_per_s": median(lambda t: 1 / t["vector"]),
        "sync_vector_steps_per_s": median(lambda t: 1 / t["sync"]),
        **{name: median(key) for name, key in ratios.items()},
        "range": {name: spread(key) for name, key in ratios.items()},
    }
    table = Table(title=f"optenv speed ({ENV_ID}, torch threads = {threads}, "
                        f"median of {repeats} interleaved rounds)")
    table.add_column("measurement")
    table.add_column("median", justify="right")
    table.add_column("range over rounds", justify="right")
    table.add_row("bare torch loop, ms/step", f"{result['bare_torch_ms_per_step']:.3f}", "")
    table.add_row("env step + Adam, features=gradient, ms/step",
                  f"{result['env_gradient_ms_per_step']:.3f}", "")
    table.add_row("env step + Adam, features=li_malik_obs, ms/step",
                  f"{result['env_li_malik_obs_ms_per_step']:.3f}", "")
    table.add_row(f"OptimizeeVectorEnv B={num_envs}, steps/s",
                  f"{result['vector_steps_per_s']:,.0f}", "")
    table.add_row(f"SyncVectorEnv {num_envs} envs, steps/s",
                  f"{result['sync_vector_steps_per_s']:,.0f}", "")
    for label, name, fmt in (("ratio env/bare (gradient)", "env_over_bare_gradient", ".2f"),
                             ("ratio env/bare (li_malik_obs)", "env_over_bare_li_malik_obs",
                              ".2f"),
                             ("ratio vector/sync", "vector_over_sync", ".2f")):
        lo, hi = result["range"][name]
        table.add_row(label, f"{result[name]:{fmt}}x", f"{lo:{fmt}}x - {hi:{fmt}}x")
    Console().print(table)
    return result
