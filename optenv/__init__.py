"""optenv: inner optimization as Gymnasium POMDP environments.

``import optenv`` registers the built-in suite (``optenv list`` prints it).
"""

from optenv.env import OptimizeeEnv
from optenv.registry import (
    env_info,
    register_optimizee,
    register_task,
    registered_ids,
    resolve_task,
)
from optenv.vector import OptimizeeVectorEnv

__all__ = [
    "OptimizeeEnv",
    "OptimizeeVectorEnv",
    "env_info",
    "register_optimizee",
    "register_task",
    "registered_ids",
    "resolve_task",
]
__version__ = "0.1.0"
