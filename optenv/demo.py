"""``optenv demo``: tuned baselines against the shipped learned optimizers.

Tunes the learning rate of SGD, momentum, Adam and RMSprop on
``optenv/MLP-Digits-v0`` (an 11-value grid × 3 seeds, one batched computation per
agent), runs every installed pretrained optimizer (``gps-psd``, ``gps-psd-paper``,
``l2l-quadratic``, ``rnnprop-mlp``, ``metz-cnn``: trained once, not tuned here) beside
them, evaluates all on 5 held-out seeds, prints the table and writes ``results.json``,
``report.md`` and ``optenv_MLP-Digits-v0.png`` to the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DEMO_AGENTS", "DEMO_ENV", "demo_agents", "run_demo"]

DEMO_ENV = "optenv/MLP-Digits-v0"
DEMO_AGENTS = ("sgd", "momentum", "adam", "rmsprop")


def run_demo(out: Path = Path("runs/demo"), steps: int | None = None,
             seeds: int = 5) -> dict[str, Any]:
    """Run the demo bench; returns the results object of ``results.json``."""
    from optenv.bench import BenchConfig, run_bench

    return run_bench(BenchConfig(envs=[DEMO_ENV], agents=demo_agents(), seeds=seeds,
                                 steps=steps, out=Path(out)))


def demo_agents() -> list[str]:
    """The tuned baselines, then every pretrained optimizer that is installed."""
    from optenv.registry import pretrained_names

    return [*DEMO_AGENTS, *pretrained_names()]
