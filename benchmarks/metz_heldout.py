"""Learned optimizers on held-out tasks of a family against tuned Adam (Metz et al. 2019, §4.4).

    python benchmarks/metz_heldout.py LABEL=AGENT [LABEL=AGENT ...]
        [--env optenv/CNN-Digits-v0] [--env-kwargs JSON] [--tasks 10] [--json out.json]

AGENT is a pretrained name (``metz-cnn``) or a saved ``agent.pt``. Each agent runs the
held-out tasks (seeds 1000 .. 1000 + tasks − 1, the env's horizon) and is compared with
two tuned Adams: tuned *on the family* (the 11-value grid on training seeds 0–2, as
``optenv bench`` tunes) and tuned *per task* (the grid run on each held-out task itself,
an oracle: :func:`agents.metz.compare_with_tuned_adam`). A win is a lower final true
objective on a task. Defaults: the CNN-Digits family of the README's Metz table.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import torch

from agents.baselines import AdamPolicy
from agents.metz import compare_with_tuned_adam, evaluate, wins
from optenv.cli import json_object
from optenv.registry import PRETRAINED, load_agent, pretrained_path, task_for
from optenv.tuning import tune_grid

DEFAULT_KWARGS = {"channels": 8, "class_subset": 5, "batch_size": 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agents", nargs="+", metavar="LABEL=AGENT")
    parser.add_argument("--env", default="optenv/CNN-Digits-v0")
    parser.add_argument("--env-kwargs", type=json_object, default=DEFAULT_KWARGS,
                        metavar="JSON", help="task arguments as in gym.make")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    specs = []
    for spec in args.agents:
        label, sep, agent = spec.partition("=")
        if not sep or not label or not agent:
            parser.error(f"expected LABEL=AGENT (a pretrained name or agent.pt), got {spec!r}")
        path = pretrained_path(agent) if agent in PRETRAINED else agent
        try:  # before minutes of tuning, not after
            specs.append((label, path, load_agent(path)))
        except (OSError, ValueError) as err:
            parser.error(f"agent {spec!r}: {err}")
    if args.tasks < 1:
        parser.error(f"--tasks must be >= 1, got {args.tasks}")
    try:
        family, horizon = task_for(args.env, **args.env_kwargs)
    except (gym.error.Error, ValueError, TypeError) as err:
        parser.error(f"--env {args.env!r} with --env-kwargs {json.dumps(args.env_kwargs)}: "
                     f"{err}")
    torch.set_num_threads(1)

    began = time.perf_counter()
    seeds = list(range(1000, 1000 + args.tasks))
    tuned = tune_grid(AdamPolicy, family, horizon, seeds=(0, 1, 2), metric="final")
    adam_family = evaluate(AdamPolicy(lr=tuned.best), family, seeds, horizon)
    first = compare_with_tuned_adam(specs[0][2].policy(), family, seeds, horizon)
    adam_task = torch.tensor(first["adam_final"])
    rows = [{"agent": "adam (tuned on the family)", "lr": tuned.best,
             "final": adam_family.tolist()},
            {"agent": "adam (tuned per task)", "lr": first["adam_lr"],
             "final": adam_task.tolist()}]
    for i, (label, path, agent) in enumerate(specs):
        final = (torch.tensor(first["policy_final"]) if i == 0
                 else evaluate(agent.policy(), family, seeds, horizon))
        rows.append({"agent": label, "path": path, "final": final.tolist(),
                     "wins_vs_family": wins(final, adam_family),
                     "wins_vs_task": wins(final, adam_task)})
    wall = time.perf_counter() - began

    print(f"{args.env} {json.dumps(args.env_kwargs)}: {args.tasks} held-out tasks, "
          f"{horizon} steps ({wall:.0f} s)")
    print(f"{'agent':28s} {'median final':>13s} {'wins vs family Adam':>20s} "
          f"{'wins vs per-task Adam':>22s}")
    for r in rows:
        r["median"] = float(torch.tensor(r["final"]).double().quantile(0.5))
        w1 = f"{r['wins_vs_family']}/{args.tasks}" if "wins_vs_family" in r else "–"
        w2 = f"{r['wins_vs_task']}/{args.tasks}" if "wins_vs_task" in r else "–"
        print(f"{r['agent']:28s} {r['median']:13.4g} {w1:>20s} {w2:>22s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": args.env, "env_kwargs": args.env_kwargs, "seeds": seeds,
                       "steps": horizon, "wall_s": wall, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
