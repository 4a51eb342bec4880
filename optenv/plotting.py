"""Plots: the env's ``rgb_array`` render and loss-curve figures (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["curve_image"]


def curve_image(
    values: Sequence[float], title: str = "", width: int = 480, height: int = 320
) -> np.ndarray:
    """The loss curve ``values`` (one per step) as an RGB ``uint8`` array ``(height, width, 3)``.

    Non-positive or non-finite values are drawn at the lowest positive value seen,
    so a log axis never breaks (a diverged run shows as a flat tail).
    """
    # Figure + the Agg canvas directly: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(y) & (y > 0)
    floor = y[ok].min() if ok.any() else 1.0
    y = np.where(ok, y, floor)
    fig = Figure(figsize=(width / 80, height / 80), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(np.arange(len(y)), y, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("objective")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3]
    return np.ascontiguousarray(image)
