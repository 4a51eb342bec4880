"""GPS per-phase timings at two optimizee widths (issue: convolutional GPS, "Scale").

    python benchmarks/gps_scale.py [--iterations 2] [--horizon 100] [--samples 8] [--hidden 32]

Runs GPS iterations on ``optenv/MLP-Digits-v0`` (48 → 48 → 10, 2,842 parameters) and
``optenv/MLP-Digits-Wide-v0`` (100 → 200 → 10, 22,210 parameters) with the same
horizon, rollouts and coordinates per group, and prints each phase's time of the last
iteration. Both MLPs have four coordinate groups and the fits use ``coords`` sampled
coordinates per group, so the dynamics fit, the cost fit and the LQG solve should not
depend on the width; sampling (every coordinate steps) and π's evaluation do.
"""

from __future__ import annotations

import argparse
import json

import torch

from gps.trainer import GPSConfig, GPSTrainer

ENVS = ("optenv/MLP-Digits-v0", "optenv/MLP-Digits-Wide-v0")
PHASES = ("sample", "dynamics", "cost", "lqg", "s_step", "eval", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=32,
                        help="π's LSTM cells (32: the shipped gps-psd's and the README's table)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for env_id in ENVS:
        trainer = GPSTrainer(GPSConfig(env_id=env_id, iterations=args.iterations,
                                       samples=args.samples, horizon=args.horizon,
                                       hidden=args.hidden))
        for _ in range(args.iterations):
            record = trainer.step()
        rows[env_id] = {"params": trainer.n, "groups": trainer.G,
                        **{p: record[f"time_{p}"] for p in PHASES}}
    print(f"{'env':28s} {'params':>7s} " + " ".join(f"{p:>9s}" for p in PHASES))
    for env_id, r in rows.items():
        print(f"{env_id:28s} {r['params']:7d} " + " ".join(f"{r[p]:9.2f}" for p in PHASES))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
