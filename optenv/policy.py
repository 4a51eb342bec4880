"""The policy protocol: every agent's product is a :class:`StepPolicy`.

A StepPolicy is an update rule over a batch of ``B`` problems with ``n`` coordinates
each: it declares the feature set it reads, and maps features ``(B, n, k)`` to a step
``Δx`` ``(B, n)``. Adam, a GPS-trained LSTM and an L2L LSTM are all StepPolicies, so
one runner (:func:`rollout`), one benchmark and one ``torch.optim`` adapter
(:class:`LearnedOptimizer`) serve them all.

Policy state is a ``dict[str, Tensor]`` whose tensors have leading dimension ``B``, so
it can be checkpointed, saved in an optimizer ``state_dict`` and restarted per
instance.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from optenv.features import FeatureSet, make_features
from optenv.inner import InnerLoop, sanitize_features
from optenv.problems.base import CoordinateGroup, Optimizee, TaskFamily

__all__ = ["LearnedOptimizer", "PolicyState", "Rollout", "StepPolicy", "rollout"]

PolicyState = dict[str, Tensor]


class StepPolicy(abc.ABC):
    """An update rule: features ``(B, n, k)`` -> step ``Δx`` ``(B, n)``.

    Subclasses set :attr:`features` (a feature-set name of :mod:`optenv.features`) and
    optionally :attr:`feature_kwargs`, and implement :meth:`reset` and :meth:`step`.
    Hyperparameters that vary over a batch (a learning-rate grid) may be tensors of
    shape ``(B,)``.
    """

    #: name of the feature set the policy reads
    features: ClassVar[str] = "gradient"
    #: constructor arguments of that feature set
    feature_kwargs: ClassVar[dict[str, Any]] = {}

    @abc.abstractmethod
    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        """Initial state for ``batch`` problems of ``n`` coordinates."""

    @abc.abstractmethod
    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        """The step ``Δx`` ``(B, n)`` for features ``(B, n, k)``, and the next state."""

    def make_features(self) -> FeatureSet:
        return make_features(self.features, **self.feature_kwargs)

    def reset_where(self, state: PolicyState, mask: Tensor, n: int,
                    groups: tuple[CoordinateGroup, ...]) -> PolicyState:
        """Restart the instances where ``mask`` (bool ``(B,)``) is set."""
        fresh = self.reset(n, groups, mask.shape[0])
        for key, old in state.items():
            m = mask.view(-1, *([1] * (old.dim() - 1)))
            state[key] = torch.where(m, fresh[key], old)
        return state


@dataclass
class Rollout:
    """Curves of one batched run: ``objective[b, t]`` is f(x_t) for t = 0..T."""

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


def rollout(
    policy: StepPolicy,
    task: TaskFamily | Optimizee,
    steps: int,
    *,
    seed: int = 0,
    num_instances: int = 1,
    x0: Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> Rollout:
    """Run ``policy`` for ``steps`` steps on ``num_instances`` problems, batched.

    ``task`` is a family (problems drawn with ``seed``) or a given batched problem.
    The policy's step is applied as is (no clipping). A run that diverges is frozen:
    its later objective values repeat the divergence threshold, and ``diverged`` is set.
    """
    import time

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    problem = task if isinstance(task, Optimizee) else None
    family = task if isinstance(task, TaskFamily) else _Given(task)
    B = problem.num_instances if problem is not None else num_instances
    loop = InnerLoop(family, B, policy.make_features(), step_scale=1.0)
    start = time.perf_counter()
    loop.reset(seed, problem=problem, x0=x0)
    state = policy.reset(loop.n, loop.groups, B)
    objective = [loop.last.objective]
    minibatch = [loop.last.minibatch_loss]
    diverged = ~torch.isfinite(loop.last.objective)
    for t in range(steps):
        with torch.no_grad():
            delta, state = policy.step(sanitize_features(loop.features.compute(loop.feature_state)),
                                       state)
        delta = torch.where(diverged[:, None], 0.0, delta)
        result = loop.step(delta.detach())
        diverged = diverged | result.diverged
        objective.append(torch.where(diverged, loop.threshold, result.objective))
        minibatch.append(result.minibatch_loss)
        if progress is not None:
            progress(t + 1)
    return Rollout(torch.stack(objective, 1), torch.stack(minibatch, 1), diverged, loop.x,
                   time.perf_counter() - start)


class _Given(TaskFamily):
    """The family of one given problem (for :func:`rollout` on a fixed problem)."""

    def __init__(self, problem: Optimizee) -> None:
        self.problem = problem

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> Optimizee:
        return self.problem


class LearnedOptimizer(torch.optim.Optimizer):
    """Any :class:`StepPolicy` as a ``torch.optim.Optimizer`` on your own model.

    All parameters are laid out as one flat vector (one coordinate group per parameter
    tensor) and fed through the same feature code the environments use, so the policy
    sees the inputs it was trained on. Feature sets that read the loss (``li_malik_obs``,
    ``li_malik_state``) need ``step(closure)`` or ``step(loss=...)``.

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
        super().__init__(params, {})
        if not isinstance(policy, StepPolicy):
            raise ValueError(f"policy must be a StepPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.feature_set = policy.make_features()
        shapes = {f"p{i}": tuple(p.shape) for i, p in enumerate(self._params())}
        from optenv.problems.base import groups_from_shapes

        self.groups = groups_from_shapes(shapes)
        self.n = sum(p.numel() for p in self._params())

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _flat(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])[None].detach().float()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None,  # type: ignore[override]
             loss: Tensor | float | None = None) -> Tensor | None:
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        x, g = self._flat(params), self._flat(grads)
        value = torch.tensor([float("nan") if loss is None else float(loss)])
        st = self.state["policy"] if "policy" in self.state else None
        if st is None:
            st = {
                "features": self.feature_set.init(x, g, value),
                "policy": self.policy.reset(self.n, self.groups, 1),
            }
            self.state["policy"] = st
        else:
            st["features"] = self.feature_set.update(st["features"], x, g, value)
        features = sanitize_features(self.feature_set.compute(st["features"]))
        delta, st["policy"] = self.policy.step(features, st["policy"])
        delta = delta[0]
        offset = 0
        for p in params:
            size = p.numel()
            p.add_(delta[offset:offset + size].view_as(p).to(p.dtype))
            offset += size
        return loss if closure is not None else None
