"""L2L: the coordinatewise LSTM optimizer of Andrychowicz et al., "Learning to learn by
gradient descent by gradient descent" (2016), as a registered agent (``l2l``).

* The optimizer m (§2.1, Figure 3): a two-layer LSTM with 20 hidden units per layer,
  applied coordinatewise with shared weights and separate memory per coordinate.
* Inputs (§3 and appendix A, as the L2L notes §2.2 summarize): the gradient preprocessed
  as ``(log|∇|/p, sign ∇)`` if ``|∇| ≥ e^{−p}``, else ``(−1, e^p ∇)``, p = 10 — the
  ``l2l`` feature set of :mod:`optenv.features`.
  ``preprocess="none"`` feeds the raw gradient instead (the ``gradient`` feature set), as
  the reference implementation's configuration for its quadratics does.
* ``gac`` > 0: that many of each layer's 20 cells are global averaging cells (§2.1,
  "Information sharing between coordinates"), averaged over the coordinates each step.
* Output: θ_{t+1} = θ_t + g_t with g_t = ``scale`` · (linear output of the LSTM), scale
  0.1 by default (the output scaling of deepmind/learning-to-learn).
* Training (§3): meta-loss Σ_t f(θ_t) (eq. 3 with w_t = 1) by truncated BPTT, "unrolled
  for 20 steps" of a 100-step horizon, second derivatives of f dropped (Figure 2), Adam
  as the meta-optimizer, the best optimizer selected on validation problems.

The loop lives in :class:`agents.metatrain.MetaTrainedAgent`; the unroll in
:mod:`agents.unroll`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agents.metatrain import CoordinatewiseLSTMOptimizer, MetaTrainConfig, MetaTrainedAgent

__all__ = ["PREPROCESS", "L2LAgent", "l2l_policy"]


#: L2L's gradient preprocessing: ``preprocess`` -> (feature set, its features per coordinate)
PREPROCESS = {"log_sign": ("l2l", 2), "none": ("gradient", 1)}


def l2l_policy(hidden: int = 20, seed: int = 0, scale: float = 0.1,
               forget_bias: float = 0.0, preprocess: str = "log_sign", gac: int = 0,
               ) -> CoordinatewiseLSTMOptimizer:
    """L2L's optimizer network (two LSTM layers of ``hidden`` units, output × ``scale``)
    over the preprocessed (``"log_sign"``, p = 10) or raw (``"none"``) gradient."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {tuple(PREPROCESS)}, got {preprocess!r}")
    features, dim = PREPROCESS[preprocess]
    return CoordinatewiseLSTMOptimizer(features=features, input_dim=dim, hidden=hidden,
                                       layers=2, input_width=None, output="linear", scale=scale,
                                       seed=seed, forget_bias=forget_bias, gac=gac)


class L2LAgent(MetaTrainedAgent):
    """Meta-trains L2L's coordinatewise LSTM (Andrychowicz et al. 2016) on an env's family.

    ``preprocess`` (``"log_sign"``, L2L's p = 10, or ``"none"``: the raw gradient), the
    output ``scale`` (0.1) and ``gac`` (global averaging cells per layer, 0) are options of
    the agent (constructor, or ``--set`` in ``optenv train``).

    Defaults (override in the constructor or ``train``): 20 hidden units, truncations of
    20 steps over the env's horizon, meta-loss Σ f̂(θ_t) on minibatches (w_t = 1), Adam
    with rate 1e-3, validation by the summed loss Σ_{t=0}^{T-1} f(θ_t).
    """

    name = "l2l"
    DEFAULTS: ClassVar[dict[str, Any]] = {"weighting": "sum", "val_metric": "sum",
                                          "unroll": 20, "lr": 1e-3}

    def __init__(self, seed: int = 0, preprocess: str = "log_sign", scale: float = 0.1,
                 gac: int = 0, **defaults: Any) -> None:
        hidden = defaults.get("hidden", MetaTrainConfig.hidden)
        l2l_policy(hidden=hidden, preprocess=preprocess, scale=scale, gac=gac)  # validates
        self.preprocess, self.scale, self.gac = preprocess, float(scale), gac
        super().__init__(seed=seed, **defaults)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "preprocess": self.preprocess, "scale": self.scale,
                "gac": self.gac}

    def make_policy(self, config: MetaTrainConfig) -> CoordinatewiseLSTMOptimizer:
        return l2l_policy(hidden=config.hidden, seed=config.seed, scale=self.scale,
                          forget_bias=config.forget_bias, preprocess=self.preprocess,
                          gac=self.gac)
