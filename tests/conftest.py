"""Shared fixtures: a tiny MNIST in the real idx format, a user-registered optimizee.

The optimizee registered here makes every registry-parametrized test also run on an
env that a user registered, as DESIGN.md asks. ``OPTENV_DATA_ROOT`` is pointed at the
tiny MNIST before any test runs, so ``optenv/MLP-Torchvision-v0`` builds like every
other id (also in spawned vector-env workers, which inherit the environment).
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import optenv
from optenv.problems.quadratic import QuadraticFamily

torch.set_num_threads(1)  # the test problems are tiny: threads only add overhead


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one torch thread, whatever the previous test set."""
    torch.set_num_threads(1)
    yield


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the idx format of the MNIST files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_tiny_mnist(root: Path, folder: str = "MNIST", n_train: int = 120, n_test: int = 40,
                     seed: int = 0) -> Path:
    """A tiny MNIST-format dataset under ``root/folder/raw`` (what torchvision reads)."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, size=(count, 28, 28))
        for k in range(10):  # a class-dependent bright block makes the task learnable
            images[labels == k, 2 * k : 2 * k + 6, 4:20] += 150
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images.astype(np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return root


_DATA_ROOT = Path(tempfile.mkdtemp(prefix="optenv-test-data-"))
write_tiny_mnist(_DATA_ROOT)
os.environ.setdefault(optenv.data.DATA_ROOT_ENV, str(_DATA_ROOT))


def tiny_quadratic(dim: int = 3) -> QuadraticFamily:
    """A user's task factory: registered below by import path."""
    return QuadraticFamily(dim=dim)


USER_ENV_ID = optenv.register_optimizee(
    "TinyQuadratic", "tests.conftest:tiny_quadratic", namespace="optenv-user", horizon=20,
    description="a user-registered 3-dim quadratic",
)
