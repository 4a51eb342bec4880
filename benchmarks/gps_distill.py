"""Can GPS's S-step fit π to a given gain schedule of ψ? π's gains after distillation alone.

    python benchmarks/gps_distill.py --schedule 1.279,0.824,0.362,1.003
        [--env optenv/MLP-Digits-v0] [--env-kwargs JSON] [--set KEY=VALUE ...]
        [--rounds 1] [--sample-seed 0] [--seeds 8] [--first-seed 20000] [--save AGENT.pt]
        [--json out.json]

Builds a GPS trainer from the settings (``GPSConfig`` fields by ``--set``, as ``optenv train
gps`` takes them), sets ψ's gain on its gradient feature to ``--schedule`` (one gain per
``pi2_block`` steps, in units of ψ₀'s: ψ's mean step is −gain·f·step_scale), and then,
``--rounds`` times, draws ``samples`` rollouts of that ψ and runs the trainer's S-step on
them (``GPSTrainer.fit_policy``: ``s_steps`` Adam steps; λ, ν as at the start of a run).
ψ stays fixed: this is the θ-update of BADMM alone, at a known target. It prints π's
least-squares gain per block on its own rollouts (gps_policy_gain.py's ``block_gains``, on
validation seeds) beside the schedule, and the same gain at ψ's sampled states of the
last round (the fit itself, without π's own distribution shift): whether π, as configured
(``pi_time``, ``pi_gain_head``, ``s_block_norm``), can represent and learn the schedule.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gps_policy_gain import block_gains

from gps.trainer import GRAD_COLUMN, GPSConfig, GPSTrainer
from optenv.cli import json_object, non_negative_int, positive_int, set_value


def set_schedule(trainer: GPSTrainer, schedule: list[float]) -> None:
    """ψ's gain on its gradient feature: ``schedule[b]`` over block b of ``pi2_block`` steps."""
    block, T = trainer.config.pi2_block, trainer.T
    if len(schedule) != -(-T // block):
        raise ValueError(f"--schedule has {len(schedule)} gains; {T} steps in blocks of "
                         f"{block} need {-(-T // block)}")
    gains = torch.tensor(schedule, dtype=torch.float64).repeat_interleave(block)[:T]
    trainer.psi.K[..., 0, GRAD_COLUMN] = -gains


def sample_gains(trainer: GPSTrainer, pool: dict[str, torch.Tensor]) -> list[float]:
    """π's least-squares gain on f per block at ψ's sampled states (teacher-forced)."""
    block, T = trainer.config.pi2_block, trainer.T
    f = pool["states"][:, :, :T, GRAD_COLUMN]  # (G, N, T)
    mu = trainer.pi_means(pool["obs"])[..., 0]
    nb = -(-T // block)
    blocks = torch.arange(T) // block
    num = torch.zeros(nb, dtype=torch.float64).index_add_(0, blocks, -(mu * f).sum((0, 1)))
    den = torch.zeros(nb, dtype=torch.float64).index_add_(0, blocks, f.square().sum((0, 1)))
    return (num / den.clamp_min(1e-300)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", required=True, metavar="G1,G2,...")
    parser.add_argument("--env", default="optenv/MLP-Digits-v0")
    parser.add_argument("--env-kwargs", type=json_object, default={}, metavar="JSON")
    parser.add_argument("--set", type=set_value, action="append", default=[],
                        metavar="KEY=VALUE", help="a GPSConfig field")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="fresh draws of ψ's rollouts, each followed by one S-step")
    parser.add_argument("--sample-seed", type=non_negative_int, default=0)
    parser.add_argument("--seeds", type=positive_int, default=8)
    parser.add_argument("--first-seed", type=non_negative_int, default=20_000)
    parser.add_argument("--save", default=None, help="write π as an agent file")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        schedule = [float(v) for v in args.schedule.split(",")]
    except ValueError:
        parser.error(f"--schedule: {args.schedule!r} is not a comma list of gains")
    try:
        config = GPSConfig(**{**dict(args.set), "env_id": args.env,
                              "env_kwargs": args.env_kwargs})
        trainer = GPSTrainer(config)
        set_schedule(trainer, schedule)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    gen = torch.Generator().manual_seed(args.sample_seed)
    losses: list[float] = []
    for r in range(args.rounds):
        diverged, _, pool, _, _ = trainer.draw(gen)
        _, step_losses = trainer.fit_policy(trainer.psi, pool, gen)
        losses.append(step_losses[-1])
        fitted = sample_gains(trainer, pool)
        del pool  # before the next draw: two pools of a long run need twice the memory
        print(f"round {r + 1}: {int(diverged.sum())} of {config.samples} rollouts diverged, "
              f"S-step loss {step_losses[0]:.4g} -> {step_losses[-1]:.4g}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    gains = block_gains(trainer.policy, args.env, seeds, trainer.T, config.pi2_block)
    print("ψ's schedule: " + ", ".join(f"{g:.3f}" for g in schedule))
    print("π's gains:    " + ", ".join(f"{g:.3f}" for g in gains)
          + f" (per {config.pi2_block} steps, its own rollouts on seeds {seeds[0]}.."
          f"{seeds[-1]})")
    print("              " + ", ".join(f"{g:.3f}" for g in fitted)
          + " (at ψ's states of the last round: the fit itself)")
    if args.save:
        trainer.policy_agent().save(args.save)
    if args.json:
        from optenv.runio import atomic_write_json

        atomic_write_json(args.json, {"config": asdict(config), "schedule": schedule,
                                      "rounds": args.rounds, "sample_seed": args.sample_seed,
                                      "seeds": seeds, "losses": losses, "pi_gains": gains,
                                      "pi_gains_at_psi_states": fitted})


if __name__ == "__main__":
    main()
