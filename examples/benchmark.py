"""Benchmark three tuned baselines on two environments, from Python.

    python examples/benchmark.py [OUT]

The same as ``optenv bench --envs optenv/Quadratic-v0 optenv/LogisticRegression-v0
--agents sgd momentum adam --out OUT``: each baseline's learning rate is tuned on
seeds 0-2 (cached in ``OUT/tuning.json``, so running this again skips the tuning),
then evaluated on held-out seeds 1000-1004.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from optenv.bench import BenchConfig, plot_path, run_bench

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example-bench")
config = BenchConfig(
    envs=["optenv/Quadratic-v0", "optenv/LogisticRegression-v0"],
    agents=["sgd", "momentum", "adam"],
    seeds=5,
    out=out,
)
results = run_bench(config)

for env_id, env in results["envs"].items():
    # a diverged run's final loss is its divergence threshold (None only if not finite)
    medians = {name: statistics.median(v if v is not None else float("inf")
                                       for v in r["final_loss"])
               for name, r in env["agents"].items()}
    best = min(medians, key=medians.__getitem__)
    print(f"{env_id}: lowest median final loss: {best} ({medians[best]:.4g})")
print(f"results:  {out / 'results.json'}")
print(f"report:   {out / 'report.md'}")
print("plots:   ", ", ".join(str(plot_path(out, e)) for e in results["envs"]))
print(f"tuning cache: {out / 'tuning.json'}")
