"""The benchmark: tuned baselines and learned optimizers on the same held-out problems.

For every env × agent, :func:`run_bench`

1. gets the agent's update rule: a registered agent (a baseline) is tuned with
   ``agent.train(env_id, steps=..., seeds=TUNING_SEEDS, grid=..., metric=...)`` —
   its grid × seeds run as one batch — and the outcome is cached in
   ``out/tuning.json`` (plus the tuned agent in ``out/agents/``), so a second bench
   over the same folder reuses it instead of tuning again; an agent given as
   ``NAME:PATH`` is loaded with :func:`optenv.registry.load_agent` and used as is;
2. evaluates ``rollout(agent.policy(), family, steps, seeds=EVAL_SEEDS)``: all held-out
   seeds (1000, 1001, ...) as one batched computation, never seen by the tuning
   (seeds 0, 1, 2).

It writes, atomically, ``results.json`` (validated by :func:`validate_results`
against :data:`RESULTS_SCHEMA`), ``report.md`` (a table per env) and one loss-curve
PNG per env (``optenv_MLP-Digits-v0.png``) to the run folder.

A run that diverges is reported, never dropped: ``diverged`` is true for its seed and
its objective is frozen at the divergence threshold from the step it diverged on, so
its ``final_loss`` and ``auc`` are that threshold (``null`` only when the value is
not finite).

**Speedup over tuned Adam** (when ``"adam"`` is among the agents), after
learned_optimization's normalizer: the number of steps tuned Adam's median curve
needs to reach an agent's median final loss, divided by the agent's steps. ``> 1``
means the agent gets there faster than Adam; if Adam never gets there within its T
steps, the speedup is only bounded, ``> T/T``, shown as ``>1.0``.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optenv.policy import Agent, rollout
from optenv.runio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

__all__ = [
    "BASELINES",
    "EVAL_SEED_START",
    "RESULTS_SCHEMA",
    "TUNING_SEEDS",
    "BenchConfig",
    "BenchConfigError",
    "all_envs",
    "format_speedup",
    "plot_path",
    "run_bench",
    "speedup",
    "validate_results",
]

#: the nine registered baselines (``--agents baselines``)
BASELINES: tuple[str, ...] = (
    "sgd", "momentum", "nag", "adam", "rmsprop", "adagrad", "adadelta", "cg", "lbfgs",
)
#: seeds the baselines are tuned on
TUNING_SEEDS: tuple[int, ...] = (0, 1, 2)
#: held-out evaluation seeds are EVAL_SEED_START, EVAL_SEED_START + 1, ...
EVAL_SEED_START = 1000
#: the reference agent of the speedup column
REFERENCE_AGENT = "adam"
#: most points a stored curve keeps
MAX_CURVE_POINTS = 200
RESULTS_FORMAT = 1
_METRICS = ("final", "auc")


class BenchConfigError(ValueError):
    """A bench configuration that names something that does not exist or is malformed."""


@dataclass
class BenchConfig:
    """What to benchmark.

    Attributes:
        envs: env ids; ``["all"]`` means :func:`all_envs`.
        agents: registered agent names (tuned), ``NAME:PATH`` for an agent saved with
            ``Agent.save`` (used as is), or a bare path to a saved agent (named after
            the file); ``"baselines"`` stands for the nine :data:`BASELINES`.
        seeds: number of held-out evaluation seeds (1000 .. 1000 + seeds − 1).
        steps: steps per run (default: each env's horizon).
        env_kwargs: overrides of the env's task arguments, as in ``gym.make``.
        out: run folder.
        metric: what tuning minimizes: ``"final"`` or ``"auc"`` (mean over steps).
        grid: tuning grid of the learning rate (default: each agent's own grid).
        tune: tune registered agents; ``False`` uses their default hyperparameters.
        progress: progress bars and the printed tables.
    """

    envs: Sequence[str]
    agents: Sequence[str]
    seeds: int = 5
    steps: int | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    out: Path = Path("runs/bench")
    metric: str = "final"
    grid: Sequence[float] | None = None
    tune: bool = True
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["envs"], d["agents"] = list(self.envs), list(self.agents)
        d["grid"] = None if self.grid is None else [float(v) for v in self.grid]
        d.pop("progress")
        return d


# -- what to run -----------------------------------------------------------------------------
def all_envs() -> list[str]:
    """Every registered optenv id, except those reading a local dataset root when
    ``$OPTENV_DATA_ROOT`` is unset (``optenv/MLP-Torchvision-v0``)."""
    import gymnasium as gym

    from optenv.data import _TORCHVISION, DATA_ROOT_ENV
    from optenv.registry import registered_ids

    have_root = bool(os.environ.get(DATA_ROOT_ENV))
    ids = []
    for env_id in registered_ids():
        kwargs = gym.spec(env_id).kwargs
        if kwargs.get("dataset") in _TORCHVISION and not kwargs.get("root") and not have_root:
            continue
        ids.append(env_id)
    return ids


@dataclass
class _AgentSpec:
    label: str
    name: str | None = None  # registry name or "module:Class"
    path: Path | None = None  # saved agent


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.endswith((".pt", ".pth")) or \
        os.path.isfile(text)


def parse_agent(spec: str) -> _AgentSpec:
    """``NAME`` (registry), ``NAME:PATH`` or ``PATH`` (saved agent), ``module:Class``,
    or the name of a pretrained agent (a saved agent shipped with the package)."""
    from optenv.registry import AGENTS, PRETRAINED, agent_names, pretrained_path

    if not isinstance(spec, str) or not spec:
        raise BenchConfigError(f"agent must be a non-empty string, got {spec!r}")
    if spec in AGENTS:
        return _AgentSpec(spec, name=spec)
    if spec in PRETRAINED:
        path = Path(pretrained_path(spec))
        if not path.is_file():
            raise BenchConfigError(f"pretrained agent {spec!r} is not installed "
                                   f"(expected {str(path)!r})")
        return _AgentSpec(spec, path=path)
    label, sep, rest = spec.partition(":")
    if sep and label and _looks_like_path(rest):
        path = Path(rest)
    elif not sep and _looks_like_path(spec):
        label, path = Path(spec).stem, Path(spec)
    elif sep and label and rest:
        return _AgentSpec(spec, name=spec)  # module:Class, checked when built
    else:
        close = difflib.get_close_matches(spec, agent_names() + sorted(PRETRAINED), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BenchConfigError(
            f"unknown agent {spec!r}{hint}; registered agents: {agent_names()}, "
            f"pretrained: {sorted(PRETRAINED)}, 'baselines', or NAME:PATH for a saved agent"
        )
    if not path.is_file():
        raise BenchConfigError(f"agent {label!r}: no saved agent at {str(path)!r}")
    return _AgentSpec(label, path=path)


def _expand(items: Sequence[str], word: str, expansion: Sequence[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        for x in (expansion if item == word else [item]):
            if x not in out:
                out.append(x)
    return out


def check_env_id(env_id: str) -> None:
    from optenv.registry import registered_ids

    ids = registered_ids()
    if env_id not in ids:
        close = difflib.get_close_matches(env_id, ids, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BenchConfigError(
            f"unknown env {env_id!r}{hint}; registered optenv envs: {ids} or 'all'"
        )


@dataclass
class _Plan:
    envs: list[str]
    agents: list[_AgentSpec]
    families: dict[str, Any]
    steps: dict[str, int]
    horizons: dict[str, int]


def _plan(config: BenchConfig) -> _Plan:
    """Check the whole configuration before any work starts (BenchConfigError if bad)."""
    from optenv.registry import make_agent, task_for

    if isinstance(config.envs, str) or isinstance(config.agents, str):
        raise BenchConfigError("envs and agents must be lists of strings, not a string")
    envs = _expand(list(config.envs), "all", all_envs())
    specs = [parse_agent(a) for a in _expand(list(config.agents), "baselines", BASELINES)]
    if not envs:
        raise BenchConfigError("no envs given")
    if not specs:
        raise BenchConfigError("no agents given")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise BenchConfigError(f"agent names must be unique, got {labels}")
    if not isinstance(config.seeds, int) or isinstance(config.seeds, bool) or config.seeds < 1:
        raise BenchConfigError(f"seeds must be a positive int, got {config.seeds!r}")
    if config.steps is not None and (not isinstance(config.steps, int) or config.steps < 1):
        raise BenchConfigError(f"steps must be a positive int or None, got {config.steps!r}")
    if config.metric not in _METRICS:
        raise BenchConfigError(f"metric must be one of {_METRICS}, got {config.metric!r}")
    if not isinstance(config.env_kwargs, dict):
        raise BenchConfigError(f"env_kwargs must be a dict, got {config.env_kwargs!r}")
    if config.grid is not None:
        grid = list(config.grid)
        if not grid or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                for v in grid):
            raise BenchConfigError(f"grid must be positive finite numbers, got {grid!r}")
    families, steps, horizons = {}, {}, {}
    for env_id in envs:
        check_env_id(env_id)
        try:
            family, horizon = task_for(env_id, **config.env_kwargs)
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise BenchConfigError(f"{env_id} with env kwargs {config.env_kwargs}: {err}") \
                from err
        families[env_id], horizons[env_id] = family, horizon
        steps[env_id] = config.steps or horizon
    for spec in specs:  # build each agent once: a missing class or bad file fails here
        try:
            agent = _build(spec) if spec.path is not None else make_agent(spec.name)
            if spec.path is None and config.tune and not type(agent).tunable:
                raise BenchConfigError(
                    f"agent {spec.label!r} learns an optimizer, which the bench does not "
                    f"train: run `optenv train {spec.label} --env ID --out DIR` and bench "
                    f"{spec.label}:DIR/agent.pt (or use --no-tune for its untrained policy)")
            if spec.path is not None or not config.tune:
                agent.policy()  # used as is: it must have a policy now
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise BenchConfigError(f"agent {spec.label!r}: {err}") from err
    return _Plan(envs, specs, families, steps, horizons)


def _build(spec: _AgentSpec) -> Agent:
    from optenv.registry import load_agent

    assert spec.path is not None
    return load_agent(spec.path)


# -- tuning cache ----------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """Plain JSON values: tensors and arrays as lists, non-finite floats as ``None``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.generic,)):
        return _jsonable(obj.item())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def tuning_key(env_id: str, env_kwargs: dict[str, Any], agent: str, steps: int,
               grid: Sequence[float] | None, metric: str) -> str:
    """The cache key of one tuning: everything its outcome depends on."""
    return json.dumps(
        {"env": env_id, "env_kwargs": _jsonable(env_kwargs), "agent": agent, "steps": steps,
         "grid": None if grid is None else [float(v) for v in grid], "metric": metric,
         "seeds": list(TUNING_SEEDS)},
        sort_keys=True,
    )


class _TuningCache:
    """``out/tuning.json``: tuned hyperparameters per key, plus the tuned agent files."""

    def __init__(self, out: Path) -> None:
        self.path = out / "tuning.json"
        self.agent_dir = out / "agents"
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = read_json(self.path)
                self.entries = dict(data["entries"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path} is not an optenv tuning cache ({err}); "
                                 "remove it to tune again") from err

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, agent: Agent, summary: dict[str, Any]) -> dict[str, Any]:
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        rel = f"agents/{json.loads(key)['agent'].replace(':', '_')}-{digest}.pt"
        entry = {
            **json.loads(key),
            "hyperparams": _jsonable(_hyperparams(agent, summary)),
            "tuning": _jsonable(summary.get("tuning", {})),
            "training_cost": _jsonable(dict(agent.training_cost)),
            "agent_file": None,
        }
        try:
            agent.save(self.path.parent / rel)
            entry["agent_file"] = rel
        except Exception:  # an agent that cannot be saved is rebuilt from its hyperparameters
            pass
        self.entries[key] = entry
        atomic_write_json(self.path, {"format": RESULTS_FORMAT, "entries": self.entries})
        return entry

    def restore(self, name: str, entry: dict[str, Any]) -> Agent | None:
        """The tuned agent of ``entry``: from its file, else ``make_agent(name, **hp)``."""
        from optenv.registry import load_agent, make_agent

        if entry.get("agent_file"):
            try:
                return load_agent(self.path.parent / entry["agent_file"])
            except (ValueError, TypeError, FileNotFoundError, KeyError):
                pass
        try:
            agent = make_agent(name, **entry.get("hyperparams", {}))
        except (ValueError, TypeError):
            return None
        agent.training_cost = dict(entry.get("training_cost", {}))
        return agent


def _hyperparams(agent: Agent, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    if summary and isinstance(summary.get("hyperparams"), dict):
        return dict(summary["hyperparams"])
    get = getattr(agent, "hyperparams", None)
    if callable(get):
        return dict(get())
    return dict(agent.config())


# -- metrics -----------------------------------------------------------------------------------
def speedup(reference: Sequence[float], target: float, steps: int) -> tuple[float, bool]:
    """Speedup of an agent that reaches ``target`` in ``steps`` steps, over a reference.

    ``reference[t]`` is the reference's (tuned Adam's) median objective after ``t``
    steps, ``t = 0..T_ref``. Returns ``(s, lower_bound)``: ``s`` = (first ``t`` with
    ``reference[t] <= target``) / ``steps``; if the reference never reaches ``target``,
    ``s = T_ref / steps`` and ``lower_bound`` is true (the speedup is ``> s``).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 1 or ref.size < 1:
        raise ValueError(f"reference must be a non-empty 1-d curve, got shape {ref.shape}")
    if not math.isfinite(target):
        return float("nan"), False
    hit = np.flatnonzero(ref <= target)
    if hit.size == 0:
        return (ref.size - 1) / steps, True
    return float(hit[0]) / steps, False


def format_speedup(value: float | None, lower_bound: bool = False) -> str:
    """``"0.50"``, ``">1.0"`` (Adam never got there) or ``"-"``."""
    if value is None or not math.isfinite(value):
        return "-"
    return f">{value:.1f}" if lower_bound else f"{value:.2f}"


def _subsample(T: int) -> np.ndarray:
    """At most MAX_CURVE_POINTS step indices from 0..T, both ends included."""
    return np.unique(np.linspace(0, T, min(T + 1, MAX_CURVE_POINTS)).round().astype(int))


def _nums(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def _agent_result(objective: np.ndarray, diverged: np.ndarray, hyperparams: dict[str, Any],
                  wall_s: float, training_cost: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``results.json`` entry of one agent on one env from its curves ``(S, T + 1)``."""
    T = objective.shape[1] - 1
    idx = _subsample(T)
    with np.errstate(invalid="ignore"):
        q25, median, q75 = np.percentile(objective[:, idx], [25, 50, 75], axis=0)
        auc = objective[:, 1:].mean(axis=1)
    return {
        "source": source,
        "hyperparams": _jsonable(hyperparams),
        "final_loss": _nums(objective[:, -1]),
        "auc": _nums(auc),
        "diverged": [bool(d) for d in diverged],
        "curve": {"steps": [int(i) for i in idx], "median": _nums(median),
                  "q25": _nums(q25), "q75": _nums(q75)},
        "wall_s": float(wall_s),
        "training_cost": _jsonable(training_cost),
        "speedup_over_adam": None,
    }


# -- the run -----------------------------------------------------------------------------------
def plot_path(out: Path, env_id: str) -> Path:
    """Where the curves of ``env_id`` go: ``out/optenv_MLP-Digits-v0.png``."""
    return Path(out) / (env_id.replace("/", "_").replace(os.sep, "_") + ".png")


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Tune, evaluate, and write ``results.json``, ``report.md`` and plots to ``config.out``.

    Returns the results object (what ``results.json`` holds). Raises
    :class:`BenchConfigError` before doing any work if the configuration names an
    unknown env or agent or has a bad value.
    """
    from rich.console import Console
    from tqdm import tqdm

    from optenv.registry import make_agent

    plan = _plan(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = _TuningCache(out)
    eval_seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + config.seeds))
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "config": {**config.to_dict(), "envs": plan.envs,
                   "agents": [s.label for s in plan.agents],
                   "tuning_seeds": list(TUNING_SEEDS), "eval_seeds": eval_seeds},
        "envs": {},
    }
    atomic_write_json(out / "config.json", results["config"])
    console = Console(stderr=False, quiet=not config.progress)
    full_medians: dict[str, dict[str, np.ndarray]] = {}
    pairs = tqdm(total=len(plan.envs) * len(plan.agents), desc="bench", unit="run",
                 disable=not config.progress)
    for env_id in plan.envs:
        family, steps = plan.families[env_id], plan.steps[env_id]
        env_result: dict[str, Any] = {
            "steps": steps, "horizon": plan.horizons[env_id],
            "env_kwargs": _jsonable(config.env_kwargs), "eval_seeds": eval_seeds, "agents": {},
        }
        results["envs"][env_id] = env_result
        full_medians[env_id] = {}
        for spec in plan.agents:
            if spec.path is not None:
                agent, source = _build(spec), "path"
                hyperparams = _hyperparams(agent)
            elif not config.tune:
                agent, source = make_agent(spec.name), "default"
                hyperparams = _hyperparams(agent)
            else:
                source = "tuned"
                assert spec.name is not None
                key = tuning_key(env_id, config.env_kwargs, spec.label, steps, config.grid,
                                 config.metric)
                entry = cache.get(key)
                agent = cache.restore(spec.name, entry) if entry is not None else None
                if agent is None:
                    pairs.set_description(f"{env_id} · tuning {spec.label}")
                    agent = make_agent(spec.name)
                    start = time.perf_counter()
                    summary = agent.train(env_id, steps=steps, seeds=TUNING_SEEDS,
                                          grid=config.grid, metric=config.metric,
                                          **config.env_kwargs)
                    if not agent.training_cost.get("wall_s"):
                        agent.training_cost["wall_s"] = time.perf_counter() - start
                    entry = cache.put(key, agent, summary or {})
                hyperparams = entry["hyperparams"]
            pairs.set_description(f"{env_id} · evaluating {spec.label}")
            with tqdm(total=steps, desc=f"{spec.label} on {len(eval_seeds)} seeds",
                      unit="step", leave=False, disable=not config.progress) as bar:
                run = rollout(agent.policy(), family, steps, seeds=eval_seeds,
                              progress=lambda _t, bar=bar: bar.update(1))
            objective = run.objective.double().numpy()
            env_result["agents"][spec.label] = _agent_result(
                objective, run.diverged.numpy(), hyperparams, run.wall_s,
                dict(agent.training_cost), source,
            )
            with np.errstate(invalid="ignore"):
                full_medians[env_id][spec.label] = np.median(objective, axis=0)
            _add_speedups(env_result, full_medians[env_id])
            # after every agent: an interrupted bench leaves everything finished so far
            validate_results(results)
            atomic_write_json(out / "results.json", results)
            atomic_write_text(out / "report.md", render_report(results))
            plot_env(env_id, env_result, plot_path(out, env_id))
            pairs.update(1)
    pairs.close()
    for env_id in plan.envs:
        console.print(_rich_table(env_id, results["envs"][env_id]))
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and "
                  f"{len(plan.envs)} plot(s) to {out}")
    return results


def _add_speedups(env_result: dict[str, Any], medians: dict[str, np.ndarray]) -> None:
    if REFERENCE_AGENT not in medians:
        return
    reference, steps = medians[REFERENCE_AGENT], env_result["steps"]
    for label, median in medians.items():
        value, bound = speedup(reference, float(median[-1]), steps)
        env_result["agents"][label]["speedup_over_adam"] = (
            {"value": value, "lower_bound": bound} if math.isfinite(value) else None
        )


# -- report ------------------------------------------------------------------------------------
#: (report.md header, console header) per column; the console leaves out eval wall time
_COLUMNS = (
    ("agent", "agent"), ("median final loss", "final"), ("IQR (q25 – q75)", "IQR"),
    ("mean AUC", "AUC"), ("diverged", "div."), ("eval wall (s)", None),
    ("speedup vs Adam", "vs Adam"), ("hyperparameters", "hyperparams"),
    ("tuning / training cost", "cost"),
)
_SPEEDUP_COLUMN = 6


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _fmt_cost(cost: dict[str, Any], short: bool = False) -> str:
    """``"9,900 env steps, 2.1 s"``: what tuning or training spent."""
    parts, rest = [], dict(cost)
    steps, wall = rest.pop("env_steps", None), rest.pop("wall_s", None)
    if isinstance(steps, (int, float)) and math.isfinite(steps):
        parts.append(f"{int(steps):,}" + (" steps" if short else " env steps"))
    if isinstance(wall, (int, float)) and math.isfinite(wall):
        parts.append(f"{wall:.2g} s" if short else f"{wall:.3g} s")
    parts += [f"{k}={_fmt(float(v)) if isinstance(v, (int, float)) else v}"
              for k, v in rest.items()]
    return ", ".join(parts) or "-"


def _keep(with_speedup: bool, short: bool) -> list[int]:
    return [i for i, (_, head) in enumerate(_COLUMNS)
            if (with_speedup or i != _SPEEDUP_COLUMN) and (head is not None or not short)]


def _columns(with_speedup: bool, short: bool = False) -> list[str]:
    return [_COLUMNS[i][1 if short else 0] for i in _keep(with_speedup, short)]


def _row(label: str, r: dict[str, Any], with_speedup: bool, short: bool = False) -> list[str]:
    d = 3 if short else 4
    final = np.array([np.nan if v is None else v for v in r["final_loss"]], dtype=np.float64)
    auc = np.array([np.nan if v is None else v for v in r["auc"]], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        q25, med, q75 = (np.percentile(final, [25, 50, 75]) if final.size else (np.nan,) * 3)
        mean_auc = float(np.mean(auc)) if auc.size else float("nan")
    sp = r.get("speedup_over_adam")
    speed = format_speedup(sp["value"], sp["lower_bound"]) if sp else "-"
    items = list(r["hyperparams"].items())
    if short:  # the console: the first two numbers (a baseline's tuned lr comes first)
        numbers = [(k, v) for k, v in items if isinstance(v, (int, float))]
        items = numbers[:2] + ([("…", "")] if len(numbers) > 2 or len(numbers) < len(items)
                               else [])
    hp = ", ".join(k if k == "…" else f"{k}={_fmt(v, d) if isinstance(v, float) else v}"
                   for k, v in items) or "-"
    row = [label, _fmt(float(med), d), f"{_fmt(float(q25), d)} – {_fmt(float(q75), d)}",
           _fmt(mean_auc, d), f"{sum(r['diverged'])}/{len(r['diverged'])}",
           f"{r['wall_s']:.2f}", speed, hp, _fmt_cost(r.get("training_cost") or {}, short)]
    return [row[i] for i in _keep(with_speedup, short)]


def render_report(results: dict[str, Any]) -> str:
    """``report.md``: one table per env."""
    cfg = results["config"]
    lines = [
        "# optenv bench",
        "",
        f"Agents tuned on seeds {cfg['tuning_seeds']} (metric: {cfg['metric']}), evaluated "
        f"on held-out seeds {cfg['eval_seeds'][0]}..{cfg['eval_seeds'][-1]}. Losses are the "
        "true objective; a diverged run counts with its divergence threshold.",
        "",
    ]
    for env_id, env in results["envs"].items():
        with_speedup = REFERENCE_AGENT in env["agents"]
        kw = f", env kwargs `{json.dumps(env['env_kwargs'])}`" if env["env_kwargs"] else ""
        lines += [f"## {env_id}", "", f"{env['steps']} steps{kw}.", "",
                  f"![curves]({plot_path(Path('.'), env_id).name})", ""]
        cols = _columns(with_speedup)
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for label, r in env["agents"].items():
            cells = [c.replace("|", "\\|") for c in _row(label, r, with_speedup)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Speedup vs Adam: (steps tuned Adam's median curve needs to reach the agent's median "
        "final loss) / (the agent's steps); > 1 is faster than Adam, `>1.0` means Adam never "
        "reached it (learned_optimization's normalizer).",
        "",
    ]
    return "\n".join(lines)


def _rich_table(env_id: str, env: dict[str, Any]) -> Any:
    from rich.table import Table

    with_speedup = REFERENCE_AGENT in env["agents"]
    table = Table(title=f"{env_id}, {env['steps']} steps, {len(env['eval_seeds'])} seeds")
    for col in _columns(with_speedup, short=True):
        table.add_column(col, overflow="fold")
    for label, r in env["agents"].items():
        table.add_row(*_row(label, r, with_speedup, short=True))
    return table


def plot_env(env_id: str, env: dict[str, Any], path: Path) -> Path:
    """Median loss curves with their IQR band, one line per agent, log y axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    everything = []
    for label, r in env["agents"].items():
        c = r["curve"]
        arrays = [np.array([np.nan if v is None else v for v in c[k]], dtype=np.float64)
                  for k in ("median", "q25", "q75")]
        everything += arrays
        n_div = sum(r["diverged"])
        name = label + (f" ({n_div} diverged)" if n_div else "")
        (line,) = ax.plot(c["steps"], arrays[0], label=name)
        ax.fill_between(c["steps"], arrays[1], arrays[2], color=line.get_color(), alpha=0.2)
    values = np.concatenate(everything) if everything else np.array([1.0])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0:
        ax.set_yscale("log")
    elif values.size:
        ax.set_yscale("symlog", linthresh=max(1e-8, float(np.abs(values).max()) * 1e-6))
    ax.set_xlabel("step")
    ax.set_ylabel("objective (median, IQR band)")
    ax.set_title(env_id)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


# -- results schema ----------------------------------------------------------------------------
_NUM_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
_NUM_LIST: dict[str, Any] = {"type": "array", "items": _NUM_OR_NULL}
_CURVE: dict[str, Any] = {
    "type": "object",
    "required": ["steps", "median", "q25", "q75"],
    "properties": {"steps": {"type": "array", "items": {"type": "integer"}},
                   "median": _NUM_LIST, "q25": _NUM_LIST, "q75": _NUM_LIST},
    "additionalProperties": False,
}
_AGENT: dict[str, Any] = {
    "type": "object",
    "required": ["hyperparams", "final_loss", "auc", "diverged", "curve", "wall_s",
                 "training_cost"],
    "properties": {
        "source": {"type": "string"},
        "hyperparams": {"type": "object"},
        "final_loss": _NUM_LIST,
        "auc": _NUM_LIST,
        "diverged": {"type": "array", "items": {"type": "boolean"}},
        "curve": _CURVE,
        "wall_s": {"type": "number"},
        "training_cost": {"type": "object"},
        "speedup_over_adam": {
            "type": ["object", "null"],
            "required": ["value", "lower_bound"],
            "properties": {"value": {"type": "number"}, "lower_bound": {"type": "boolean"}},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_ENV: dict[str, Any] = {
    "type": "object",
    "required": ["steps", "eval_seeds", "agents"],
    "properties": {
        "steps": {"type": "integer"},
        "horizon": {"type": "integer"},
        "env_kwargs": {"type": "object"},
        "eval_seeds": {"type": "array", "items": {"type": "integer"}},
        "agents": {"type": "object", "additionalProperties": _AGENT},
    },
}
#: JSON Schema (subset: type, properties, required, items, additionalProperties) of
#: ``results.json``
RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["config", "envs"],
    "properties": {
        "format": {"type": "integer"},
        "config": {
            "type": "object",
            "required": ["envs", "agents", "seeds", "steps", "env_kwargs", "metric", "grid"],
            "properties": {
                "envs": {"type": "array", "items": {"type": "string"}},
                "agents": {"type": "array", "items": {"type": "string"}},
                "seeds": {"type": "integer"},
                "steps": {"type": ["integer", "null"]},
                "env_kwargs": {"type": "object"},
                "out": {"type": "string"},
                "metric": {"type": "string"},
                "grid": {"type": ["array", "null"], "items": {"type": "number"}},
                "tune": {"type": "boolean"},
                "tuning_seeds": {"type": "array", "items": {"type": "integer"}},
                "eval_seeds": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "envs": {"type": "object", "additionalProperties": _ENV},
    },
}

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    and math.isfinite(v),
}


def validate_schema(obj: Any, schema: dict[str, Any], where: str = "$") -> None:
    """Check ``obj`` against a JSON Schema using only ``type`` (a name or a list),
    ``properties``, ``required``, ``items`` and ``additionalProperties`` (bool or a
    schema). Raises ``ValueError`` naming the first offending path."""
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](obj) for t in types):
            raise ValueError(f"{where}: expected {' or '.join(types)}, got "
                             f"{type(obj).__name__} {obj!r:.80}")
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in obj:
                raise ValueError(f"{where}: missing required key {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, value in obj.items():
            if key in props:
                validate_schema(value, props[key], f"{where}.{key}")
            elif extra is False:
                raise ValueError(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                validate_schema(value, extra, f"{where}[{key!r}]")
    elif isinstance(obj, list) and "items" in schema:
        for i, value in enumerate(obj):
            validate_schema(value, schema["items"], f"{where}[{i}]")


def validate_results(obj: Any) -> None:
    """Check a ``results.json`` object against :data:`RESULTS_SCHEMA`, and that every
    agent has one value per evaluation seed and curves of matching lengths.
    Raises ``ValueError`` naming the first problem."""
    validate_schema(obj, RESULTS_SCHEMA)
    for env_id, env in obj["envs"].items():
        n_seeds = len(env["eval_seeds"])
        for label, r in env["agents"].items():
            where = f"$.envs[{env_id!r}].agents[{label!r}]"
            for key in ("final_loss", "auc", "diverged"):
                if len(r[key]) != n_seeds:
                    raise ValueError(f"{where}.{key}: {len(r[key])} values for {n_seeds} seeds")
            lengths = {len(r["curve"][k]) for k in ("steps", "median", "q25", "q75")}
            if len(lengths) != 1 or not r["curve"]["steps"]:
                raise ValueError(f"{where}.curve: arrays of different lengths or empty")
            if len(r["curve"]["steps"]) > MAX_CURVE_POINTS:
                raise ValueError(f"{where}.curve: more than {MAX_CURVE_POINTS} points")
