"""Registration of optimizee environments (``optenv/Name-vN``) and of the tasks behind them.

A *task* is a factory returning a :class:`~optenv.problems.base.TaskFamily`; it is
named either by a short registered name (``"mlp"``) or by an import path
(``"mypkg.problems:make_family"``). An *env id* is a task plus default arguments,
registered with Gymnasium with :class:`~optenv.env.OptimizeeEnv` as entry point and
:class:`~optenv.vector.OptimizeeVectorEnv` as vector entry point. Any argument can be
overridden through ``gym.make(id, **kwargs)``: the env takes its own arguments and
hands the rest to the task factory.

The built-in suite is registered at the bottom of this module, on ``import optenv``;
registration is idempotent.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from optenv.problems.base import TaskFamily

__all__ = [
    "AGENTS",
    "EnvInfo",
    "agent_names",
    "env_info",
    "load_agent",
    "make_agent",
    "pretrained_names",
    "pretrained_path",
    "register_agent",
    "register_optimizee",
    "register_pretrained",
    "register_task",
    "registered_ids",
    "resolve_task",
    "task_for",
]

ENV_ENTRY_POINT = "optenv.env:OptimizeeEnv"
VECTOR_ENTRY_POINT = "optenv.vector:OptimizeeVectorEnv"

#: short task names -> ``"module:callable"`` (or, for tasks registered as objects that
#: cannot be imported by path, the object itself; those do not cross process borders)
TASKS: dict[str, str | Callable[..., TaskFamily]] = {}


@dataclass(frozen=True)
class EnvInfo:
    """What ``optenv list`` and the docs show about a registered id."""

    id: str
    task: str
    horizon: int
    description: str


_ENVS: dict[str, EnvInfo] = {}


def register_task(name: str, factory: str | Callable[..., TaskFamily]) -> None:
    """Name a task factory (``"module:callable"`` or a callable returning a TaskFamily)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"task name must be a non-empty string without ':', got {name!r}")
    if not (isinstance(factory, str) and ":" in factory) and not callable(factory):
        raise ValueError(
            f"task factory must be a 'module:callable' string or a callable, got {factory!r}"
        )
    TASKS[name] = factory


def _import(path: str, what: str = "task") -> Any:
    """The object a ``"module:attr"`` path names; ValueError saying what failed."""
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {what} {path!r}: {err}") from err
    return obj


def resolve_task(task: str | TaskFamily | Callable[..., TaskFamily], **kwargs: Any) -> TaskFamily:
    """Turn a task name, import path, factory or family (plus factory kwargs) into a family."""
    if isinstance(task, TaskFamily):
        if kwargs:
            raise ValueError(
                f"arguments {sorted(kwargs)} were given for a TaskFamily instance "
                f"{type(task).__name__}, which takes none"
            )
        return task
    factory: Any = task
    if isinstance(task, str):
        if task in TASKS:
            factory = TASKS[task]
        elif ":" not in task:
            raise ValueError(f"unknown task {task!r}; registered tasks: {sorted(TASKS)}")
        if isinstance(factory, str):
            factory = _import(factory)
    if not callable(factory):
        raise ValueError(
            f"task must be a name, 'module:callable', TaskFamily or callable, got {task!r}"
        )
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(
                f"task {task!r} got unknown argument(s) {unknown}; it accepts {sorted(params)}"
            )
    family = factory(**kwargs)
    if not isinstance(family, TaskFamily):
        raise ValueError(f"task {task!r} returned {type(family).__name__}, expected a TaskFamily")
    return family


def _task_name(name: str, task: str | Callable[..., TaskFamily]) -> str:
    """A JSON-able name for ``task``: its import path when it has one."""
    if isinstance(task, str):
        if task not in TASKS and ":" not in task:
            raise ValueError(f"unknown task {task!r}; registered tasks: {sorted(TASKS)}")
        return task
    module, qualname = getattr(task, "__module__", None), getattr(task, "__qualname__", "")
    if module and module != "__main__" and "<" not in qualname:
        return f"{module}:{qualname}"
    register_task(name, task)  # a lambda or __main__ object: usable in this process only
    return name


def register_optimizee(
    name: str,
    task: str | Callable[..., TaskFamily],
    *,
    horizon: int,
    version: int = 0,
    namespace: str = "optenv",
    description: str | None = None,
    **kwargs: Any,
) -> str:
    """Register ``namespace/name-v{version}`` and return the id.

    Args:
        name: the env name, e.g. ``"MyProblem"``.
        task: a registered task name, ``"module:callable"``, or a callable (a
            factory or ``TaskFamily`` class) returning a :class:`TaskFamily`.
            Top-level callables are stored by import path, so the id works in
            subprocesses and ``spec.to_json()``.
        horizon: steps per episode (``max_episode_steps``).
        version: the ``-vN`` suffix; bump it when features, reward or defaults change.
        description: one line for ``optenv list`` (default: the family's docstring).
        **kwargs: default arguments of the env (``features``, ``step_scale``...) and of
            the task factory.

    Registering the same id again with the same arguments is a no-op; with
    different arguments it is an error.
    """
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    env_id = f"{namespace}/{name}-v{version}" if namespace else f"{name}-v{version}"
    task_name = _task_name(name, task)
    spec_kwargs = {"task": task_name, **kwargs}
    existing = gym.registry.get(env_id)
    if existing is not None:
        if existing.kwargs == spec_kwargs and existing.max_episode_steps == horizon:
            return env_id
        raise ValueError(f"{env_id} is already registered with other arguments: {existing.kwargs}")
    gym.register(
        id=env_id,
        entry_point=ENV_ENTRY_POINT,
        vector_entry_point=VECTOR_ENTRY_POINT,
        max_episode_steps=horizon,
        kwargs=spec_kwargs,
    )
    if description is None:
        description = _describe(task_name)
    _ENVS[env_id] = EnvInfo(env_id, task_name, horizon, description)
    return env_id


def _describe(task_name: str) -> str:
    factory = TASKS.get(task_name, task_name)
    obj = _import(factory) if isinstance(factory, str) else factory
    doc = inspect.getdoc(obj) or task_name
    return doc.strip().splitlines()[0]


def registered_ids() -> list[str]:
    """Every id in Gymnasium's registry whose entry point is ``OptimizeeEnv``.

    Filtering the registry (rather than listing the built-ins) means that tests and
    ``optenv list`` include user-registered optimizees.
    """
    return sorted(
        env_id for env_id, spec in gym.registry.items() if spec.entry_point == ENV_ENTRY_POINT
    )


def env_info(env_id: str) -> EnvInfo:
    """Description and horizon of a registered id."""
    if env_id in _ENVS:
        return _ENVS[env_id]
    spec = gym.spec(env_id)
    if spec.entry_point != ENV_ENTRY_POINT:
        raise ValueError(f"{env_id} is not an optenv optimizee env")
    task = spec.kwargs.get("task", "?")
    return EnvInfo(env_id, task, spec.max_episode_steps or 0, _describe(task))


def task_for(env_id: str, **overrides: Any) -> tuple[TaskFamily, int]:
    """The task family and horizon behind a registered id (``overrides`` as in ``gym.make``).

    Env options (features, step scale, ...) are dropped: agents that run an update rule
    directly on the problems (the bench, tuning, meta-trainers) need only the task.
    """
    from optenv.env import ENV_OPTIONS

    spec = gym.spec(env_id)
    if spec.entry_point != ENV_ENTRY_POINT:
        raise ValueError(f"{env_id} is not an optenv optimizee env")
    kwargs = {**spec.kwargs, **overrides}
    task = kwargs.pop("task")
    family = resolve_task(task, **{k: v for k, v in kwargs.items() if k not in ENV_OPTIONS})
    horizon = overrides.get("max_episode_steps") or spec.max_episode_steps or 0
    return family, int(horizon)


# -- agents ----------------------------------------------------------------------------------
#: agent names -> ``"module:Class"``, imported on first use (third parties: register_agent)
AGENTS: dict[str, str] = {}


def register_agent(name: str, entry_point: str) -> None:
    """Register an agent class under ``name`` (``entry_point``: ``"module:Class"``)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"agent name must be a non-empty string without ':', got {name!r}")
    if not isinstance(entry_point, str) or ":" not in entry_point:
        raise ValueError(f"agent entry point must be 'module:Class', got {entry_point!r}")
    AGENTS[name] = entry_point


def agent_names() -> list[str]:
    """Registered agent names."""
    return sorted(AGENTS)


#: trained agents shipped as files: name -> ``(package, file)`` or an absolute path
PRETRAINED: dict[str, tuple[str, str] | str] = {}


def register_pretrained(name: str, file: str | os.PathLike[str],
                        package: str | None = None) -> None:
    """Name a saved agent file: ``file`` inside ``package`` (its data) or a path."""
    if not isinstance(name, str) or not name or ":" in name or name in AGENTS:
        raise ValueError(f"pretrained name must be a new non-empty name without ':', "
                         f"got {name!r}")
    PRETRAINED[name] = (package, os.fspath(file)) if package else os.fspath(file)


def pretrained_path(name: str) -> str:
    """Where the pretrained agent ``name`` is stored (the file may be missing)."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained agent {name!r}; known: {pretrained_names()}")
    where = PRETRAINED[name]
    if isinstance(where, str):
        return where
    from importlib.resources import files

    package, file = where
    return os.fspath(files(package).joinpath(file))


def pretrained_names(available: bool = True) -> list[str]:
    """Pretrained agent names (only those whose file is installed, by default)."""
    return sorted(n for n in PRETRAINED if not available or os.path.isfile(pretrained_path(n)))


def _agent_class(name: str) -> Any:
    if name in AGENTS:
        path = AGENTS[name]
    elif ":" in name:
        path = name
    else:
        raise ValueError(f"unknown agent {name!r}; registered agents: {agent_names()}")
    return _import(path, what=f"agent {name!r} from")


def make_agent(name: str, **kwargs: Any) -> Any:
    """Build the agent registered as ``name`` (or a ``"module:Class"`` path)."""
    return _agent_class(name)(**kwargs)


def agent_entry_point(agent: Any) -> str:
    """The ``"module:Class"`` that rebuilds ``agent`` (what a saved file records)."""
    cls = type(agent)
    return f"{cls.__module__}:{cls.__qualname__}"


def load_agent(path: str | os.PathLike[str]) -> Any:
    """Load an agent saved with ``Agent.save``: class, config, state and training cost."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved agent at {path!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path!r} is not a saved optenv agent: {err}") from err
    if not isinstance(payload, dict) or "agent" not in payload:
        raise ValueError(f"{path!r} is not a saved optenv agent (no 'agent' entry)")
    agent = _agent_class(payload["agent"])(**payload.get("config", {}))
    agent.load_state_dict(payload["state"])
    agent.training_cost = dict(payload.get("training_cost", {}))
    return agent


# -- the built-in suite ----------------------------------------------------------------------
def mlp_task(
    dataset: str = "digits",
    dim: int | None = 48,
    hidden: list[int] | tuple[int, ...] = (48,),
    activation: str = "relu",
    batch_size: int = 64,
    init_scale: float | None = None,
    class_subset: int | None = None,
    objective_size: int | None = None,
    root: str | None = None,
    data_seed: int = 0,
) -> TaskFamily:
    """MLP classifier on a dataset projected to ``dim`` dims (Li & Malik 2017 §4)."""
    from optenv.data import load_dataset
    from optenv.problems.mlp import MLPTask

    return MLPTask(
        load_dataset(dataset, dim=dim, root=root, seed=data_seed),
        hidden=tuple(hidden), activation=activation, batch_size=batch_size,
        init_scale=init_scale, class_subset=class_subset, objective_size=objective_size,
    )


def cnn_task(
    dataset: str = "digits",
    arch: str = "c-c-p-f",
    channels: int = 16,
    hidden: int | None = None,
    activation: str = "relu",
    batch_size: int = 128,
    init_scale: float | None = None,
    class_subset: int | None = None,
    objective_size: int | None = None,
    root: str | None = None,
    data_seed: int = 0,
) -> TaskFamily:
    """CNN classifier given by an architecture string such as ``"c-c-p-f"`` (RNNprop §5)."""
    from optenv.data import load_dataset
    from optenv.problems.cnn import CNNTask

    return CNNTask(
        load_dataset(dataset, dim=None, root=root, seed=data_seed), arch=arch,
        channels=channels, hidden=hidden, activation=activation, batch_size=batch_size,
        init_scale=init_scale, class_subset=class_subset, objective_size=objective_size,
    )


for _name, _path in {
    "quadratic": "optenv.problems.quadratic:QuadraticFamily",
    "logistic_regression": "optenv.problems.regression:LogisticRegressionFamily",
    "robust_linear_regression": "optenv.problems.regression:RobustLinearRegressionFamily",
    "lstm_sine": "optenv.problems.lstm:LSTMSineFamily",
    "mlp": "optenv.registry:mlp_task",
    "cnn": "optenv.registry:cnn_task",
}.items():
    register_task(_name, _path)

register_optimizee("Quadratic", "quadratic", horizon=100,
                   description="10-dim random quadratics ||W x - y||^2 (L2L)")
register_optimizee("LogisticRegression", "logistic_regression", horizon=100,
                   description="logistic regression on random two-class Gaussian data")
register_optimizee("RobustLinearRegression", "robust_linear_regression", horizon=100,
                   description="linear regression with the Geman-McClure loss on random data")
register_optimizee("MLP-Digits", "mlp", horizon=400,
                   description="48 -> 48 ReLU -> 10 on digits projected to 48 dims, batch 64 "
                   "(Li & Malik's training task)")
register_optimizee("MLP-Digits-Wide", "mlp", horizon=400, dim=100, hidden=[200],
                   description="100 -> 200 ReLU -> 10 on digits projected to 100 dims, batch 64")
register_optimizee("MLP-MNIST1D", "mlp", horizon=400, dataset="mnist1d",
                   description="48 -> 48 ReLU -> 10 on MNIST-1D projected to 48 dims, batch 64")
register_optimizee("MLP-Sigmoid-Digits", "mlp", horizon=100, dim=None, hidden=[20],
                   activation="sigmoid", batch_size=128,
                   description="64 -> 20 sigmoid -> 10 on digits, batch 128 "
                   "(L2L / RNNprop base MLP)")
register_optimizee("CNN-Digits", "cnn", horizon=200,
                   description="c-c-p-f CNN (16 channels) on 8x8 digits, batch 128 (RNNprop's CNN)")
register_optimizee("LSTM-Sine", "lstm_sine", horizon=100,
                   description="RNNprop's LSTM task: predict f(10) from noisy A sin(wx + phi)")
register_optimizee("MLP-Torchvision", "mlp", horizon=400, dataset="mnist",
                   description="48 -> 48 ReLU -> 10 on a local torchvision dataset "
                   "(dataset=, root= or $OPTENV_DATA_ROOT)")

for _name, _cls in {
    "sgd": "SGDAgent", "momentum": "MomentumAgent", "nag": "NAGAgent", "adam": "AdamAgent",
    "rmsprop": "RMSpropAgent", "adagrad": "AdaGradAgent", "adadelta": "AdadeltaAgent",
    "cg": "ConjugateGradientAgent", "lbfgs": "LBFGSAgent",
}.items():
    register_agent(_name, f"agents.baselines:{_cls}")
register_agent("gps", "gps.agent:GPSAgent")
# gradient-based meta-trainers (agents/) and stable-baselines3 agents
register_agent("l2l", "agents.l2l:L2LAgent")
register_agent("rnnprop", "agents.rnnprop:RNNpropAgent")
register_agent("metz", "agents.metz:MetzAgent")
register_agent("ppo", "agents.sb3:PPOAgent")
register_agent("ppo-mlp", "agents.sb3:PPOMlpAgent")
register_agent("sac", "agents.sb3:SACAgent")
register_agent("zero", "agents.reference:ZeroStepAgent")
register_agent("random", "agents.reference:RandomStepAgent")
# trained optimizers shipped in agents/pretrained (each made by `optenv train`, see README)
for _name in ("gps-psd", "gps-psd-paper", "l2l-quadratic", "rnnprop-mlp", "metz-cnn"):
    register_pretrained(_name, f"pretrained/{_name}.pt", package="agents")
