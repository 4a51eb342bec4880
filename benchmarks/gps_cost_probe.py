"""Which way does GPS's fitted cost point ψ, and how far may the trust region move it?

    python benchmarks/gps_cost_probe.py RUN/config.json [--checkpoint RUN/checkpoint.pt]
        [--every 25] [--delta 0.5] [--sample-seed 0] [--json out.json]

Draws one iteration's samples of a run's controller ψ (its initial controller ψ₀ from the
run's configuration, or the ψ of ``--checkpoint``), fits the local cost to them as the
trainer does (``GPSTrainer.draw``, ``GPSTrainer.fit_cost``) and prints, per group and for
every ``--every``-th step:

- ψ's own gain on its gradient feature (column ``GRAD_COLUMN`` of the state), and its
  effective gain: the multiple of ψ₀'s mean action (−``init_gain``·s_g) that fits ψ's mean
  action K_t s + k_t at the sampled states best (least squares); ψ's other columns are
  correlated with s_g, so the LQG can change the step without touching that gain;

- the cost's per-step optimum on that feature: the gain −C_sa/C_aa that minimizes that
  step's quadratic cost in the action alone (it ignores what the dynamics carry to later
  steps: the LQG adds that, through the fitted per-coordinate dynamics);
- the KL between ψ and ψ with that gain changed by ``--delta`` at that step,
  δ²·E[s_g²] / (2·Σ_t), to set against the trust region ε (summed over steps).

Only for the Taylor costs (``cost`` = "taylor" or "taylor-log").
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import torch

from gps.trainer import GRAD_COLUMN, GPSConfig, GPSTrainer, config_changes
from gps.types import LinearGaussianController
from optenv.cli import non_negative_int, positive_float, positive_int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a GPS run's config.json")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="probe this checkpoint's ψ instead of ψ₀")
    parser.add_argument("--every", type=positive_int, default=25)
    parser.add_argument("--delta", type=positive_float, default=0.5,
                        help="a change of the gain")
    parser.add_argument("--sample-seed", type=non_negative_int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        raw = json.loads(args.config.read_text())
    except (OSError, ValueError) as err:
        parser.error(f"{args.config}: not a readable GPS config.json ({err})")
    if not isinstance(raw, dict):
        parser.error(f"{args.config}: expected a JSON object of GPSConfig fields")
    known = {f.name for f in fields(GPSConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        parser.error(f"{args.config}: not GPSConfig fields: {', '.join(unknown)}")
    try:
        config = GPSConfig(**{**raw, "save_policies": False})
    except (TypeError, ValueError) as err:
        parser.error(f"{args.config}: {err}")
    if config.cost not in ("taylor", "taylor-log"):
        parser.error(f"cost {config.cost!r} has no action term to probe; "
                     "expected 'taylor' or 'taylor-log'")
    torch.set_num_threads(1)
    trainer = GPSTrainer(config)
    if args.checkpoint is not None:  # read only: the run folder is not touched
        try:
            ck = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            parser.error(f"--checkpoint {args.checkpoint}: not a readable checkpoint ({err})")
        changed = config_changes(ck["config"], config, ignore=("iterations", "save_policies"))
        if changed:
            parser.error(f"{args.checkpoint} is of a run configured with {changed}")
        trainer.psi = LinearGaussianController(**ck["psi"])
    _, live, pool, fit_ok, _ = trainer.draw(torch.Generator().manual_seed(args.sample_seed))
    if not fit_ok:
        raise SystemExit("fewer than two of the rollouts stayed finite: nothing to fit")
    cost = trainer.fit_cost(live, pool)
    ds = pool["states"].shape[-1]
    gain = -cost.C[..., GRAD_COLUMN, ds] / cost.C[..., ds, ds]  # (G, T)
    S = pool["states"][:, :, : trainer.T]  # (G, N, T, ds)
    feature_sq = S[..., GRAD_COLUMN].square().mean(1)  # (G, T)
    psi_gain = trainer.psi.K[..., 0, GRAD_COLUMN]  # (G, T)
    mean = torch.einsum("gtd,gntd->gnt", trainer.psi.K[..., 0, :], S) + trainer.psi.k[:, None, :, 0]
    base = -S[..., GRAD_COLUMN]  # ψ₀'s mean action per unit gain
    effective = (mean * base).sum(1) / base.square().sum(1).clamp_min(1e-300)  # (G, T)
    kl = args.delta**2 * feature_sq / (2.0 * trainer.psi.cov[..., 0, 0])
    steps = list(range(0, trainer.T, args.every))
    which = "ψ₀" if args.checkpoint is None else f"ψ of {args.checkpoint}"
    print(f"{which}; trust region ε = {config.epsilon:g} over {trainer.T} steps")
    rows = []
    for g in range(trainer.G):
        row = {"group": g, "steps": steps,
               "psi_gain": [float(psi_gain[g, t]) for t in steps],
               "effective_gain": [float(-effective[g, t]) for t in steps],
               "optimal_gain": [float(gain[g, t]) for t in steps],
               "kl_of_delta": [float(kl[g, t]) for t in steps]}
        rows.append(row)
        print(f"group {g}: ψ's gain              "
              + " ".join(f"{x:.3g}" for x in row["psi_gain"]))
        print("         ψ's effective gain    "
              + " ".join(f"{x:.3g}" for x in row["effective_gain"]))
        print("         per-step optimal gain "
              + " ".join(f"{x:.3g}" for x in row["optimal_gain"]))
        print(f"         KL of a gain change {args.delta:g} "
              + " ".join(f"{x:.3g}" for x in row["kl_of_delta"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": str(args.config), "delta": args.delta,
                                               "sample_seed": args.sample_seed,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
