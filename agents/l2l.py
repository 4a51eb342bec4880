"""L2L: the coordinatewise LSTM optimizer of Andrychowicz et al., "Learning to learn by
gradient descent by gradient descent" (2016), as a registered agent (``l2l``).

* The optimizer m (§2.1, Figure 3): a two-layer LSTM with 20 hidden units per layer,
  applied coordinatewise with shared weights and separate memory per coordinate.
* Inputs (§3 and appendix A, as the L2L notes §2.2 summarize): the gradient preprocessed
  as ``(log|∇|/p, sign ∇)`` if ``|∇| ≥ e^{−p}``, else ``(−1, e^p ∇)``, p = 10 — the
  ``l2l`` feature set of :mod:`optenv.features`.
* Output: θ_{t+1} = θ_t + g_t with g_t = 0.1 · (linear output of the LSTM) — the output
  scaling of the reference implementation (deepmind/learning-to-learn, ``scale=0.1``).
* Training (§3): meta-loss Σ_t f(θ_t) (eq. 3 with w_t = 1) by truncated BPTT, "unrolled
  for 20 steps" of a 100-step horizon, second derivatives of f dropped (Figure 2), Adam
  as the meta-optimizer, the best optimizer selected on validation problems.

The loop lives in :class:`agents.metatrain.MetaTrainedAgent`; the unroll in
:mod:`agents.unroll`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agents.metatrain import CoordinatewiseLSTMOptimizer, MetaTrainConfig, MetaTrainedAgent

__all__ = ["L2LAgent", "l2l_policy"]


def l2l_policy(hidden: int = 20, seed: int = 0, scale: float = 0.1,
               forget_bias: float = 0.0) -> CoordinatewiseLSTMOptimizer:
    """L2L's optimizer network (two LSTM layers of ``hidden`` units, output × ``scale``)."""
    return CoordinatewiseLSTMOptimizer(features="l2l", input_dim=2, hidden=hidden, layers=2,
                                       input_width=None, output="linear", scale=scale, seed=seed,
                                       forget_bias=forget_bias)


class L2LAgent(MetaTrainedAgent):
    """Meta-trains L2L's coordinatewise LSTM (Andrychowicz et al. 2016) on an env's family.

    Defaults (override in the constructor or ``train``): 20 hidden units, truncations of
    20 steps over the env's horizon, meta-loss Σ f̂(θ_t) on minibatches (w_t = 1), Adam
    with rate 1e-3, validation by the summed loss Σ_{t=0}^{T-1} f(θ_t).
    """

    name = "l2l"
    DEFAULTS: ClassVar[dict[str, Any]] = {"weighting": "sum", "val_metric": "sum",
                                          "unroll": 20, "lr": 1e-3}

    def make_policy(self, config: MetaTrainConfig) -> CoordinatewiseLSTMOptimizer:
        return l2l_policy(hidden=config.hidden, seed=config.seed, forget_bias=config.forget_bias)
