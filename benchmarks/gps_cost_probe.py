"""Which way does GPS's fitted cost point ψ, and how far may the trust region move it?

    python benchmarks/gps_cost_probe.py RUN/config.json [--every 25] [--delta 0.5]
        [--sample-seed 0] [--json out.json]

Draws one iteration's samples of a run's initial controller ψ₀ (the run's configuration:
env, features, ``init_gain``, ``init_var``, ``cost``, ...), fits its local cost as the
trainer does (``GPSTrainer.draw``, ``GPSTrainer.fit_cost``) and prints, per group and for
every ``--every``-th step:

- the cost's per-step optimum on ψ's gradient feature (column ``GRAD_COLUMN`` of the
  state): the gain −C_sa/C_aa that minimizes that step's quadratic cost in the action
  alone, to compare with ψ₀'s −``init_gain`` (it ignores what the dynamics carry to later
  steps: the LQG adds that, through the fitted per-coordinate dynamics);
- the KL(ψ‖ψ₀) that changing the gain by ``--delta`` costs at that step,
  δ²·E[s_g²] / (2·``init_var``), to set against the trust region ε (summed over steps).

Only for the Taylor costs (``cost`` = "taylor" or "taylor-log").
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import torch

from gps.trainer import GRAD_COLUMN, GPSConfig, GPSTrainer
from optenv.cli import non_negative_int, positive_int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a GPS run's config.json")
    parser.add_argument("--every", type=positive_int, default=25)
    parser.add_argument("--delta", type=float, default=0.5, help="a change of the gain")
    parser.add_argument("--sample-seed", type=non_negative_int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    raw = json.loads(args.config.read_text())
    known = {f.name for f in fields(GPSConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        parser.error(f"{args.config}: not GPSConfig fields: {', '.join(unknown)}")
    config = GPSConfig(**{**raw, "save_policies": False})
    if config.cost not in ("taylor", "taylor-log"):
        parser.error(f"cost {config.cost!r} has no action term to probe; "
                     "expected 'taylor' or 'taylor-log'")
    torch.set_num_threads(1)
    trainer = GPSTrainer(config)
    _, live, pool, fit_ok = trainer.draw(torch.Generator().manual_seed(args.sample_seed))
    if not fit_ok:
        raise SystemExit("fewer than two of the rollouts stayed finite: nothing to fit")
    cost = trainer.fit_cost(live, pool)
    ds = pool["states"].shape[-1]
    gain = -cost.C[..., GRAD_COLUMN, ds] / cost.C[..., ds, ds]  # (G, T)
    feature_sq = pool["states"][:, :, : trainer.T, GRAD_COLUMN].square().mean(1)  # (G, T)
    kl = args.delta**2 * feature_sq / (2.0 * config.init_var)
    steps = list(range(0, trainer.T, args.every))
    print(f"ψ₀'s gain on the gradient feature: {-config.init_gain:g}; "
          f"trust region ε = {config.epsilon:g} over {trainer.T} steps")
    rows = []
    for g in range(trainer.G):
        row = {"group": g, "steps": steps,
               "optimal_gain": [float(gain[g, t]) for t in steps],
               "kl_of_delta": [float(kl[g, t]) for t in steps]}
        rows.append(row)
        print(f"group {g}: per-step optimal gain "
              + " ".join(f"{x:.3g}" for x in row["optimal_gain"]))
        print(f"         KL of a gain change {args.delta:g} "
              + " ".join(f"{x:.3g}" for x in row["kl_of_delta"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": str(args.config), "delta": args.delta,
                                               "sample_seed": args.sample_seed,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
