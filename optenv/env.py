"""``OptimizeeEnv``: training a model, as a Gymnasium POMDP (Li & Malik 2017, section 3.3)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from optenv.features import FeatureSet, make_features
from optenv.inner import DEFAULT_STEP_SCALE, OBS_BOUND, InnerLoop
from optenv.problems.base import Optimizee, TaskFamily

__all__ = ["ENV_OPTIONS", "LAYOUTS", "OptimizeeEnv", "build_loop"]

LAYOUTS = ("flat", "coords")


def build_loop(
    task: str | TaskFamily | Callable[..., TaskFamily],
    num_instances: int,
    *,
    features: str = "li_malik_obs",
    feature_kwargs: dict[str, Any] | None = None,
    return_state: bool = False,
    state_feature_kwargs: dict[str, Any] | None = None,
    step_scale: float = DEFAULT_STEP_SCALE,
    reward: str = "objective",
    divergence_factor: float = 1e3,
    **task_kwargs: Any,
) -> InnerLoop:
    """Resolve the task and the feature sets and build the shared :class:`InnerLoop`.

    The keyword arguments here are the env options both envs accept (documented in
    :class:`OptimizeeEnv`); all others go to the task factory.
    """
    from optenv.registry import resolve_task  # registry imports nothing from here

    family = resolve_task(task, **task_kwargs)
    feature_set: FeatureSet = make_features(features, **(feature_kwargs or {}))
    if state_feature_kwargs and not return_state:
        raise ValueError("state_feature_kwargs needs return_state=True, got "
                         f"{state_feature_kwargs!r} without it")
    state_set = (make_features("li_malik_state", **(state_feature_kwargs or {}))
                 if return_state else None)
    return InnerLoop(
        family,
        num_instances,
        feature_set,
        state_features=state_set,
        step_scale=step_scale,
        reward=reward,
        divergence_factor=divergence_factor,
    )


#: arguments the envs take for themselves; every other gym.make keyword goes to the task
ENV_OPTIONS = frozenset(
    [p.name for p in inspect.signature(build_loop).parameters.values()
     if p.kind is inspect.Parameter.KEYWORD_ONLY]
    + ["layout", "render_mode", "max_episode_steps"]
)


def observation_space(n: int, dim: int, layout: str) -> spaces.Box:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    shape = (n * dim,) if layout == "flat" else (n, dim)
    return spaces.Box(-OBS_BOUND, OBS_BOUND, shape, dtype=np.float32)


def check_action(action: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """The action as a float32 tensor clipped to [-1, 1]; ValueError if malformed."""
    a = np.asarray(action, dtype=np.float32)
    if a.shape != shape:
        raise ValueError(f"action has shape {a.shape}, expected {shape}")
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a.reshape(-1)))[:5].tolist()
        raise ValueError(f"action contains NaN or inf (at flat indices {bad}...)")
    # Agents such as SB3's sample unbounded Gaussians; the step is bounded by step_scale.
    return torch.from_numpy(np.clip(a, -1.0, 1.0))


class OptimizeeEnv(gym.Env[np.ndarray, np.ndarray]):
    """Training an optimizee, one update step per env step.

    ## Description
    The environment is the inner optimization of Li & Malik, "Learning to Optimize
    Neural Nets" (2017), section 3.3: the agent is the update rule. Each episode
    draws a problem from a task family (a random quadratic, an MLP on a dataset...)
    and an initial iterate x₀; at every step the agent proposes a step Δx for all
    n parameters, the iterate moves, and a fresh minibatch gives the next noisy loss
    and gradient. The state s_t = (x_t, Φ_t) is hidden; the agent observes the
    features Ψ_t, which makes the problem a POMDP.

    ## Action Space
    ``Box(-1, 1, (n,), float32)``: the step is ``Δx = step_scale · a`` (actions are
    clipped to [-1, 1]; a NaN/inf or wrongly shaped action raises ``ValueError``).

    ## Observation Space
    The feature set named by ``features`` (default ``li_malik_obs``, Ψ: 3 features
    per coordinate), float32, clipped to ±1e6 with NaN replaced by 0. ``layout="flat"``
    gives shape ``(n·k,)`` (coordinate-major), ``layout="coords"`` gives ``(n, k)``.

    ## Rewards
    ``−f(x_{t+1})``, the true objective (e.g. full training-set loss) after the step;
    ``reward="minibatch"`` uses the minibatch loss instead. A diverged step gets
    ``−divergence_factor · max(|f(x₀)|, 1)`` so the reward stays finite.

    ## Starting State
    A problem from the task family and x₀ from the problem's initializer, both drawn
    from the generator seeded by ``reset(seed=...)``. ``reset(options={"problem":
    optimizee, "x0": array})`` fixes either one (an ``Optimizee`` with one instance,
    an array of shape ``(n,)``).

    ## Episode End
    Terminated when the run diverges: a non-finite loss, gradient or objective, or an
    objective above ``divergence_factor · max(|f(x₀)|, 1)`` (``info["diverged"]``).
    Truncated at the registered horizon (``TimeLimit``).

    ## Info
    ``loss`` (true objective), ``minibatch_loss``, ``grad_norm``, ``diverged``, ``t``;
    with ``return_state=True`` also ``state``: ``(n, 76)`` float32, x_t and Φ_t per
    coordinate, and ``grad``: ``(n,)`` float32, the minibatch gradient at x_t (for guided
    policy search).

    ## Arguments
    ``task`` (registered task name, ``"module:callable"``, a ``TaskFamily`` or a
    factory), ``features``, ``feature_kwargs``, ``layout``, ``step_scale``,
    ``reward``, ``return_state``, ``state_feature_kwargs`` (options of Φ, e.g.
    ``{"grad_scale": "instance_rms"}``), ``divergence_factor``, ``render_mode``
    (``"rgb_array"`` draws the loss curve); any other keyword goes to the task
    factory, e.g. ``gym.make("optenv/MLP-Digits-v0", activation="tanh")``.

    ## Version History
    * v0: initial release.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str | TaskFamily | Callable[..., TaskFamily],
        *,
        layout: str = "flat",
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.loop = build_loop(task, 1, **kwargs)
        self.layout = layout
        self.return_state = self.loop.state_features is not None
        self.render_mode = render_mode
        self.n = self.loop.n
        self.groups = self.loop.groups
        self.observation_space = observation_space(self.n, self.loop.features.dim, layout)
        self.action_space = spaces.Box(-1.0, 1.0, (self.n,), dtype=np.float32)
        self._curve: list[float] = []
        self._ready = False

    # -- Gymnasium API -------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        problem = options.pop("problem", None)
        x0 = options.pop("x0", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; expected 'problem', 'x0'")
        if problem is not None and not isinstance(problem, Optimizee):
            raise ValueError(f"options['problem'] must be an Optimizee, got {type(problem)}")
        torch_seed = int(self.np_random.integers(0, 2**62))
        self.loop.reset(torch_seed, problem=problem, x0=x0)
        self._ready = True
        self._curve = [float(self.loop.last.objective[0])]
        return self._observation(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        result = self.loop.step(check_action(action, (self.n,))[None])
        # B = 1: item() reads the one element without indexing a view first
        terminated = bool(result.diverged.item())
        self._curve.append(result.objective.item())
        return self._observation(), float(result.reward.item()), terminated, False, self._info()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from optenv.plotting import curve_image

        return curve_image(self._curve, title=self.spec.id if self.spec else "optimizee")

    # -- helpers -------------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        obs = self.loop.observation()[0]
        if self.layout == "flat":
            obs = obs.reshape(-1)
        return obs.numpy()

    def _info(self) -> dict[str, Any]:
        last = self.loop.last
        info: dict[str, Any] = {
            "loss": float(last.objective.item()),
            "minibatch_loss": float(last.minibatch_loss.item()),
            "grad_norm": float(last.grad_norm.item()),
            "diverged": bool(last.diverged.item()),
            "t": int(self.loop.t.item()),
        }
        if self.return_state:
            info["state"] = self.loop.full_state()[0].numpy()
            info["grad"] = self.loop.grad[0].numpy().astype(np.float32)
        return info
