"""Choose a GPS run's π after training, on more validation seeds than the run used.

    python benchmarks/gps_select.py RUN [--seeds 40] [--first-seed 20000]
        [--stat log_mean] [--steps N] [--save RUN/selected.pt] [--json out.json]

A run trained with ``--set save_policies=true`` keeps every iteration's π as an agent
file (``RUN/policies/iteration_NNNN.pt``). The trainer itself ranks them on its few
``eval_seeds``; in regimes where runs either memorize the training set or stall, ten
seeds do not rank medians. This script rolls every saved π out on validation seeds
``--first-seed`` .. (400 steps, or the run's ``eval_steps``), prints per iteration the
median, quartiles, how many runs end at exactly 0 and the mean log10 final loss, and
copies the π with the lowest ``--stat`` (``gps.trainer.evaluation_cost``: "log_mean",
"median" or "mean") to ``--save``. Seeds that the bench holds out (1000 .. 1999) are
refused: a π chosen on them would be judged on the seeds it was chosen on.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from gps.trainer import EVAL_STATS, POLICY_FILE, evaluation_cost
from optenv.bench import EVAL_SEED_START
from optenv.cli import non_negative_int, positive_int
from optenv.policy import rollout
from optenv.registry import load_agent, task_for
from optenv.runio import atomic_write_bytes

#: the bench's held-out seeds a selection must not use
HELD_OUT = range(EVAL_SEED_START, EVAL_SEED_START + 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a GPS run folder trained with save_policies")
    parser.add_argument("--seeds", type=positive_int, default=40)
    parser.add_argument("--first-seed", type=non_negative_int, default=20_000)
    parser.add_argument("--stat", choices=EVAL_STATS, default="log_mean")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="default: the run's eval_steps, else its horizon")
    parser.add_argument("--save", type=Path, default=None, help="default: RUN/selected.pt")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if set(seeds) & set(HELD_OUT):
        parser.error(f"seeds {seeds[0]}..{seeds[-1]} overlap the bench's held-out seeds "
                     f"{HELD_OUT.start}..{HELD_OUT.stop - 1}; choose validation seeds")
    files = sorted(args.run.glob(POLICY_FILE.replace("{:04d}", "*")))
    if not files:
        parser.error(f"no saved policies in {args.run / 'policies'}: train with "
                     "--set save_policies=true")
    torch.set_num_threads(1)
    rows = []
    for path in files:
        agent = load_agent(path)
        config = agent.hyperparams()
        family, horizon = task_for(config["env_id"], **config.get("env_kwargs", {}))
        steps = args.steps or config.get("eval_steps") or config.get("horizon") or horizon
        with torch.no_grad():
            final = rollout(agent.policy(), family, int(steps), seeds=seeds).final.double()
        q25, q50, q75 = (float(v) for v in torch.quantile(final, torch.tensor(
            [0.25, 0.5, 0.75], dtype=torch.float64)))
        row = {"file": path.name, "iteration": int(config["iterations"]), "steps": int(steps),
               "median": q50, "q25": q25, "q75": q75, "zeros": int((final == 0).sum()),
               "log_mean": evaluation_cost(final, "log_mean"),
               args.stat: evaluation_cost(final, args.stat), "final": final.tolist()}
        rows.append(row)
        print(f"iteration {row['iteration']:4d}: median {q50:.4g}, IQR {q25:.3g} – {q75:.3g}, "
              f"exactly 0: {row['zeros']}/{len(seeds)}, log_mean {row['log_mean']:.3f}",
              flush=True)
    best = min(rows, key=lambda r: (math.isnan(r[args.stat]), r[args.stat]))
    save = args.save or args.run / "selected.pt"
    atomic_write_bytes(save, (args.run / "policies" / best["file"]).read_bytes())
    print(f"selected iteration {best['iteration']} ({args.stat} {best[args.stat]:.4g} on "
          f"seeds {seeds[0]}..{seeds[-1]}): {save}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"run": str(args.run), "seeds": seeds, "stat": args.stat,
                       "selected": best["iteration"], "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
