"""Agents that produce update rules for optenv environments.

agents/ builds on optenv and only imports optenv (never ``gps``); optenv reaches the
agents through its agent registry (``"agents.baselines:AdamAgent"`` and so on), so
importing optenv does not import this package.

- :mod:`agents.baselines`: the hand-designed optimizers Li & Malik (2017) compare
  against (SGD, momentum, CG, L-BFGS, Adam, AdaGrad, RMSprop, plus Nesterov momentum
  and Adadelta) as batched :class:`~optenv.policy.StepPolicy` objects, and the agents
  that tune their learning rate on an environment.
- :mod:`agents.reference`: zero and random steps, the floor every learned rule must beat.
- :mod:`agents.unroll`, :mod:`agents.metatrain`, :mod:`agents.l2l`, :mod:`agents.rnnprop`:
  truncated differentiable unrolls and the L2L / RNNprop meta-trainers.
- :mod:`agents.estimators`, :mod:`agents.metz`: reparameterization / ES / merged / PES
  outer gradients and Metz et al.'s learned optimizer.
- :mod:`agents.sb3`: stable-baselines3 PPO and SAC with coordinatewise policies.
- ``agents/pretrained/``: the trained optimizers shipped with the package.

Only the baselines are imported here; the others load on first use through the agent
registry (``optenv.make_agent("rnnprop")``), so ``import agents`` stays light.
"""

from agents import baselines as _baselines
from agents.baselines import *  # noqa: F403  (the baselines are the package's eager API)

__all__ = list(_baselines.__all__)
