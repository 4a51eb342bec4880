"""``optenv demo``: gradient descent over a learning-rate grid, run through a vector env.

A tour of the interface on the embedded default problem: one
:class:`~optenv.vector.OptimizeeVectorEnv` holds one MLP training run per learning
rate (the grid is a batch dimension), the policy reads the ``gradient`` feature set
and answers with ``a = −lr · g / step_scale``. It writes ``curves.png`` and
``results.json`` to the run folder and prints the final losses.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

__all__ = ["run_demo"]

LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0)


def run_demo(
    env_id: str = "optenv/MLP-Digits-v0", out: Path = Path("runs/demo"), seed: int = 0
) -> dict:
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    import optenv  # noqa: F401 - registers the suite

    lrs = np.asarray(LEARNING_RATES, dtype=np.float32)
    env = gym.make_vec(env_id, num_envs=len(lrs), features="gradient", layout="coords")
    horizon = env.max_episode_steps
    step_scale = env.loop.step_scale
    obs, info = env.reset(seed=seed)
    curves = [info["loss"].copy()]
    start = time.perf_counter()
    for _ in tqdm(range(horizon), desc=f"{env_id} x {len(lrs)} learning rates", leave=False):
        grad = obs[..., 0]
        obs, _, terminated, truncated, info = env.step(-lrs[:, None] * grad / step_scale)
        curves.append(np.where(terminated, np.nan, info["loss"]))
        if truncated.any():
            break
    wall = time.perf_counter() - start
    env.close()
    curves_arr = np.stack(curves, axis=1)  # (len(lrs), T + 1)

    out.mkdir(parents=True, exist_ok=True)
    result = {
        "env": env_id,
        "seed": seed,
        "policy": "gradient descent a = -lr * g / step_scale (actions clipped to [-1, 1])",
        "learning_rates": lrs.tolist(),
        "final_loss": [float(c[-1]) for c in curves_arr],
        "curves": [[float(v) for v in c] for c in curves_arr],
        "wall_s": wall,
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "results.json")
    _plot(curves_arr, lrs, env_id, out / "curves.png")

    table = Table(title=f"{env_id}: gradient descent, {horizon} steps, {wall:.1f} s")
    table.add_column("learning rate")
    table.add_column("initial loss")
    table.add_column("final loss")
    for lr, c in zip(lrs, curves_arr, strict=True):
        table.add_row(f"{lr:g}", f"{c[0]:.4f}", f"{c[-1]:.4f}")
    console = Console()
    console.print(table)
    console.print(f"wrote {out / 'results.json'} and {out / 'curves.png'}")
    return result


def _plot(curves: np.ndarray, lrs: np.ndarray, title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for lr, c in zip(lrs, curves, strict=True):
        ax.plot(np.arange(len(c)), c, label=f"SGD lr={lr:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (true objective)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
