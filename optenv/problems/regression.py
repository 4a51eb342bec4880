"""Low-dimensional regression problems on random data (Li & Malik 2016, "Learning to
Optimize", arXiv:1606.01885, section 4).

Each instance draws its own small dataset, stored in ``instance_data`` so that
:meth:`~optenv.problems.base.Optimizee.splice` can replace single instances.

* :class:`LogisticRegressionFamily`: ℓ2-regularized logistic regression,
  f(w, b) = −(1/N) Σᵢ [yᵢ log σ(wᵀxᵢ + b) + (1 − yᵢ) log(1 − σ(wᵀxᵢ + b))] + (λ/2)‖w‖²,
  on N = 100 points in d = 3 dimensions, half from each of two Gaussians with random
  means and covariances, labelled by the Gaussian they come from; λ = 0.0005 (the
  paper's setting).
* :class:`RobustLinearRegressionFamily`: linear regression with the Geman-McClure
  M-estimator, f(w, b) = (1/N) Σᵢ rᵢ² / (c² + rᵢ²), rᵢ = yᵢ − wᵀxᵢ − b, c = 1, on
  4 clusters x 25 points in d = 3 dimensions; each cluster is a Gaussian with a random
  mean and identity covariance, and its labels are a projection on the cluster's own
  random vector plus the cluster's random bias plus i.i.d. Gaussian noise (the paper's
  setting; the mean spread and noise level below are our choices, as the paper does
  not give them).

Both are full-batch by default (the loss is the objective); ``batch_size=k`` makes the
loss a mean over ``k`` points drawn per instance with replacement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from optenv.problems.base import Optimizee, TaskFamily, check_positive_int, groups_from_shapes

__all__ = [
    "LogisticRegressionFamily",
    "LogisticRegressionOptimizee",
    "RobustLinearRegressionFamily",
    "RobustLinearRegressionOptimizee",
]


class _LinearModelOptimizee(Optimizee):
    """``B`` linear models ``wᵀx + b`` on per-instance data ``x`` ``(B, N, d)``, ``y``
    ``(B, N)``; subclasses define the per-point loss and the regularizer."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None,
                 init_std: float) -> None:
        B, _, d = x.shape
        super().__init__(groups_from_shapes({"weight": (d,), "bias": (1,)}), B, {"x": x, "y": y})
        self.batch_size = batch_size
        self.init_std = init_std
        self.dim = d

    def init(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.num_instances, self.n, generator=generator) * self.init_std

    def sample_batch(self, generator: torch.Generator) -> torch.Tensor | None:
        if self.batch_size is None:
            return None
        N = self.instance_data["x"].shape[1]
        return torch.randint(0, N, (self.num_instances, self.batch_size), generator=generator)

    def point_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def regularizer(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.new_zeros(weight.shape[0])

    def _mean_loss(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w, b = params[:, : self.dim], params[:, self.dim:]
        pred = torch.baddbmm(b.unsqueeze(1), x, w.unsqueeze(2)).squeeze(2)  # (B, M)
        return self.point_loss(pred, y).mean(1) + self.regularizer(w)

    def loss(self, params: torch.Tensor, batch: Any = None) -> torch.Tensor:
        x, y = self.instance_data["x"], self.instance_data["y"]
        if batch is not None:
            rows = torch.arange(self.num_instances).unsqueeze(1)
            x, y = x[rows, batch], y[rows, batch]
        return self._mean_loss(params, x, y)

    def objective(self, params: torch.Tensor) -> torch.Tensor:
        return self._mean_loss(params, self.instance_data["x"], self.instance_data["y"])


class LogisticRegressionOptimizee(_LinearModelOptimizee):
    """ℓ2-regularized logistic regression; labels ``y`` in {0, 1}."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, l2: float, batch_size: int | None,
                 init_std: float) -> None:
        super().__init__(x, y, batch_size, init_std)
        self.l2 = l2

    def point_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(pred, y, reduction="none")

    def regularizer(self, weight: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.l2 * weight.square().sum(1)


class RobustLinearRegressionOptimizee(_LinearModelOptimizee):
    """Linear regression with the Geman-McClure loss ρ(r) = r² / (c² + r²)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, c: float, batch_size: int | None,
                 init_std: float) -> None:
        super().__init__(x, y, batch_size, init_std)
        self.c = c

    def point_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r2 = (y - pred).square()
        return r2 / (self.c**2 + r2)


def _check_common(batch_size: int | None, init_std: float) -> None:
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if not init_std >= 0:
        raise ValueError(f"init_std must be >= 0, got {init_std!r}")


def _random_cov_sqrt(B: int, k: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """Square roots ``A`` ``(B, k, d, d)`` of random covariances ``A Aᵀ``: entries of A
    ~ N(0, 1/d), so covariances are of order the identity but anisotropic."""
    return torch.randn(B, k, d, d, generator=generator) / d**0.5


@dataclass(eq=False)
class LogisticRegressionFamily(TaskFamily):
    """ℓ2-regularized logistic regression on two random Gaussians (Li & Malik 2016, §4).

    f(w, b) = mean BCE(σ(wᵀx + b), y) + (λ/2)‖w‖². Defaults are the paper's: d = 3,
    N = 100 points (50 per class), λ = 0.0005. Class means ~ N(0, mean_std² I) and
    covariances A Aᵀ with A_ij ~ N(0, 1/d) (our choice of the "random means and
    covariances"). θ₀ ~ N(0, init_std²).
    """

    dim: int = 3
    num_points: int = 100
    l2: float = 5e-4
    mean_std: float = 1.0
    batch_size: int | None = None
    init_std: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("dim", self.dim)
        check_positive_int("num_points", self.num_points)
        if self.num_points < 2:
            raise ValueError(f"num_points must be >= 2 (one per class), got {self.num_points}")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2!r}")
        if not self.mean_std >= 0:
            raise ValueError(f"mean_std must be >= 0, got {self.mean_std!r}")
        _check_common(self.batch_size, self.init_std)

    def sample(self, generator: torch.Generator,
               num_instances: int = 1) -> LogisticRegressionOptimizee:
        B, N, d = check_positive_int("num_instances", num_instances), self.num_points, self.dim
        means = torch.randn(B, 2, d, generator=generator) * self.mean_std
        cov_sqrt = _random_cov_sqrt(B, 2, d, generator)
        y = (torch.arange(N) >= N // 2).float().expand(B, N).contiguous()  # first half class 0
        cls = y.long()
        z = torch.randn(B, N, d, generator=generator)
        rows = torch.arange(B).unsqueeze(1)
        x = means[rows, cls] + torch.einsum("bnij,bnj->bni", cov_sqrt[rows, cls], z)
        return LogisticRegressionOptimizee(x, y, self.l2, self.batch_size, self.init_std)


@dataclass(eq=False)
class RobustLinearRegressionFamily(TaskFamily):
    """Robust linear regression, Geman-McClure loss r²/(c² + r²) (Li & Malik 2016, §4).

    Defaults are the paper's where it gives them: d = 3, 4 clusters x 25 points, identity
    covariance per cluster, c = 1. Our choices: cluster means ~ N(0, mean_std² I) with
    mean_std = 2, per-cluster label weights ~ N(0, I) and bias ~ N(0, 1), label noise
    N(0, noise_std²) with noise_std = 0.5, θ₀ ~ N(0, init_std²).
    """

    dim: int = 3
    num_clusters: int = 4
    points_per_cluster: int = 25
    c: float = 1.0
    mean_std: float = 2.0
    noise_std: float = 0.5
    batch_size: int | None = None
    init_std: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("dim", self.dim)
        check_positive_int("num_clusters", self.num_clusters)
        check_positive_int("points_per_cluster", self.points_per_cluster)
        if not self.c > 0:
            raise ValueError(f"c must be > 0, got {self.c!r}")
        for name in ("mean_std", "noise_std"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        _check_common(self.batch_size, self.init_std)

    def sample(self, generator: torch.Generator,
               num_instances: int = 1) -> RobustLinearRegressionOptimizee:
        B, K, P, d = (check_positive_int("num_instances", num_instances), self.num_clusters,
                      self.points_per_cluster, self.dim)
        means = torch.randn(B, K, 1, d, generator=generator) * self.mean_std
        x = means + torch.randn(B, K, P, d, generator=generator)
        w = torch.randn(B, K, d, 1, generator=generator)
        bias = torch.randn(B, K, 1, generator=generator)
        noise = torch.randn(B, K, P, generator=generator) * self.noise_std
        y = (x @ w).squeeze(3) + bias + noise
        return RobustLinearRegressionOptimizee(
            x.reshape(B, K * P, d), y.reshape(B, K * P), self.c, self.batch_size, self.init_std
        )
