"""Tuned baselines whose every step is bounded as the env bounds a policy's step.

    python benchmarks/bounded_baselines.py [--env optenv/MLP-Digits-v0] [--env-kwargs JSON]
        [--bound 0.1] [--agents sgd momentum cg lbfgs adam adagrad rmsprop]
        [--learned gps-psd ...] [--seeds 20] [--steps N] [--json out.json]

An env's action is a step bounded per coordinate: ``Δx = step_scale · a`` with
``a ∈ [-1, 1]`` (0.1 by default), so every policy trained in it, GPS's included, moves
a coordinate by at most ``step_scale`` a step. ``optenv bench`` runs the hand-designed
baselines unbounded. This script tunes each baseline twice, as the bench does (the
11-value learning-rate grid on training seeds 0–2, the final true objective), once
free and once with every step clipped coordinatewise to ``±bound`` (the clip is part
of the rule while it is tuned), and reports both on the bench's held-out seeds
(1000 ..), beside learned agents, also free and bounded (a learned policy's step is
its raw output; in the env it would be clipped). It answers: how much of a tuned
baseline's result needs steps the env never allows?
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import torch
from torch import Tensor

from optenv.bench import BASELINES, EVAL_SEED_START, TUNING_SEEDS
from optenv.cli import json_object
from optenv.policy import PolicyState, StepPolicy, rollout
from optenv.problems.base import CoordinateGroup
from optenv.registry import PRETRAINED, load_agent, make_agent, pretrained_path, task_for
from optenv.tuning import tune_grid


class BoundedPolicy(StepPolicy):
    """``policy``'s step clipped coordinatewise to ``[-bound, bound]``."""

    def __init__(self, policy: StepPolicy, bound: float) -> None:
        self.policy, self.bound = policy, float(bound)
        self.features, self.feature_kwargs = policy.features, policy.feature_kwargs

    def reset(self, n: int, groups: tuple[CoordinateGroup, ...], batch: int) -> PolicyState:
        return self.policy.reset(n, groups, batch)

    def step(self, features: Tensor, state: PolicyState) -> tuple[Tensor, PolicyState]:
        delta, state = self.policy.step(features, state)
        return delta.clamp(-self.bound, self.bound), state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="optenv/MLP-Digits-v0")
    parser.add_argument("--env-kwargs", type=json_object, default={}, metavar="JSON")
    parser.add_argument("--bound", type=float, default=None,
                        help="per-coordinate step bound (default: the env's step_scale)")
    parser.add_argument("--agents", nargs="+", default=[
        "sgd", "momentum", "cg", "lbfgs", "adam", "adagrad", "rmsprop"])
    parser.add_argument("--learned", nargs="*", default=[], metavar="AGENT",
                        help="learned agents: pretrained names or agent.pt files")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="default: the env's horizon")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for name in args.agents:
        if name not in BASELINES:
            parser.error(f"--agents takes baselines {BASELINES}, got {name!r}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    try:
        family, horizon = task_for(args.env, **args.env_kwargs)
        # the env's own step bound, registered or given (what a policy acting in it gets)
        env = gym.make(args.env, **args.env_kwargs)
        env_bound = env.unwrapped.loop.step_scale
        env.close()
    except (gym.error.Error, ValueError, TypeError) as err:
        parser.error(f"--env {args.env!r} with --env-kwargs {json.dumps(args.env_kwargs)}: "
                     f"{err}")
    bound = float(env_bound if args.bound is None else args.bound)
    if not bound > 0:
        parser.error(f"--bound must be > 0, got {bound}")
    learned = []
    for spec in args.learned:
        try:
            learned.append(
                (spec, load_agent(pretrained_path(spec) if spec in PRETRAINED else spec)))
        except (OSError, ValueError) as err:
            parser.error(f"--learned {spec!r}: {err}")
    torch.set_num_threads(1)

    began = time.perf_counter()
    steps = args.steps or horizon
    seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + args.seeds))

    def held_out(policy: StepPolicy) -> list[float]:
        with torch.no_grad():
            return rollout(policy, family, steps, seeds=seeds).final.tolist()

    rows = []
    for name in args.agents:
        agent = make_agent(name)
        for which, make in (("free", agent.make_policy),
                            ("bounded", lambda lr, a=agent: BoundedPolicy(a.make_policy(lr),
                                                                          bound))):
            tuned = tune_grid(make, family, steps, seeds=TUNING_SEEDS, metric="final")
            rows.append({"agent": name, "which": which, "lr": tuned.best,
                         "final": held_out(make(tuned.best))})
    for spec, agent in learned:
        policy = agent.policy()
        for which, rule in (("free", policy), ("bounded", BoundedPolicy(policy, bound))):
            rows.append({"agent": spec, "which": which, "lr": None, "final": held_out(rule)})
    wall = time.perf_counter() - began

    print(f"{args.env} {json.dumps(args.env_kwargs)}: {args.seeds} held-out seeds, {steps} "
          f"steps, bound {bound:g} per coordinate and step ({wall:.0f} s)")
    print(f"{'agent':12s} {'steps':>8s} {'tuned lr':>9s} {'median final':>13s}")
    for r in rows:
        r["median"] = float(torch.tensor(r["final"]).double().quantile(0.5))
        lr = "–" if r["lr"] is None else f"{r['lr']:.3g}"
        print(f"{r['agent']:12s} {r['which']:>8s} {lr:>9s} {r['median']:13.4g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": args.env, "env_kwargs": args.env_kwargs, "bound": bound,
                       "seeds": seeds, "steps": steps, "wall_s": wall, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
