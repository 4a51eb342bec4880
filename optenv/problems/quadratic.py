"""Random quadratics f(θ) = ‖Wθ − y‖² (Andrychowicz et al. 2016, section 3.1).

"We consider minimizing functions of the form f(θ) = ‖Wθ − y‖²₂ for different 10x10
matrices W and 10-dimensional vectors y whose elements are drawn from an IID Gaussian
distribution." The reference code (deepmind/learning-to-learn, ``problems.quadratic``)
instead draws W and y from U[0, 1) and starts at θ₀ ~ N(0, 0.01²); both are available
here (``data_dist="normal"`` is the default, as in the paper; ``init_std=0.01`` as in the
code). The problem is deterministic: the loss is the objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from optenv.problems.base import Optimizee, TaskFamily, check_positive_int, groups_from_shapes

__all__ = ["QuadraticFamily", "QuadraticOptimizee"]


class QuadraticOptimizee(Optimizee):
    """``B`` quadratics ``‖W_b θ − y_b‖²``; ``instance_data`` holds ``W`` ``(B, d, d)`` and
    ``y`` ``(B, d)``."""

    def __init__(self, W: torch.Tensor, y: torch.Tensor, init_std: float) -> None:
        d = W.shape[-1]
        super().__init__(groups_from_shapes({"theta": (d,)}), W.shape[0], {"W": W, "y": y})
        self.init_std = init_std

    def init(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.num_instances, self.n, generator=generator) * self.init_std

    def sample_batch(self, generator: torch.Generator) -> None:
        return None  # deterministic problem

    def residual(self, params: torch.Tensor) -> torch.Tensor:
        """``Wθ − y`` ``(B, d)``."""
        W, y = self.instance_data["W"], self.instance_data["y"]
        return torch.baddbmm(-y.unsqueeze(2), W, params.unsqueeze(2)).squeeze(2)

    def loss(self, params: torch.Tensor, batch: Any = None) -> torch.Tensor:
        return self.residual(params).square().sum(1)

    def objective(self, params: torch.Tensor) -> torch.Tensor:
        return self.loss(params)

    def analytic_grad(self, params: torch.Tensor) -> torch.Tensor:
        """``∇f(θ) = 2 Wᵀ(Wθ − y)``, ``(B, d)``."""
        W = self.instance_data["W"]
        return 2.0 * torch.bmm(W.transpose(1, 2), self.residual(params).unsqueeze(2)).squeeze(2)

    def minimizer(self) -> torch.Tensor:
        """A least-squares minimizer ``(B, d)`` (the unique one when W is invertible)."""
        W, y = self.instance_data["W"], self.instance_data["y"]
        return torch.linalg.lstsq(W.double(), y.double().unsqueeze(2)).solution.squeeze(2).float()


@dataclass(eq=False)
class QuadraticFamily(TaskFamily):
    """Random quadratics ‖Wθ − y‖², W ∈ R^{d×d}, y ∈ R^d i.i.d. (L2L, Andrychowicz 2016, 3.1).

    Arguments:
        dim: d (the paper: 10).
        data_dist: ``"normal"`` (N(0, 1), the paper) or ``"uniform"`` (U[0, 1), the
            reference code) for the entries of W and y.
        init_std: θ₀ ~ N(0, init_std²) (reference code: 0.01).
    """

    dim: int = 10
    data_dist: str = "normal"
    init_std: float = 0.01

    def __post_init__(self) -> None:
        check_positive_int("dim", self.dim)
        if self.data_dist not in ("normal", "uniform"):
            raise ValueError(
                f"unknown data_dist {self.data_dist!r}; expected 'normal' or 'uniform'"
            )
        if not self.init_std >= 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std!r}")

    def sample(self, generator: torch.Generator, num_instances: int = 1) -> QuadraticOptimizee:
        B, d = check_positive_int("num_instances", num_instances), self.dim
        draw = torch.randn if self.data_dist == "normal" else torch.rand
        W = draw(B, d, d, generator=generator)
        y = draw(B, d, generator=generator)
        return QuadraticOptimizee(W, y, self.init_std)
