"""Datasets for the optimizees. Nothing is downloaded.

* ``"digits"`` (default): scikit-learn's bundled 8x8 digits (1797 images, 10 classes),
  split at random into train and test with ``seed``.
* ``"mnist1d"``: MNIST-1D (Greydanus 2020) generated locally by the ``mnist1d``
  package's ``make_dataset`` with its canonical arguments (40-dim signals, 5000 samples).
* ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``: torchvision's
  readers on files you put under ``root`` (``download=False``); ``root=None`` reads
  ``$OPTENV_DATA_ROOT``. A missing root or file is an error that lists which files to
  put where.

Inputs are flattened to ``(N, d)`` float32 and standardized with *train* statistics:

* ``dim=None``: per channel for images (``image_shape`` is kept, for CNNs), per feature
  otherwise.
* ``dim=k``: the raw flattened inputs are multiplied by a Gaussian random matrix
  ``(d, k)`` drawn from ``seed``, then each of the ``k`` dimensions is shifted and scaled
  to zero mean and unit variance - "a randomly projected and normalized version of the
  MNIST training set with dimensionality 48 and unit variance in each dimension"
  (Li & Malik 2017, section 4). ``image_shape`` is then ``None``.

Loaded datasets are cached on their arguments (environments reset often); the cached
tensors are shared, so treat them as read-only.
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "Dataset", "load_dataset"]

#: names accepted by :func:`load_dataset`
DATASETS = ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100")

_TORCHVISION = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}


#: environment variable naming the folder of the torchvision datasets when ``root=None``
DATA_ROOT_ENV = "OPTENV_DATA_ROOT"

@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset as tensors: inputs ``(N, d)`` float32, labels ``(N,)`` long.

    ``image_shape`` is ``(C, H, W)`` when the rows are flattened images (``d = C*H*W``),
    else ``None``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    image_shape: tuple[int, int, int] | None = None
    name: str = ""

    @property
    def input_dim(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, classes={self.num_classes}, "
            f"image_shape={self.image_shape})"
        )


def load_dataset(
    name: str = "digits",
    *,
    dim: int | None = None,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    test_fraction: float | None = None,
) -> Dataset:
    """Load (and cache) a dataset; see the module docstring for names and preprocessing.

    ``seed`` fixes the random projection and, for ``digits``, the train/test split.
    ``test_fraction`` (default 0.2) applies to ``digits`` and ``mnist1d``; the torchvision
    datasets keep their official split.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
        raise ValueError(f"dim must be a positive int or None, got {dim!r}")
    if name in _TORCHVISION:
        if test_fraction is not None:
            raise ValueError(
                f"test_fraction={test_fraction!r} is not supported for {name!r}, "
                "which keeps its official train/test split; pass None"
            )
        root = root or os.environ.get(DATA_ROOT_ENV) or None
        if root is None:
            raise ValueError(
                f"dataset {name!r} is read from local files and needs root=... (or "
                f"${DATA_ROOT_ENV}); nothing is downloaded. Put these files under <root>: "
                f"{', '.join(_expected_files(name))}"
            )
        root = str(Path(root).expanduser().resolve())
    else:
        test_fraction = 0.2 if test_fraction is None else float(test_fraction)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        root = None  # not used: keep the cache key canonical
    return _load_cached(name, dim, root, int(seed), test_fraction)


@functools.lru_cache(maxsize=16)
def _load_cached(
    name: str, dim: int | None, root: str | None, seed: int, test_fraction: float | None
) -> Dataset:
    if name == "digits":
        raw = _load_digits(seed, test_fraction)
    elif name == "mnist1d":
        raw = _load_mnist1d(test_fraction)
    else:
        raw = _load_torchvision(name, root)
    train_x, train_y, test_x, test_y, num_classes, image_shape = raw
    train_x, test_x = train_x.reshape(len(train_x), -1), test_x.reshape(len(test_x), -1)
    if dim is not None:
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(train_x.shape[1], dim, generator=gen, dtype=torch.float64)
        train_x, test_x = train_x @ proj, test_x @ proj
        train_x, test_x = _standardize(train_x, test_x, None)
        image_shape = None
    else:
        train_x, test_x = _standardize(train_x, test_x, image_shape)
    return Dataset(
        train_x=train_x.float().contiguous(),
        train_y=train_y.long().contiguous(),
        test_x=test_x.float().contiguous(),
        test_y=test_y.long().contiguous(),
        num_classes=int(num_classes),
        image_shape=image_shape,
        name=name,
    )


def _standardize(
    train_x: torch.Tensor, test_x: torch.Tensor, image_shape: tuple[int, int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance with train statistics: per channel for images, else per
    feature. Constant features (e.g. the always-blank border pixels of digits) are only
    centred."""
    if image_shape is not None:
        c = image_shape[0]
        pixels = train_x.reshape(len(train_x), c, -1).transpose(0, 1).reshape(c, -1)
        mean, std = pixels.mean(1), pixels.std(1)
        hw = train_x.shape[1] // c
        mean, std = mean.repeat_interleave(hw), std.repeat_interleave(hw)
    else:
        mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train_x - mean) / std, (test_x - mean) / std


def _split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n_test = max(1, min(n - 1, round(n * test_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def _load_digits(seed: int, test_fraction: float):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float64).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    train, test = _split(len(y), test_fraction, seed)
    return x[train], y[train], x[test], y[test], 10, (1, 8, 8)


def _load_mnist1d(test_fraction: float):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - mnist1d is a dependency
        raise ValueError(
            "dataset 'mnist1d' needs the mnist1d package (pip install mnist1d)"
        ) from err

    args = get_dataset_args()  # canonical arguments, seed 42
    args.train_split = 1.0 - test_fraction
    # make_dataset seeds numpy's and Python's global RNGs; leave them as we found them.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    as64 = functools.partial(torch.as_tensor, dtype=torch.float64)
    return (
        as64(data["x"]),
        torch.as_tensor(data["y"]),
        as64(data["x_test"]),
        torch.as_tensor(data["y_test"]),
        10,
        None,
    )


def _tv_class(name: str):
    import torchvision.datasets as tvd

    return getattr(tvd, _TORCHVISION[name])


def _expected_files(name: str) -> list[str]:
    """Paths (relative to root) that torchvision's reader opens for ``name``."""
    if name in ("mnist", "fashion_mnist"):
        folder = f"{_TORCHVISION[name]}/raw"
        stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        return [f"{folder}/{s}" for s in stems]
    if name == "cifar10":
        folder = "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    else:
        folder = "cifar-100-python"
        files = ["train", "test", "meta"]
    return [f"{folder}/{f}" for f in files]


def _load_torchvision(name: str, root: str):
    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"dataset {name!r}: root {root!r} is not a directory; create it and put these "
            f"files under it: {', '.join(_expected_files(name))}"
        )
    missing = [f for f in _expected_files(name) if not (Path(root) / f).is_file()]
    if missing:
        hint = (
            "the uncompressed idx files (gunzip the *.gz downloads)"
            if name in ("mnist", "fashion_mnist")
            else "the extracted python-pickle batches (tar xzf the *-python.tar.gz)"
        )
        raise FileNotFoundError(
            f"dataset {name!r}: missing {', '.join(missing)} under root {root!r}; "
            f"put {hint} there. Nothing is downloaded."
        )
    cls = _tv_class(name)
    try:
        train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError as err:
        raise ValueError(
            f"dataset {name!r} under {root!r}: torchvision rejected the files ({err}); "
            "they must be the official, uncorrupted files (torchvision checks MD5 sums)"
        ) from err

    def tensors(ds):
        x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float64) / 255.0
        if x.ndim == 3:  # MNIST: (N, H, W)
            x = x.unsqueeze(1)
        else:  # CIFAR: (N, H, W, C) -> (N, C, H, W)
            x = x.permute(0, 3, 1, 2)
        return x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)

    train_x, train_y = tensors(train)
    test_x, test_y = tensors(test)
    num_classes = len(train.classes)
    return train_x, train_y, test_x, test_y, num_classes, tuple(train_x.shape[1:])
