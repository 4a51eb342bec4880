"""Training tricks of RNNprop (Lv et al. 2017, sections 4.1-4.2) as family wrappers.

* :class:`RandomScaling`: f_c(θ) = f(c ⊙ θ), started at c⁻¹ ⊙ θ₀, with each c_i = exp(p_i),
  p_i ~ U(−L, L) drawn per instance and coordinate (section 5: "L = 3 for the function
  f and L = 1 for the function g").
* :class:`ConvexCombination`: F(θ, x) = f(θ) + g(x), g(x) = (1/d) Σᵢ (xᵢ − vᵢ)², with
  v, x₀ ~ U[−1, 1]^d and d = 20 (section 5), and Random Scaling with L = 1 applied to g
  (g_c(x) = g(c ⊙ x), x started at c⁻¹ ⊙ x₀). The d extra coordinates are a
  :class:`CoordinateGroup` named ``"convex"``.

The RNNprop training optimizee is ``ConvexCombination(RandomScaling(base_mlp, 3.0))``.

Both wrap any :class:`TaskFamily`. The wrapped optimizee delegates minibatches to the
inner one; its ``instance_data`` holds its own tensors plus the inner ones under the
prefix ``"inner."`` (the same tensor objects), and :meth:`splice` splices its own data and
then delegates to the inner optimizee, so wrappers nest.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from optenv.problems.base import (
    CoordinateGroup,
    Optimizee,
    TaskFamily,
    check_positive_int,
)

__all__ = [
    "ConvexCombination",
    "ConvexCombinationOptimizee",
    "RandomScaling",
    "RandomScalingOptimizee",
    "WrappedOptimizee",
    "sample_log_uniform_scale",
]


def sample_log_uniform_scale(generator: torch.Generator, shape: tuple[int, ...],
                             L: float) -> torch.Tensor:
    """``exp(U(−L, L))`` of ``shape``: as likely in [1/10, 1/9] as in [9, 10] (RNNprop §5)."""
    return torch.exp((torch.rand(*shape, generator=generator) * 2.0 - 1.0) * L)


def _check_L(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class WrappedOptimizee(Optimizee):
    """An optimizee built around ``inner``; subclasses keep their own per-instance tensors
    in :attr:`own_data` and set :attr:`groups`."""

    def __init__(self, inner: Optimizee, groups: tuple[CoordinateGroup, ...],
                 own_data: dict[str, torch.Tensor]) -> None:
        self.inner = inner
        self.own_data = own_data
        merged = dict(own_data)
        merged.update({f"inner.{k}": v for k, v in inner.instance_data.items()})
        super().__init__(groups, inner.num_instances, merged)

    def sample_batch(self, generator: torch.Generator) -> Any:
        return self.inner.sample_batch(generator)

    def splice(self, mask: torch.Tensor, other: Optimizee) -> None:
        if type(other) is not type(self) or set(other.instance_data) != set(self.instance_data):
            raise ValueError("splice: the two optimizees come from different families")
        for name, mine in self.own_data.items():
            theirs = other.own_data[name]
            if theirs.shape[0] == mine.shape[0]:
                mine[mask] = theirs[mask]
            else:
                mine[mask] = theirs
        self.inner.splice(mask, other.inner)
        # the inner optimizee may rebind tensors in a custom splice: refresh the view
        self.instance_data = {**self.own_data,
                              **{f"inner.{k}": v for k, v in self.inner.instance_data.items()}}


    def select(self, index: torch.Tensor) -> Optimizee:
        out = copy.copy(self)
        out.inner = self.inner.select(index)
        out.num_instances = out.inner.num_instances
        out.own_data = {k: v[index] for k, v in self.own_data.items()}
        out.instance_data = {**out.own_data,
                             **{f"inner.{k}": v for k, v in out.inner.instance_data.items()}}
        return out


    def concat(self, others: list[Optimizee]) -> Optimizee:
        for p in others:
            if type(p) is not type(self):
                raise ValueError("concat: the optimizees come from different families")
        out = copy.copy(self)
        out.inner = self.inner.concat([p.inner for p in others])  # type: ignore[attr-defined]
        out.num_instances = out.inner.num_instances
        out.own_data = {k: torch.cat([self.own_data[k]] + [p.own_data[k] for p in others])
                        for k in self.own_data}  # type: ignore[attr-defined]
        out.instance_data = {**out.own_data,
                             **{f"inner.{k}": v for k, v in out.inner.instance_data.items()}}
        return out


class RandomScalingOptimizee(WrappedOptimizee):
    """f_c(θ) = f(c ⊙ θ) with ``c`` ``(B, n)`` in ``instance_data["scale"]``."""

    def __init__(self, inner: Optimizee, scale: torch.Tensor) -> None:
        super().__init__(inner, inner.groups, {"scale": scale})

    @property
    def scale(self) -> torch.Tensor:
        return self.own_data["scale"]

    def init(self, generator: torch.Generator) -> torch.Tensor:
        return self.inner.init(generator) / self.scale

    def loss(self, params: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.inner.loss(params * self.scale, batch)

    def objective(self, params: torch.Tensor) -> torch.Tensor:
        return self.inner.objective(params * self.scale)

    def test_objective(self, params: torch.Tensor) -> torch.Tensor | None:
        return self.inner.test_objective(params * self.scale)


@dataclass(eq=False)
class RandomScaling(TaskFamily):
    """Random Scaling (RNNprop, Lv et al. 2017, §4.1): f_c(θ) = f(c ⊙ θ), c_i = exp(U(−L, L)).

    Each instance draws its own ``c`` (one factor per coordinate) and starts at
    c⁻¹ ⊙ θ₀, so f_c(θ₀') = f(θ₀). RNNprop uses L = 3 on the optimizee.
    """

    family: TaskFamily
    L: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.family, TaskFamily):
            raise ValueError(f"family must be a TaskFamily, got {self.family!r}")
        self.L = _check_L("L", self.L)

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> RandomScalingOptimizee:
        inner = self.family.sample(generator, check_positive_int("num_instances", num_instances))
        scale = sample_log_uniform_scale(generator, (inner.num_instances, inner.n), self.L)
        return RandomScalingOptimizee(inner, scale)


class ConvexCombinationOptimizee(WrappedOptimizee):
    """F(θ, x) = f(θ) + (1/d) Σ (c_i x_i − v_i)²; ``instance_data`` holds ``convex.v``
    ``(B, d)`` and ``convex.scale`` ``(B, d)``."""

    def __init__(self, inner: Optimizee, v: torch.Tensor, scale: torch.Tensor) -> None:
        n, d = inner.n, v.shape[1]
        groups = (*inner.groups, CoordinateGroup("convex", slice(n, n + d), (d,), "vector"))
        super().__init__(inner, groups, {"convex.v": v, "convex.scale": scale})
        self.dim = d

    def convex_term(self, params: torch.Tensor) -> torch.Tensor:
        """g(c ⊙ x) ``(B,)`` for the last ``d`` coordinates ``x``."""
        x = params[:, self.inner.n:] * self.own_data["convex.scale"]
        return (x - self.own_data["convex.v"]).square().mean(1)

    def init(self, generator: torch.Generator) -> torch.Tensor:
        theta0 = self.inner.init(generator)
        x0 = torch.rand(self.num_instances, self.dim, generator=generator) * 2.0 - 1.0
        return torch.cat([theta0, x0 / self.own_data["convex.scale"]], dim=1)

    def loss(self, params: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.inner.loss(params[:, : self.inner.n], batch) + self.convex_term(params)

    def objective(self, params: torch.Tensor) -> torch.Tensor:
        return self.inner.objective(params[:, : self.inner.n]) + self.convex_term(params)

    def test_objective(self, params: torch.Tensor) -> torch.Tensor | None:
        test = self.inner.test_objective(params[:, : self.inner.n])
        return None if test is None else test + self.convex_term(params)


@dataclass(eq=False)
class ConvexCombination(TaskFamily):
    """Combination with a convex function (RNNprop, Lv et al. 2017, §4.2).

    F(θ, x) = f(θ) + g(c ⊙ x), g(x) = (1/d) Σᵢ (xᵢ − vᵢ)², appending ``dim`` coordinates
    (group ``"convex"``). Per instance v ~ U[−1, 1]^d; x₀ ~ U[−1, 1]^d at init, started
    at c⁻¹ ⊙ x₀; c_i = exp(U(−scale_L, scale_L)). RNNprop §5: d = 20, scale_L = 1.
    """

    family: TaskFamily
    dim: int = 20
    scale_L: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.family, TaskFamily):
            raise ValueError(f"family must be a TaskFamily, got {self.family!r}")
        check_positive_int("dim", self.dim)
        self.scale_L = _check_L("scale_L", self.scale_L)

    def sample(self, generator: torch.Generator,
               num_instances: int = 1) -> ConvexCombinationOptimizee:
        inner = self.family.sample(generator, check_positive_int("num_instances", num_instances))
        B = inner.num_instances
        v = torch.rand(B, self.dim, generator=generator) * 2.0 - 1.0
        scale = sample_log_uniform_scale(generator, (B, self.dim), self.scale_L)
        return ConvexCombinationOptimizee(inner, v, scale)
