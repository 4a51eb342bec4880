"""The batched inner loop that every optimizer environment drives.

:class:`InnerLoop` holds ``B`` instances of an optimizee, their iterates ``x``
(``(B, n)``), the feature history and the divergence bookkeeping. The single env
(:mod:`optenv.env`) is an ``InnerLoop`` with ``B = 1``; the vector env
(:mod:`optenv.vector`) is one with ``B = num_envs``. Keeping one implementation
means the two can never disagree on a reward, a feature or a divergence rule.

Time convention (Li & Malik 2017, section 3.3): step ``t = 0`` is the initial
iterate. At every step the loop draws a fresh minibatch, evaluates the minibatch
loss f̂ and gradient ∇f̂ at the current iterate and the true objective f, and pushes
them to the feature history. An action moves ``x_{t+1} = x_t + Δx``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optenv.features import FeatureSet
from optenv.problems.base import Optimizee, TaskFamily

__all__ = ["DEFAULT_STEP_SCALE", "OBS_BOUND", "InnerLoop", "StepResult", "sanitize_features"]

#: the step bound of an action: Δx = step_scale · a with a ∈ [-1, 1] (envs' default)
DEFAULT_STEP_SCALE = 0.1
#: Observations are clipped to [-OBS_BOUND, OBS_BOUND] (Gymnasium's checker rejects
#: infinite Box bounds) and NaNs become 0, so an agent never sees a non-finite input.
OBS_BOUND = 1e6


def sanitize_features(features: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Non-finite entries replaced and values clipped to ±OBS_BOUND: a new tensor, or
    ``features`` itself when ``inplace`` (a fresh observation need not be copied)."""
    if not inplace:
        features = torch.nan_to_num(features, nan=0.0, posinf=OBS_BOUND, neginf=-OBS_BOUND)
    else:
        features.nan_to_num_(nan=0.0, posinf=OBS_BOUND, neginf=-OBS_BOUND)
    return features.clamp_(-OBS_BOUND, OBS_BOUND)


@dataclass
class StepResult:
    """What one step produced, per instance (all tensors ``(B,)``)."""

    objective: torch.Tensor
    minibatch_loss: torch.Tensor
    grad_norm: torch.Tensor
    diverged: torch.Tensor
    reward: torch.Tensor


class InnerLoop:
    """``B`` inner optimization runs advanced in lockstep as one torch computation.

    Args:
        family: the task family problems are drawn from at reset.
        num_instances: ``B``.
        features: observation features Ψ (or any feature set).
        state_features: state features Φ for GPS (``None`` unless requested).
        step_scale: ``Δx = step_scale · action``.
        reward: ``"objective"`` (−f(x_{t+1}), the true objective) or ``"minibatch"``
            (−f̂(x_{t+1})).
        divergence_factor: a run diverges when its objective is non-finite or exceeds
            ``divergence_factor · max(|f(x_0)|, 1)``; its reward is then clipped to
            minus that threshold so it stays finite.
    """

    def __init__(
        self,
        family: TaskFamily,
        num_instances: int,
        features: FeatureSet,
        *,
        state_features: FeatureSet | None = None,
        step_scale: float = DEFAULT_STEP_SCALE,
        reward: str = "objective",
        divergence_factor: float = 1e3,
    ) -> None:
        if reward not in ("objective", "minibatch"):
            raise ValueError(f"reward must be 'objective' or 'minibatch', got {reward!r}")
        if not step_scale > 0:
            raise ValueError(f"step_scale must be > 0, got {step_scale!r}")
        if not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {divergence_factor!r}")
        self.family = family
        self.num_instances = int(num_instances)
        self.features = features
        self.state_features = state_features
        self.step_scale = float(step_scale)
        self.reward_kind = reward
        self.divergence_factor = float(divergence_factor)
        self.problem: Optimizee | None = None
        self.generator = torch.Generator()
        # The spaces need n and the groups before the first reset: probe the family once.
        probe = family.sample(torch.Generator().manual_seed(0), 1)
        self.n = probe.n
        self.groups = probe.groups

    # -- reset -------------------------------------------------------------------------
    def reset(
        self,
        seed: int,
        *,
        problem: Optimizee | None = None,
        x0: torch.Tensor | None = None,
    ) -> None:
        """Start all ``B`` runs: seed the generator, draw problems and ``x_0``."""
        self.generator = torch.Generator().manual_seed(int(seed))
        if problem is None:
            problem = self.family.sample(self.generator, self.num_instances)
        self._check_problem(problem)
        self.problem = problem
        x = problem.init(self.generator) if x0 is None else self._check_x0(x0)
        self.x = x.detach().clone()
        self.t = torch.zeros(self.num_instances, dtype=torch.long)
        loss, grad, obj = self._evaluate(self.x)
        self.f0 = obj.clone()
        self.threshold = self.divergence_factor * self.f0.abs().clamp_min(1.0)
        self.last = StepResult(obj, loss, grad.norm(dim=1), ~torch.isfinite(obj), -obj)
        self.grad = grad
        self.feature_state = self.features.init(self.x, grad, loss)
        if self.state_features is not None:
            self.state_feature_state = self.state_features.init(self.x, grad, loss)

    def reset_where(self, mask: torch.Tensor) -> None:
        """Restart the runs where ``mask`` is set with new problems and ``x_0``."""
        assert self.problem is not None
        fresh = self.family.sample(self.generator, self.num_instances)
        self.problem.splice(mask, fresh)
        x0 = self.problem.init(self.generator)
        self.x = torch.where(mask[:, None], x0, self.x)
        self.t = torch.where(mask, 0, self.t)
        loss, grad, obj = self._evaluate(self.x)
        self.f0 = torch.where(mask, obj, self.f0)
        self.threshold = self.divergence_factor * self.f0.abs().clamp_min(1.0)
        self.grad = torch.where(mask[:, None], grad, self.grad)
        self.feature_state = self.features.reset_where(self.feature_state, mask, self.x, grad, loss)
        if self.state_features is not None:
            self.state_feature_state = self.state_features.reset_where(
                self.state_feature_state, mask, self.x, grad, loss
            )
        self.last = StepResult(
            torch.where(mask, obj, self.last.objective),
            torch.where(mask, loss, self.last.minibatch_loss),
            torch.where(mask, grad.norm(dim=1), self.last.grad_norm),
            torch.where(mask, ~torch.isfinite(obj), self.last.diverged),
            torch.where(mask, -obj, self.last.reward),
        )

    # -- step --------------------------------------------------------------------------
    def step(self, action: torch.Tensor) -> StepResult:
        """Apply ``Δx = step_scale · action`` to every run; evaluate; update features."""
        self.x = torch.add(self.x, action, alpha=self.step_scale)
        self.t = self.t + 1
        loss, grad, obj = self._evaluate(self.x)
        self.grad = grad
        self.feature_state = self.features.update(self.feature_state, self.x, grad, loss)
        if self.state_features is not None:
            self.state_feature_state = self.state_features.update(
                self.state_feature_state, self.x, grad, loss
            )
        grad_norm = grad.norm(dim=1)
        # one check for all three: the norm is non-finite iff the gradient is (or overflows)
        finite = torch.isfinite(obj + loss + grad_norm)
        diverged = ~finite | (obj > self.threshold)
        value = obj if self.reward_kind == "objective" else loss
        reward = -torch.where(diverged, self.threshold, value)
        self.last = StepResult(obj, loss, grad_norm, diverged, reward)
        return self.last

    # -- outputs -----------------------------------------------------------------------
    def observation(self) -> torch.Tensor:
        """Observation features ``(B, n, k)``: a new, finite, clipped tensor."""
        return sanitize_features(self.features.compute(self.feature_state),
                                 inplace=self.features.compute_is_new)

    def full_state(self) -> torch.Tensor:
        """GPS state s_t = (x_t, Φ_t) per coordinate, ``(B, n, 1 + dim Φ)``."""
        if self.state_features is None:
            raise RuntimeError("full_state() needs state features (return_state=True)")
        phi = self.state_features.compute(self.state_feature_state)
        return sanitize_features(torch.cat([self.x[..., None], phi], dim=-1), inplace=True)

    # -- helpers -----------------------------------------------------------------------
    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.problem is not None
        batch = self.problem.sample_batch(self.generator)
        loss, grad = self.problem.loss_and_grad(x, batch)
        with torch.no_grad():
            obj = self.problem.objective(x)
        return loss, grad, obj.detach()

    def _check_problem(self, problem: Optimizee) -> None:
        if not isinstance(problem, Optimizee):
            raise ValueError(f"problem must be an optenv Optimizee, got {type(problem).__name__}")
        if problem.num_instances != self.num_instances:
            raise ValueError(
                f"problem has {problem.num_instances} instances, expected {self.num_instances}"
            )
        if problem.n != self.n:
            raise ValueError(f"problem has n={problem.n} parameters, expected n={self.n}")

    def _check_x0(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = torch.as_tensor(x0, dtype=torch.float32)
        if x0.shape == (self.n,):
            x0 = x0.expand(self.num_instances, -1)
        if x0.shape != (self.num_instances, self.n):
            raise ValueError(
                f"x0 has shape {tuple(x0.shape)}, expected ({self.n},) or "
                f"({self.num_instances}, {self.n})"
            )
        if not torch.isfinite(x0).all():
            raise ValueError("x0 contains NaN or inf")
        return x0
