"""optenv: inner optimization as Gymnasium POMDP environments.

``import optenv`` registers the built-in suite (``optenv list`` prints it).
"""

from optenv.env import OptimizeeEnv
from optenv.policy import Agent, LearnedOptimizer, StepPolicy, rollout
from optenv.registry import (
    agent_names,
    env_info,
    load_agent,
    make_agent,
    register_agent,
    register_optimizee,
    register_task,
    registered_ids,
    resolve_task,
    task_for,
)
from optenv.vector import OptimizeeVectorEnv

__all__ = [
    "Agent",
    "LearnedOptimizer",
    "OptimizeeEnv",
    "OptimizeeVectorEnv",
    "StepPolicy",
    "agent_names",
    "env_info",
    "load_agent",
    "make_agent",
    "register_agent",
    "register_optimizee",
    "register_task",
    "registered_ids",
    "resolve_task",
    "rollout",
    "task_for",
]
__version__ = "0.1.0"
