"""A GPS π's effective gain on ψ's gradient feature, per block of steps of its own rollouts.

    python benchmarks/gps_policy_gain.py AGENT.pt [AGENT.pt ...] [--env optenv/MLP-Digits-v0]
        [--seeds 8] [--first-seed 20000] [--steps 400] [--block 100] [--json out.json]

ψ's mean steps linear in Φ's first gradient feature f (gps.trainer.GRAD_COLUMN); a π over Φ
that imitates a gain schedule K_t should act as a ≈ −gain_b·f within block b. This rolls
each π (read with Φ, ``features="li_malik_state"``) out on validation seeds (20000 .. by
default) and prints, per block, the least-squares gain −Σ a·f / Σ f² over every
coordinate, step and seed of the block (a = Δx / step_scale): the schedule π learned,
to set beside the ψ schedule it was trained on.
"""

from __future__ import annotations

import argparse

import torch

from gps.policy import GRADIENT_COLUMNS
from optenv.cli import non_negative_int, positive_int
from optenv.policy import rollout
from optenv.registry import load_agent, task_for

COLUMN = GRADIENT_COLUMNS["li_malik_state"][0]


def block_gains(policy, env: str, seeds: list[int], steps: int, block: int) -> list[float]:
    """π's least-squares gain on f per block of ``block`` steps (see the module doc)."""
    if getattr(policy, "features", None) != "li_malik_state":
        raise SystemExit(f"π reads {getattr(policy, 'features', None)!r}; the effective "
                         "gain needs a π over Φ ('li_malik_state')")
    family, _ = task_for(env)
    num = torch.zeros(-(-steps // block), dtype=torch.float64)
    den = torch.zeros_like(num)
    step, t = policy.step, [0]

    def recording(features, state):
        dx, state = step(features, state)
        f, a = features[..., COLUMN].double(), (dx / policy.step_scale).double()
        ok = torch.isfinite(a) & torch.isfinite(f)
        b = t[0] // block
        num[b] -= (a * f)[ok].sum()
        den[b] += f[ok].square().sum()
        t[0] += 1
        return dx, state

    policy.step = recording
    try:
        rollout(policy, family, steps, seeds=seeds)
    finally:
        del policy.step  # the instance attribute: the class's step again
    return (num / den.clamp_min(1e-300)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agents", nargs="+", metavar="AGENT.pt")
    parser.add_argument("--env", default="optenv/MLP-Digits-v0")
    parser.add_argument("--seeds", type=positive_int, default=8)
    parser.add_argument("--first-seed", type=non_negative_int, default=20_000)
    parser.add_argument("--steps", type=positive_int, default=400)
    parser.add_argument("--block", type=positive_int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    rows = []
    for path in args.agents:
        try:
            policy = load_agent(path).policy()
        except (OSError, RuntimeError, ValueError) as err:
            parser.error(f"{path}: not a readable agent file ({err})")
        gains = block_gains(policy, args.env, seeds, args.steps, args.block)
        rows.append({"agent": path, "gains": gains})
        print(f"{path}: " + ", ".join(f"{g:.3f}" for g in gains)
              + f" (per {args.block} steps)")
    if args.json:
        from optenv.runio import atomic_write_json

        atomic_write_json(args.json, {"env": args.env, "seeds": seeds, "steps": args.steps,
                                      "block": args.block, "rows": rows})


if __name__ == "__main__":
    main()
