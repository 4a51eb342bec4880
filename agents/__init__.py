"""Agents that produce update rules for optenv environments.

agents/ builds on optenv and only imports optenv (never ``gps``); optenv reaches the
agents through its agent registry (``"agents.baselines:AdamAgent"`` and so on), so
importing optenv does not import this package.

- :mod:`agents.baselines`: the hand-designed optimizers Li & Malik (2017) compare
  against (SGD, momentum, CG, L-BFGS, Adam, AdaGrad, RMSprop, plus Nesterov momentum
  and Adadelta) as batched :class:`~optenv.policy.StepPolicy` objects, and the agents
  that tune their learning rate on an environment.
"""

from agents.baselines import (
    AdadeltaAgent,
    AdadeltaPolicy,
    AdaGradAgent,
    AdaGradPolicy,
    AdamAgent,
    AdamPolicy,
    BaselineAgent,
    ConjugateGradientAgent,
    ConjugateGradientPolicy,
    LBFGSAgent,
    LBFGSPolicy,
    MomentumAgent,
    MomentumPolicy,
    NAGAgent,
    NAGPolicy,
    RMSpropAgent,
    RMSpropPolicy,
    SGDAgent,
    SGDPolicy,
)

__all__ = [
    "AdaGradAgent",
    "AdaGradPolicy",
    "AdadeltaAgent",
    "AdadeltaPolicy",
    "AdamAgent",
    "AdamPolicy",
    "BaselineAgent",
    "ConjugateGradientAgent",
    "ConjugateGradientPolicy",
    "LBFGSAgent",
    "LBFGSPolicy",
    "MomentumAgent",
    "MomentumPolicy",
    "NAGAgent",
    "NAGPolicy",
    "RMSpropAgent",
    "RMSpropPolicy",
    "SGDAgent",
    "SGDPolicy",
]
