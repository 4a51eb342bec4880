"""Seed-by-seed comparison of agents on the same held-out seeds.

    python benchmarks/paired_seeds.py RUN/results.json [PSI.json ...] [--env ID]
        [--against NAME] [--tiny 1e-5] [--json out.json]

Where learned rules drive the loss to float32 underflow on most seeds, a median hides
which rule is better: this counts, per agent, the runs that end at exactly 0, above
``--tiny``, and diverged, and on how many seeds it ends lower / higher than ``--against``
(a diverged run counts as +inf; ties, e.g. both at 0, are neither). Agents come from an
``optenv bench`` results.json (its env ``--env``, default the only one) and from
``gps_initial_controller.py --json`` files (rows named ``psi:GAIN`` or ``psi:G1,G2,...``),
which must cover the same seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from optenv.cli import positive_float


def load_bench(path: Path, env: str | None) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Per-seed finals (+inf where diverged) of every agent of a bench results.json."""
    report = json.loads(path.read_text())
    envs = report["envs"]
    if env is None:
        if len(envs) != 1:
            raise SystemExit(f"{path} has envs {sorted(envs)}: name one with --env")
        env = next(iter(envs))
    if env not in envs:
        raise SystemExit(f"{path} has no env {env!r} (it has {sorted(envs)})")
    block = envs[env]
    finals = {}
    for name, r in block["agents"].items():
        x = torch.tensor([math.nan if v is None else v for v in r["final_loss"]],
                         dtype=torch.float64)
        finals[name] = torch.where(torch.tensor(r["diverged"]), math.inf, x)
    return list(block["eval_seeds"]), finals


def load_initial(path: Path) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Per-seed finals of the rows of a gps_initial_controller.py --json file."""
    report = json.loads(path.read_text())
    finals = {}
    for row in report["rows"]:
        gain = row["gain"]
        name = "psi:" + (f"{gain:g}" if isinstance(gain, float | int)
                         else ",".join(f"{g:g}" for g in gain))
        finals[name] = torch.tensor(row["final"], dtype=torch.float64)
    return list(report["seeds"]), finals


def compare(finals: dict[str, torch.Tensor], against: str, tiny: float) -> list[dict]:
    """One row per agent: median, zeros, above ``tiny``, diverged, lower/higher than ref."""
    ref = finals[against]
    rows = []
    for name, x in finals.items():
        rows.append({"agent": name, "median": float(np.median(x.numpy())),
                     "zeros": int((x == 0).sum()), "above_tiny": int((x > tiny).sum()),
                     "diverged": int(torch.isinf(x).sum()),
                     "lower": int((x < ref).sum()), "higher": int((x > ref).sum())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="an optenv bench results.json")
    parser.add_argument("initial", type=Path, nargs="*",
                        help="gps_initial_controller.py --json files on the same seeds")
    parser.add_argument("--env", default=None)
    parser.add_argument("--against", default="adagrad")
    parser.add_argument("--tiny", type=positive_float, default=1e-5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        seeds, finals = load_bench(args.results, args.env)
        for path in args.initial:
            their_seeds, more = load_initial(path)
            if their_seeds != seeds:
                parser.error(f"{path} covers seeds {their_seeds[0]}..{their_seeds[-1]} "
                             f"({len(their_seeds)}), {args.results} {seeds[0]}..{seeds[-1]} "
                             f"({len(seeds)})")
            finals.update(more)
    except (OSError, ValueError, KeyError) as err:
        parser.error(f"not a readable results / initial-controller file ({err!r})")
    if args.against not in finals:
        parser.error(f"--against {args.against!r}: no such agent (have {sorted(finals)})")
    rows = compare(finals, args.against, args.tiny)
    print(f"{len(seeds)} seeds {seeds[0]}..{seeds[-1]}; lower/higher: seeds where the agent "
          f"ends below/above {args.against}")
    print(f"{'agent':<34} {'median':>10} {'=0':>4} {'>' + format(args.tiny, 'g'):>6} "
          f"{'div':>4} {'lower':>6} {'higher':>6}")
    for r in rows:
        print(f"{r['agent']:<34} {r['median']:>10.4g} {r['zeros']:>4} {r['above_tiny']:>6} "
              f"{r['diverged']:>4} {r['lower']:>6} {r['higher']:>6}")
    if args.json:
        from optenv.runio import atomic_write_json

        atomic_write_json(args.json, {"results": str(args.results), "seeds": seeds,
                                      "against": args.against, "rows": rows})


if __name__ == "__main__":
    main()
