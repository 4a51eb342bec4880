"""Reference check of the baselines on L2L's 10-dim Gaussian quadratics.

    python benchmarks/quadratic_reference.py [--problems 5000] [--json out.json]
                                             [--agent NAME_OR_PATH ...] [--first-seed S]

Problems: f(θ) = ‖Wθ − y‖², W (10×10) and y (10) i.i.d. N(0, 1), θ₀ = 0, 100 steps,
deterministic gradients. The figure of merit is the summed loss Σ_{t=0}^{99} f(θ_t)
(the loss at each step before the update, as a public PyTorch reproduction of L2L
sums it; Σ_{t=1}^{100} is printed too). Gaussian quadratics are heavy-tailed (W is
sometimes nearly singular), so both the mean and the median over problems are shown.

Two rows per baseline: at the learning rate that reproduction tuned (Adam 0.1,
RMSprop 0.03, momentum 0.01, NAG 0.01) and at the learning rate our own tuning picks
(``tune_grid`` with the summed-loss metric on 1000 training problems, seeds disjoint
from the evaluation problems; the default 11-value grid, then 8 values between the
winner's neighbours), both evaluated on the same problems. ``--agent`` adds learned
optimizers (a pretrained name such as ``l2l-quadratic`` or a saved ``agent.pt``), run as
they are on the same problems, with their mean as a multiple of tuned NAG's (L2L's
figure of merit). The evaluation problems are seeds 100000 on; ``--first-seed`` moves
them, e.g. to pick among trained candidates on problems the reported number never sees.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from agents.baselines import AdamPolicy, MomentumPolicy, NAGPolicy, RMSpropPolicy, SGDPolicy
from optenv.policy import make_problem, rollout
from optenv.problems.quadratic import QuadraticFamily
from optenv.registry import PRETRAINED, load_agent, pretrained_path
from optenv.tuning import DEFAULT_GRID, tune_grid

#: (name, policy class, learning rate tuned by the public reproduction)
BASELINES = [
    ("adam", AdamPolicy, 0.1),
    ("rmsprop", RMSpropPolicy, 0.03),
    ("momentum", MomentumPolicy, 0.01),
    ("nag", NAGPolicy, 0.01),
    ("sgd", SGDPolicy, None),
]
GRID = DEFAULT_GRID
STEPS = 100


def summed(objective: torch.Tensor) -> dict[str, float]:
    before = objective[:, :STEPS].double().sum(1)  # f(θ_0) .. f(θ_99)
    after = objective[:, 1:].double().sum(1)  # f(θ_1) .. f(θ_100)
    return {
        "mean": float(before.mean()), "median": float(before.median()),
        "mean_t1_to_100": float(after.mean()), "median_t1_to_100": float(after.median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=5000)
    parser.add_argument("--train-problems", type=int, default=1000)
    parser.add_argument("--first-seed", type=int, default=100_000,
                        help="seed of the first evaluation problem (default 100000)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--agent", nargs="*", default=[],
                        help="learned optimizers: pretrained names or saved agent files")
    args = parser.parse_args()
    if args.first_seed < args.train_problems:
        parser.error(f"--first-seed must be >= --train-problems ({args.train_problems}): "
                     f"the tuning problems are seeds 0..{args.train_problems - 1}, got "
                     f"{args.first_seed}")
    if args.problems < 1 or args.train_problems < 1:
        parser.error(f"--problems and --train-problems must be >= 1, got {args.problems} and "
                     f"{args.train_problems}")
    learned = []
    for spec in args.agent:  # loaded before minutes of tuning, not after
        try:
            learned.append((spec, load_agent(pretrained_path(spec) if spec in PRETRAINED
                                             else spec)))
        except (OSError, ValueError) as err:
            parser.error(f"--agent {spec!r}: {err}")
    torch.set_num_threads(1)

    family = QuadraticFamily(dim=10, init_std=0.0)
    start = time.perf_counter()
    eval_seeds = list(range(args.first_seed, args.first_seed + args.problems))
    problem, x0 = make_problem(family, eval_seeds)
    train_seeds = list(range(args.train_problems))
    rows = []
    for name, cls, their_lr in BASELINES:
        tuned = tune_grid(cls, family, STEPS, grid=GRID, seeds=train_seeds, metric="auc",
                          refine=8)
        for label, lr in (("reproduction lr", their_lr), ("our tuning", tuned.best)):
            if lr is None:
                continue
            run = rollout(cls(lr=lr), problem, STEPS, x0=x0)
            rows.append({"baseline": name, "which": label, "lr": lr,
                         "diverged": int(run.diverged.sum()), **summed(run.objective)})
    for spec, agent in learned:
        run = rollout(agent.policy(), problem, STEPS, x0=x0)
        rows.append({"baseline": spec, "which": "learned", "lr": math.nan,
                     "diverged": int(run.diverged.sum()), **summed(run.objective)})
    wall = time.perf_counter() - start

    nag = next(r["mean"] for r in rows if r["baseline"] == "nag" and r["which"] == "our tuning")
    for r in rows:
        r["vs_tuned_nag"] = r["mean"] / nag
    print(f"{args.problems} problems (seeds {args.first_seed}..), {STEPS} steps, θ0 = 0 "
          f"({wall:.1f} s)")
    print(f"{'baseline':10s} {'lr from':16s} {'lr':>9s} {'mean':>9s} {'median':>9s}"
          f" {'mean(1..100)':>13s} {'diverged':>8s} {'× tuned NAG':>11s}")
    for r in rows:
        print(f"{r['baseline']:10s} {r['which']:16s} {r['lr']:9.4g} {r['mean']:9.1f} "
              f"{r['median']:9.1f} {r['mean_t1_to_100']:13.1f} {r['diverged']:8d} "
              f"{r['vs_tuned_nag']:11.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"problems": args.problems, "first_seed": args.first_seed,
                       "steps": STEPS, "wall_s": wall, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
