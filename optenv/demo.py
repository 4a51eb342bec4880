"""``optenv demo``: a short bench of tuned baselines on the embedded default problem.

Tunes the learning rate of SGD, momentum, Adam and RMSprop on
``optenv/MLP-Digits-v0`` (an 11-value grid × 3 seeds, one batched computation per
agent), evaluates each on 5 held-out seeds, prints the table and writes
``results.json``, ``report.md`` and ``optenv_MLP-Digits-v0.png`` to the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DEMO_AGENTS", "DEMO_ENV", "run_demo"]

DEMO_ENV = "optenv/MLP-Digits-v0"
DEMO_AGENTS = ("sgd", "momentum", "adam", "rmsprop")


def run_demo(out: Path = Path("runs/demo"), steps: int | None = None,
             seeds: int = 5) -> dict[str, Any]:
    """Run the demo bench; returns the results object of ``results.json``."""
    from optenv.bench import BenchConfig, run_bench

    return run_bench(BenchConfig(envs=[DEMO_ENV], agents=list(DEMO_AGENTS), seeds=seeds,
                                 steps=steps, out=Path(out)))
