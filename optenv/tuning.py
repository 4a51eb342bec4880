"""Hyperparameter tuning of hand-designed optimizers: a grid as a batch dimension.

A fair comparison needs tuned baselines (Metz et al. 2019, §4: a learning rate grid
of 11 log-spaced values from 1e-4 to 10, per task). :func:`tune_grid` runs the whole
grid × training seeds as one batched optimizee: every grid value sees the same
problems and the same initial iterates, and the value with the lowest mean metric over
the seeds wins. A value that diverges on any seed scores ``inf``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from optenv.policy import StepPolicy, make_problem, rollout
from optenv.problems.base import TaskFamily

__all__ = ["DEFAULT_GRID", "METRICS", "TuneResult", "tune_grid"]

#: 11 log-spaced values from 1e-4 to 10 (Metz et al. 2019, §4)
DEFAULT_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4, 1, 11))
METRICS = ("final", "auc")


@dataclass
class TuneResult:
    """Outcome of a grid search: the winning value and every value's scores."""

    param: str
    best: float
    grid: list[float]
    metric: str
    seeds: list[int]
    steps: int
    #: mean metric over seeds, per grid value (inf: diverged on some seed)
    scores: list[float]
    #: metric per grid value and seed
    per_seed: list[list[float]]
    wall_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def tune_grid(
    make_policy: Callable[[Tensor], StepPolicy],
    family: TaskFamily,
    steps: int,
    *,
    grid: Sequence[float] = DEFAULT_GRID,
    seeds: Sequence[int] = (0, 1, 2),
    metric: str = "final",
    param: str = "lr",
    refine: int = 0,
) -> TuneResult:
    """Pick the grid value of ``param`` with the lowest mean ``metric`` over ``seeds``.

    ``make_policy(values)`` builds a policy whose ``param`` is the tensor ``values``
    ``(G·S,)`` (grid value ``g`` for instances ``g·S .. g·S + S − 1``). ``metric`` is
    ``"final"`` (true objective after the last step) or ``"auc"`` (mean over steps).
    ``refine=k`` then tries ``k`` log-spaced values strictly between the winner's two
    grid neighbours (a second batched run) and keeps the best of all; ``grid``,
    ``scores`` and ``per_seed`` of the result list both rounds.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    grid = [float(v) for v in grid]
    if not grid or not all(np.isfinite(grid)) or min(grid) <= 0:
        raise ValueError(f"grid must be non-empty positive finite values, got {grid!r}")
    if not (isinstance(refine, int) and refine >= 0):
        raise ValueError(f"refine must be an int >= 0, got {refine!r}")
    seeds = [int(s) for s in seeds]
    base, x0 = make_problem(family, seeds)

    def score(values: list[float]) -> tuple[Tensor, float]:
        G, S = len(values), len(seeds)
        index = torch.arange(S).repeat(G)
        lrs = torch.tensor(values, dtype=torch.float32).repeat_interleave(S)
        result = rollout(make_policy(lrs), base.select(index), steps, x0=x0[index])
        per_instance = result.final if metric == "final" else result.auc
        return per_instance.reshape(G, S).double(), result.wall_s  # inf where diverged

    table, wall = score(grid)
    order = sorted(range(len(grid)), key=grid.__getitem__)
    best = int(torch.argmin(table.mean(1))) if torch.isfinite(table.mean(1)).any() else 0
    if refine and len(grid) > 1:
        pos = order.index(best)
        lo = grid[order[max(pos - 1, 0)]]
        hi = grid[order[min(pos + 1, len(grid) - 1)]]
        fine = [float(v) for v in np.geomspace(lo, hi, refine + 2)[1:-1] if v != grid[best]]
        if fine:
            extra, extra_wall = score(fine)
            grid, table, wall = grid + fine, torch.cat([table, extra]), wall + extra_wall
    scores = table.mean(1)
    best = int(torch.argmin(scores)) if torch.isfinite(scores).any() else 0
    return TuneResult(
        param=param, best=grid[best], grid=grid, metric=metric, seeds=seeds, steps=steps,
        scores=[float(v) for v in scores], per_seed=table.tolist(), wall_s=wall,
    )
