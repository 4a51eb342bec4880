"""The policy protocol: every agent's product is a :class:`StepPolicy`.

A StepPolicy is an update rule over a batch of ``B`` problems with ``n`` coordinates
each: it declares the feature set it reads and maps features ``(B, n, k)`` to a step
``Δx`` ``(B, n)``. Adam, a GPS-trained LSTM and an L2L LSTM are all StepPolicies, so
one runner (:func:`rollout`), one benchmark and one ``torch.optim`` adapter
(:class:`LearnedOptimizer`) serve them all.

Policy state is a ``dict[str, Tensor]`` whose tensors have leading dimension ``B``: it
can be checkpointed, kept in an optimizer ``state_dict`` and restarted per instance.
Hyperparameters may be tensors ``(B,)`` (one learning rate per instance), which is how
a learning-rate grid runs as one batch.

An :class:`Agent` produces a StepPolicy: a baseline by tuning its hyperparameters, a
learned optimizer by training. Agents are found by name through the agent registry
(:func:`optenv.registry.make_agent`).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from optenv.features import FeatureSet, make_features
from optenv.inner import InnerLoop, sanitize_features
from optenv.problems.base import CoordinateGroup, Optimizee, TaskFamily, groups_from_shapes

__all__ = [
    "Agent",
    "LearnedOptimizer",
    "PolicyState",
    "Rollout",
    "StepPolicy",
    "make_problem",
    "rollout",
]

PolicyState = dict[str, Tensor]

#: feature sets that read the loss value (LearnedOptimizer then needs it)
_LOSS_FEATURES = frozenset({"li_malik_obs", "li_malik_state"})


class StepPolicy(abc.ABC):
    """An update rule: features ``(B, n, k)`` -> step ``Δx`` ``(B, n)``.

    Subclasses set :attr:`features` (a feature-set name of :mod:`optenv.features`)
    and, if needed, :attr:`feature_kwargs`, and implement :meth:`reset` and
    :meth:`step`. ``step`` runs under ``torch.no_grad()`` in :func:`rollout`; a
    meta-trainer that differentiates through it calls it directly.
    """

    #: name of the feature set the policy reads
    features: str = "gradient"
    #: constructor arguments of that feature set
    feature_kwargs: ClassVar[dict[str, Any]] = {}

    @abc.abstractmethod
    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        """Initial state for ``batch`` problems of ``n`` coordinates."""

    @abc.abstractmethod
    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        """The step ``Δx`` ``(B, n)`` for features ``(B, n, k)``, and the next state."""

    def make_features(self) -> FeatureSet:
        """A fresh instance of the feature set this policy reads."""
        return make_features(self.features, **self.feature_kwargs)

    def reset_where(self, state: PolicyState, mask: Tensor, n: int,
                    groups: tuple[CoordinateGroup, ...]) -> PolicyState:
        """Restart the instances where ``mask`` (bool ``(B,)``) is set."""
        fresh = self.reset(n, groups, mask.shape[0])
        for key, old in state.items():
            m = mask.view(-1, *([1] * (old.dim() - 1)))
            state[key] = torch.where(m, fresh[key], old)
        return state


class Agent(abc.ABC):
    """Something that produces a :class:`StepPolicy` for an environment.

    ``train`` tunes (a baseline) or meta-trains (a learned optimizer); ``policy``
    returns the result; ``save``/``load`` keep it. :attr:`training_cost` records what
    training spent (environment steps, wall time) so that the bench can compare
    policy-search methods on sample efficiency.
    """

    #: registry name, e.g. ``"adam"``
    name: str = ""
    #: whether ``train(env_id, steps=, seeds=, grid=, metric=)`` tunes it cheaply, so that
    #: ``optenv bench`` may do so; a learned optimizer is trained with ``optenv train``
    #: and benched from its saved file instead
    tunable: ClassVar[bool] = True

    def __init__(self) -> None:
        self.training_cost: dict[str, float] = {"env_steps": 0.0, "wall_s": 0.0}

    @abc.abstractmethod
    def train(self, env_id: str, **kwargs: Any) -> dict[str, Any]:
        """Tune or train on ``env_id``; returns a summary (hyperparameters, metrics)."""

    @abc.abstractmethod
    def policy(self) -> StepPolicy:
        """The update rule this agent stands for now."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the agent: tensors and JSON-able values only."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able) for :func:`optenv.registry.load_agent`."""
        return {}

    def save(self, path: str | Path) -> Path:
        """Write the agent to ``path`` atomically (``torch.save`` of tensors and JSON values)."""
        from optenv.registry import agent_entry_point
        from optenv.runio import atomic_torch_save

        payload = {
            "agent": agent_entry_point(self),
            "config": self.config(),
            "state": self.state_dict(),
            "training_cost": dict(self.training_cost),
        }
        return atomic_torch_save(payload, Path(path))


@dataclass
class Rollout:
    """Curves of one batched run: ``objective[b, t]`` is f(x_t) for t = 0..T.

    A run that diverged keeps its divergence threshold as objective from the step it
    diverged on, and ``diverged[b]`` is set; :attr:`final` and :attr:`auc` are ``inf``
    there, so a diverged run is never mistaken for a good one.
    """

    objective: Tensor
    minibatch_loss: Tensor
    diverged: Tensor
    x: Tensor
    wall_s: float
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def final(self) -> Tensor:
        """f(x_T) per instance (inf where the run diverged)."""
        return torch.where(self.diverged, torch.inf, self.objective[:, -1])

    @property
    def auc(self) -> Tensor:
        """Mean objective over steps 1..T (inf where the run diverged)."""
        return torch.where(self.diverged, torch.inf, self.objective[:, 1:].mean(1))


def make_problem(family: TaskFamily, seeds: Sequence[int]) -> tuple[Optimizee, Tensor]:
    """One batched problem with instance ``i`` drawn from generator seed ``seeds[i]``.

    Each seed's problem and initial iterate come from its own generator, so the problem
    a seed names does not depend on which other seeds run beside it.
    """
    if len(seeds) == 0:
        raise ValueError("seeds must not be empty")
    parts, xs = [], []
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        part = family.sample(gen, 1)
        parts.append(part)
        xs.append(part.init(gen))
    return parts[0].concat(parts[1:]), torch.cat(xs)


def rollout(
    policy: StepPolicy,
    task: TaskFamily | Optimizee,
    steps: int,
    *,
    seeds: Sequence[int] = (0,),
    x0: Tensor | None = None,
    minibatch_seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Rollout:
    """Run ``policy`` for ``steps`` steps on a batch of problems, as one computation.

    ``task`` is a family (instance ``i`` drawn with seed ``seeds[i]``, see
    :func:`make_problem`) or a given batched problem (then ``x0`` or its own init).
    The policy's ``Δx`` is applied as is: no clipping, no step scale. A diverged run
    is frozen (its step is zeroed from then on).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    if isinstance(task, Optimizee):
        problem = task
    elif isinstance(task, TaskFamily):
        problem, drawn = make_problem(task, seeds)
        x0 = drawn if x0 is None else x0
    else:
        raise ValueError(f"task must be a TaskFamily or an Optimizee, got {type(task).__name__}")
    B = problem.num_instances
    loop = InnerLoop(_Given(problem), B, policy.make_features(), step_scale=1.0)
    start = time.perf_counter()
    loop.reset(minibatch_seed, problem=problem, x0=x0)
    state = policy.reset(loop.n, loop.groups, B)
    objective, minibatch = [loop.last.objective], [loop.last.minibatch_loss]
    diverged = ~torch.isfinite(loop.last.objective)
    for t in range(steps):
        with torch.no_grad():
            delta, state = policy.step(loop.observation(), state)
            delta = torch.where(diverged[:, None], 0.0, torch.nan_to_num(delta, nan=0.0))
        result = loop.step(delta)
        diverged = diverged | result.diverged
        objective.append(torch.where(diverged, loop.threshold, result.objective))
        minibatch.append(result.minibatch_loss)
        if progress is not None:
            progress(t + 1)
    return Rollout(torch.stack(objective, 1), torch.stack(minibatch, 1), diverged, loop.x,
                   time.perf_counter() - start)


class _Given(TaskFamily):
    """The family of one given problem: lets :class:`InnerLoop` run a fixed problem."""

    def __init__(self, problem: Optimizee) -> None:
        self.problem = problem

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> Optimizee:
        return self.problem if num_instances == self.problem.num_instances else \
            self.problem.select(torch.zeros(num_instances, dtype=torch.long))


class LearnedOptimizer(torch.optim.Optimizer):
    """Any :class:`StepPolicy` as a ``torch.optim.Optimizer`` on your own model.

    All parameters are laid out as one flat vector (one coordinate group per parameter
    tensor, in order) and go through the same feature code the environments use, so
    the policy sees the inputs it was trained on. Feature sets that read the loss
    (``li_malik_obs``, ``li_malik_state``) need ``step(closure)`` or ``step(loss=...)``.
    ``state_dict()`` / ``load_state_dict()`` resume exactly.

    Example::

        opt = LearnedOptimizer(model.parameters(), policy)
        for x, y in data:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step(loss=loss)
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 policy: StepPolicy) -> None:
        if not isinstance(policy, StepPolicy):
            raise ValueError(f"policy must be a StepPolicy, got {type(policy).__name__}")
        super().__init__(params, {})
        self.policy = policy
        self.feature_set = policy.make_features()
        params_list = self._params()
        self.groups = groups_from_shapes({f"p{i}": tuple(p.shape) or (1,)
                                          for i, p in enumerate(params_list)})
        self.n = sum(p.numel() for p in params_list)

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _flat(tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.detach().reshape(-1).float() for t in tensors])[None]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None,  # type: ignore[override]
             loss: Tensor | float | None = None) -> Tensor | None:
        """One update. ``closure`` re-evaluates the model and returns the loss."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None and self.policy.features in _LOSS_FEATURES:
            raise ValueError(
                f"the policy reads feature set {self.policy.features!r}, which needs the "
                "loss: call step(closure) or step(loss=loss)"
            )
        params = self._params()
        x = self._flat(params)
        g = self._flat([torch.zeros_like(p) if p.grad is None else p.grad for p in params])
        scalar = loss.detach() if isinstance(loss, Tensor) else loss
        value = torch.tensor([0.0 if scalar is None else float(scalar)])
        # Optimizer.state is keyed by parameters; the whole flat state lives on the first.
        st = self.state[params[0]]
        if "features" not in st:
            st["features"] = self.feature_set.init(x, g, value)
            st["policy"] = self.policy.reset(self.n, self.groups, 1)
        else:
            st["features"] = self.feature_set.update(st["features"], x, g, value)
        delta, st["policy"] = self.policy.step(
            sanitize_features(self.feature_set.compute(st["features"])), st["policy"]
        )
        if not torch.isfinite(delta).all():
            raise ValueError("the policy produced a non-finite step")
        offset = 0
        for p in params:
            size = p.numel()
            p.add_(delta[0, offset:offset + size].view_as(p).to(p.dtype))
            offset += size
        return loss if closure is not None else None
