"""``OptimizeeVectorEnv``: ``num_envs`` optimizer environments as one batched computation.

This is the registered ``vector_entry_point`` of every optenv id: ``gym.make_vec(id,
num_envs=B)`` gives one :class:`~optenv.inner.InnerLoop` over ``B`` problem instances
instead of ``B`` Python env objects, which is what makes GPS sampling, ES populations and
seeds-times-learning-rate grids cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from optenv.env import OptimizeeEnv, build_loop, check_action, observation_space
from optenv.problems.base import TaskFamily

__all__ = ["OptimizeeVectorEnv"]


class OptimizeeVectorEnv(VectorEnv):
    """``num_envs`` independent :class:`~optenv.env.OptimizeeEnv` runs, batched in torch.

    Observations, actions, rewards and ``info`` are those of :class:`OptimizeeEnv`,
    stacked over a leading ``num_envs`` axis (``info`` entries are arrays with the
    usual ``"_key"`` masks). Autoreset follows Gymnasium's ``NEXT_STEP`` mode: the
    step after an episode ends resets that sub-environment, ignores its action and
    returns reward 0. Episodes are truncated after ``max_episode_steps``.

    Instances share one torch generator, so sub-environment ``i`` is not bit-identical
    to a single env seeded ``seed + i``; the whole vector env is deterministic given
    its seed.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": [],
    }

    def __init__(
        self,
        task: str | TaskFamily | Callable[..., TaskFamily],
        num_envs: int = 1,
        *,
        max_episode_steps: int | None = None,
        layout: str = "flat",
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        if max_episode_steps is not None and int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps!r}")
        if render_mode is not None:
            raise ValueError(f"OptimizeeVectorEnv does not render; got render_mode={render_mode!r}")
        self.loop = build_loop(task, int(num_envs), **kwargs)
        self.num_envs = int(num_envs)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.layout = layout
        self.return_state = self.loop.state_features is not None
        self.render_mode = None
        self.n = self.loop.n
        self.groups = self.loop.groups
        self.single_observation_space = observation_space(self.n, self.loop.features.dim, layout)
        self.single_action_space = spaces.Box(-1.0, 1.0, (self.n,), dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = torch.zeros(self.num_envs, dtype=torch.bool)
        self._ready = False

    __doc__ = (__doc__ or "") + "\n" + (OptimizeeEnv.__doc__ or "")

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; expected 'reset_mask'")
        if mask is None or not self._ready:
            self.loop.reset(int(self.np_random.integers(0, 2**62)))
        else:
            mask_t = torch.as_tensor(np.asarray(mask, dtype=bool))
            if mask_t.shape != (self.num_envs,):
                raise ValueError(
                    f"reset_mask has shape {tuple(mask_t.shape)}, expected ({self.num_envs},)"
                )
            self.loop.reset_where(mask_t)
        self._autoreset.zero_()
        self._ready = True
        return self._observation(), self._info()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        a = check_action(actions, (self.num_envs, self.n))
        result = self.loop.step(a)
        restarting = self._autoreset.clone()
        if restarting.any():
            self.loop.reset_where(restarting)
        terminated = result.diverged & ~restarting
        truncated = torch.zeros_like(terminated)
        if self.max_episode_steps is not None:
            truncated = (self.loop.t >= self.max_episode_steps) & ~terminated & ~restarting
        rewards = torch.where(restarting, 0.0, result.reward)
        self._autoreset = terminated | truncated
        return (
            self._observation(),
            rewards.numpy().astype(np.float32),
            terminated.numpy().copy(),
            truncated.numpy().copy(),
            self._info(),
        )

    def _observation(self) -> np.ndarray:
        obs = self.loop.observation()
        if self.layout == "flat":
            obs = obs.reshape(self.num_envs, -1)
        return obs.numpy()

    def _info(self) -> dict[str, Any]:
        last = self.loop.last
        info: dict[str, Any] = {
            "loss": last.objective.numpy().astype(np.float64),
            "minibatch_loss": last.minibatch_loss.numpy().astype(np.float64),
            "grad_norm": last.grad_norm.numpy().astype(np.float64),
            "diverged": last.diverged.numpy().copy(),
            "t": self.loop.t.numpy().copy(),
        }
        if self.return_state:
            info["state"] = self.loop.full_state().numpy()
            info["grad"] = self.loop.grad.numpy().astype(np.float32)
        present = np.ones(self.num_envs, dtype=bool)
        info.update({f"_{k}": present.copy() for k in list(info)})
        return info
