"""RNNprop of Lv, Jiang & Li, "Learning Gradient Descent: Better Generalization and Longer
Horizons" (2017), as a registered agent (``rnnprop``).

* Inputs (§4.3, eqs. (8)-(9)): m̃_t = m̂_t / √v̂_t and g̃_t = g_t / √v̂_t with Adam's
  bias-corrected moments, β₁ = β₂ = 0.95 (§5) — the ``adam`` feature set.
* Network (§4.3, eq. (10)): a fully-connected layer of 20 units with ELU, a two-layer
  LSTM of 20 units, then Δθ_t = α · tanh(W h_t + b) with α = 0.1; coordinatewise with
  shared weights.
* Training (§4.1, §4.2, §5): problems from the base sigmoid MLP with Random Scaling
  (f_c(θ) = f(c ⊙ θ), c_i = e^{U(−3, 3)}) and Combination with a convex function
  (g(x) = (1/20) Σ (x_i − v_i)², random scaling with L = 1 on g); 100 steps split into
  5 truncations of 20; the meta-loss of each truncation is the final loss only
  (w_T = 1, w_t = 0 otherwise), minimized by Adam.
* Selection: the paper keeps the checkpoint with the lowest moving-average *training*
  loss; here, as for L2L, the best checkpoint on validation problems of the
  un-augmented env family (final loss).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agents.metatrain import CoordinatewiseLSTMOptimizer, MetaTrainConfig, MetaTrainedAgent
from optenv.problems.augment import ConvexCombination, RandomScaling
from optenv.problems.base import TaskFamily

__all__ = ["RNNpropAgent", "rnnprop_family", "rnnprop_policy"]


def rnnprop_policy(hidden: int = 20, seed: int = 0, alpha: float = 0.1,
                   forget_bias: float = 0.0) -> CoordinatewiseLSTMOptimizer:
    """RNNprop's network: FC(``hidden``)+ELU, two LSTM layers, Δθ = α·tanh(·) (§4.3)."""
    return CoordinatewiseLSTMOptimizer(features="adam", input_dim=2, hidden=hidden, layers=2,
                                       input_width=hidden, output="tanh", scale=alpha,
                                       seed=seed, forget_bias=forget_bias)


def rnnprop_family(family: TaskFamily, scale_L: float = 3.0, convex_dim: int = 20,
                   convex_L: float = 1.0) -> TaskFamily:
    """RNNprop's training problems (§4.1-4.2, §5): Random Scaling with L = ``scale_L`` on f,
    combined with a ``convex_dim``-dim convex function scaled with L = ``convex_L``."""
    return ConvexCombination(RandomScaling(family, scale_L), dim=convex_dim, scale_L=convex_L)


class RNNpropAgent(MetaTrainedAgent):
    """Meta-trains RNNprop (Lv et al. 2017) on an env's family with RNNprop's training tricks.

    Defaults: 20 units, truncations of 20 steps over the env's horizon, final-loss
    meta-objective per truncation (``weighting="final"``), Adam with rate 1e-3 (gradient
    clipped at norm 1), augmented training problems (``augment=True``; the option exists
    for ablations), validation by the final loss on the plain env family.
    """

    name = "rnnprop"
    DEFAULTS: ClassVar[dict[str, Any]] = {"weighting": "final", "val_metric": "final",
                                          "unroll": 20, "lr": 1e-3}

    def __init__(self, seed: int = 0, augment: bool = True, **defaults: Any) -> None:
        if not isinstance(augment, bool):
            raise ValueError(f"augment must be a bool, got {augment!r}")
        self.augment = augment
        super().__init__(seed=seed, **defaults)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "augment": self.augment}

    def make_policy(self, config: MetaTrainConfig) -> CoordinatewiseLSTMOptimizer:
        return rnnprop_policy(hidden=config.hidden, seed=config.seed,
                              forget_bias=config.forget_bias)

    def training_family(self, family: TaskFamily, config: MetaTrainConfig) -> TaskFamily:
        return rnnprop_family(family) if self.augment else family
