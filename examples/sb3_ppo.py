"""Train PPO with the coordinatewise policy on ``optenv/Quadratic-v0``, bench it, plot.

    python examples/sb3_ppo.py [--timesteps N] [--out DIR] [--seeds K]

1. ``PPOAgent`` (``agents/sb3.py``) trains for ``N`` env steps; its run folder
   ``DIR/ppo`` gets ``metrics.jsonl``, a checkpoint and ``agent.pt``;
2. the bench evaluates it against tuned Adam and the zero-step and random policies on
   held-out seeds (``DIR/bench``: ``results.json``, ``report.md``, the loss-curve plot)
   — as ``optenv bench --envs optenv/Quadratic-v0 --agents adam zero:DIR/reference/zero.pt
   random:DIR/reference/random.pt ppo:DIR/ppo/agent.pt``;
3. ``DIR/training.png`` plots the median final loss of training episodes over timesteps.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from agents.reference import RandomStepAgent, ZeroStepAgent
from agents.sb3 import PPOAgent
from optenv.bench import BenchConfig, plot_path, run_bench

ENV_ID = "optenv/Quadratic-v0"


def plot_training(metrics: Path, path: Path) -> Path:
    """Median final loss of recent training episodes against timesteps (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    points = [(r["timesteps"], r["rollout/final_loss_median"]) for r in rows
              if r.get("rollout/final_loss_median") is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if points:
        ax.plot(*zip(*points, strict=True), marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("timesteps")
    ax.set_ylabel("median final loss (training episodes)")
    ax.set_title(f"PPO (coordinatewise) on {ENV_ID}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("runs/sb3_ppo"))
    parser.add_argument("--seeds", type=int, default=5, help="held-out evaluation seeds")
    parser.add_argument("--n-envs", type=int, default=None,
                        help="parallel envs (default: agents.sb3.DEFAULTS)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.timesteps < 1:
        parser.error(f"--timesteps must be >= 1, got {args.timesteps}")
    torch.set_num_threads(1)  # small networks: more threads only add overhead

    run = args.out / "ppo"
    agent = PPOAgent(seed=0)
    options = {} if args.n_envs is None else {"n_envs": args.n_envs}
    summary = agent.train(ENV_ID, total_timesteps=args.timesteps, out=run,
                          progress=not args.quiet, **options)
    saved = agent.save(run / "agent.pt")

    # the zero-step and random policies as saved agents, so the bench labels them
    references = [f"{ref.name}:{ref.save(args.out / 'reference' / f'{ref.name}.pt')}"
                  for ref in (ZeroStepAgent(), RandomStepAgent())]
    results = run_bench(BenchConfig(envs=[ENV_ID], agents=["adam", *references, f"ppo:{saved}"],
                                    seeds=args.seeds, out=args.out / "bench",
                                    progress=not args.quiet))
    env = results["envs"][ENV_ID]
    medians = {name: statistics.median(v if v is not None else float("inf")
                                       for v in r["final_loss"])
               for name, r in env["agents"].items()}
    training_plot = plot_training(run / "metrics.jsonl", args.out / "training.png")
    if not args.quiet:
        print(f"trained {summary['final']['timesteps']:.0f} steps "
              f"in {summary['final']['wall_s']:.1f} s")
        for name, value in medians.items():
            print(f"{name:>20s}: median final loss {value:.4g}")
        print(f"bench: {args.out / 'bench' / 'report.md'}, {plot_path(args.out / 'bench', ENV_ID)}")
        print(f"training curve: {training_plot}")
    return medians


if __name__ == "__main__":
    main()
