"""GPS's hand-made initial controller ψ₀ (its mean) on the bench's held-out seeds.

    python benchmarks/gps_initial_controller.py [--env optenv/MLP-Digits-v0]
        [--env-kwargs JSON] [--grad-scale paper] [--gains 1.0 ...] [--seeds 20]
        [--first-seed 1000] [--steps N] [--schedules 1.2,1,... ...] [--block 100]
        [--json out.json]

``optenv train gps`` starts from ψ₀: a = −init_gain·(Φ's first gradient feature),
clipped to [-1, 1], Δx = step_scale·a (``gps.policy.InitialControllerPolicy``). A GPS
result means more when set beside this starting point: this script rolls ψ₀'s mean out
(no exploration noise) for each gain, with the env's step_scale (registered or given in
``--env-kwargs``) and Φ's ``--grad-scale``, on seeds ``--first-seed`` .. (by default the
bench's held-out seeds 1000 ..; use 20000 .. for the trainer's validation seeds), and
prints the median, quartiles, maximum and how many runs end at exactly 0.
``--schedules`` adds rows whose gain changes every ``--block`` steps (a comma list of
gains, the last held): time-varying gains are in ψ's own class, so they show what the
LQG could find by changing ψ₀.
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import torch

from gps.policy import InitialControllerPolicy
from optenv.bench import EVAL_SEED_START
from optenv.cli import json_object, non_negative_int, positive_int
from optenv.features import GRAD_SCALES
from optenv.policy import rollout
from optenv.registry import task_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="optenv/MLP-Digits-v0")
    parser.add_argument("--env-kwargs", type=json_object, default={}, metavar="JSON")
    parser.add_argument("--grad-scale", choices=GRAD_SCALES, default="paper")
    parser.add_argument("--gains", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seeds", type=positive_int, default=20)
    parser.add_argument("--first-seed", type=non_negative_int, default=EVAL_SEED_START)
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="default: the env's horizon")
    parser.add_argument("--schedules", nargs="*", default=[], metavar="G1,G2,...",
                        help="gain schedules, one gain per --block steps")
    parser.add_argument("--block", type=positive_int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    schedules = []
    for text in args.schedules:
        try:
            schedules.append([float(v) for v in text.split(",")])
        except ValueError:
            parser.error(f"--schedules: {text!r} is not a comma list of gains")
    bad = [g for g in args.gains + [g for sch in schedules for g in sch] if not g > 0]
    if bad:
        parser.error(f"gains (--gains, --schedules) must be > 0, got {bad}")
    try:
        family, horizon = task_for(args.env, **args.env_kwargs)
        env = gym.make(args.env, **args.env_kwargs)
        step_scale = float(env.unwrapped.loop.step_scale)
        env.close()
    except (gym.error.Error, ValueError, TypeError) as err:
        parser.error(f"--env {args.env!r} with --env-kwargs {json.dumps(args.env_kwargs)}: "
                     f"{err}")
    torch.set_num_threads(1)
    steps = args.steps or horizon
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    rows = []
    for gain in [*args.gains, *schedules]:
        policy = InitialControllerPolicy(gain, step_scale, args.grad_scale, block=args.block)
        with torch.no_grad():
            result = rollout(policy, family, steps, seeds=seeds)
        final = result.final.double()
        q25, q50, q75 = (float(v) for v in torch.quantile(final, torch.tensor(
            [0.25, 0.5, 0.75], dtype=torch.float64)))
        rows.append({"gain": gain, "final": final.tolist(),
                     "diverged": result.diverged.tolist()})
        name = (f"gain {gain:g} (lr {gain * step_scale:g})" if isinstance(gain, float) else
                f"gains {','.join(f'{g:g}' for g in gain)} per {args.block} steps")
        print(f"{name}: median {q50:.4g}, IQR {q25:.3g} – {q75:.3g}, max "
              f"{float(final.max()):.3g}, exactly 0: {int((final == 0).sum())}/{len(seeds)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": args.env, "env_kwargs": args.env_kwargs, "step_scale": step_scale,
                       "grad_scale": args.grad_scale, "steps": steps, "seeds": seeds,
                       "block": args.block, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
