"""``GPSAgent``: guided policy search (Li & Malik 2017) as an :class:`optenv.policy.Agent`.

Registered in optenv's agent registry as ``"gps"``; ``train`` runs
:class:`gps.trainer.GPSTrainer` and ``policy()`` returns the trained
:class:`~gps.policy.CoordinatewiseLSTMPolicy` (a StepPolicy for ``optenv.policy.rollout``,
the bench and ``LearnedOptimizer``). ``save`` / ``optenv.registry.load_agent`` round-trip
it: the state is the policy's constructor config (JSON) and its ``state_dict`` (tensors).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gps.policy import CoordinatewiseLSTMPolicy
from gps.trainer import GPSConfig, GPSTrainer
from optenv.policy import Agent, StepPolicy
from optenv.registry import task_for

__all__ = ["GPSAgent"]


def _run_cost(history: list[dict[str, Any]], rollout_steps: int) -> dict[str, float]:
    """A run's training cost from its metrics lines: env steps (ψ's rollouts and π's
    evaluations; ``rollout_steps`` per line written before lines recorded them) and the
    iterations' wall time."""
    return {"env_steps": float(sum(r.get("env_steps", rollout_steps) for r in history)),
            "wall_s": float(sum(r["time_total"] for r in history))}


class GPSAgent(Agent):
    """Trains a coordinatewise LSTM optimizer by convolutional GPS.

    Constructor arguments are defaults for :class:`gps.trainer.GPSConfig` (e.g.
    ``hidden``, ``share``, ``seed``, ``horizon``); ``train(**kwargs)`` may override them.
    Before training, :meth:`policy` is the untrained LSTM (one group, ``share="all"``).
    """

    name = "gps"
    tunable = False  # trained by `optenv train gps`, benched from its file

    def __init__(self, **defaults: Any) -> None:
        super().__init__()
        GPSConfig(**defaults)  # validate now
        self._defaults = dict(defaults)
        self._policy_config: dict[str, Any] = {
            "num_groups": 1, "hidden": int(defaults.get("hidden", GPSConfig.hidden)),
            "share": "all", "seed": int(defaults.get("seed", 0)),
        }
        self._policy = CoordinatewiseLSTMPolicy(**self._policy_config)
        self.summary: dict[str, Any] = {}

    def train(self, env_id: str, iterations: int = 10, samples: int = 8,
              out: str | Path | None = None, resume: bool = False,
              progress: bool = False, **kwargs: Any) -> dict[str, Any]:
        """Run GPS on ``env_id``; ``out`` is the run folder (metrics, checkpoint)."""
        config = GPSConfig(**{**self._defaults, **kwargs, "env_id": env_id,
                              "iterations": int(iterations), "samples": int(samples)})
        trainer = GPSTrainer(config, out=out, resume=resume)
        history = trainer.run(progress=progress)
        self._policy = trainer.final_policy()
        self._policy_config = self._policy.config()
        # the whole run's cost: the history comes back on resume
        self.training_cost = _run_cost(history, config.samples * trainer.T)
        self.summary = {"config": asdict(config), "iterations": trainer.iteration,
                        "final": history[-1] if history else {}}
        return self.summary

    def policy(self) -> StepPolicy:
        return self._policy

    @classmethod
    def from_checkpoint(cls, path: str | Path, keep: str = "best") -> GPSAgent:
        """The agent a run folder's ``checkpoint.pt`` stands for (e.g. of a stopped run):
        its best evaluated π (``keep="best"``) or its current one (``"last"``)."""
        import torch

        if keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
        ck = torch.load(Path(path), map_location="cpu", weights_only=True)
        metrics = Path(path).with_name("metrics.jsonl")
        history = None
        if metrics.is_file():  # the run's cost up to this checkpoint
            lines = metrics.read_text().splitlines()[: int(ck["iteration"])]
            history = [json.loads(line) for line in lines]
        return cls.from_run_state(json.loads(ck["config"]), int(ck["iteration"]),
                                  ck["policy_config"],
                                  ck["best_policy" if keep == "best" else "policy"], history)

    @classmethod
    def from_run_state(cls, config: dict[str, Any], iteration: int,
                       policy_config: dict[str, Any], policy: dict[str, Any],
                       history: list[dict[str, Any]] | None = None) -> GPSAgent:
        """The agent for a π of a GPS run: the run's ``GPSConfig`` (as a dict), the
        iterations done, π's constructor config and ``state_dict``, and the run's metrics
        lines so far (its training cost; None: unknown, left at 0)."""
        agent = cls(**{k: v for k, v in config.items()
                       if k not in ("env_id", "iterations", "samples")})
        agent.load_state_dict({"policy_config": policy_config, "policy": policy})
        agent.summary = {"config": config, "iterations": int(iteration)}
        if history is not None:
            T = config["horizon"] or task_for(config["env_id"], **config["env_kwargs"])[1]
            agent.training_cost = _run_cost(history, config["samples"] * int(T))
        return agent

    def config(self) -> dict[str, Any]:
        return dict(self._defaults)

    def hyperparams(self) -> dict[str, Any]:
        """What the policy was trained with (the env, the run's size and every option away
        from GPSConfig's defaults), else the constructor defaults: the bench's table."""
        trained = self.summary.get("config")
        if not isinstance(trained, dict):
            return self.config()
        defaults = asdict(GPSConfig())
        shown = {k: v for k, v in trained.items()
                 if k in ("env_id", "samples", "horizon") or v != defaults.get(k, v)}
        shown["iterations"] = int(self.summary.get("iterations", trained.get("iterations", 0)))
        return shown

    def state_dict(self) -> dict[str, Any]:
        return {"policy_config": dict(self._policy_config),
                "policy": {k: v.detach().clone() for k, v in self._policy.state_dict().items()},
                "summary": json.loads(json.dumps(self.summary))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._policy_config = dict(state["policy_config"])
        self._policy = CoordinatewiseLSTMPolicy(**self._policy_config)
        self._policy.load_state_dict(state["policy"])
        self.summary = dict(state.get("summary", {}))  # files before summaries: none
