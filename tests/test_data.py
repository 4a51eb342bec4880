"""optenv.data: bundled digits, generated MNIST-1D, and torchvision readers on tiny files
written in the real on-disk formats."""

from __future__ import annotations

import hashlib
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from optenv.data import DATA_ROOT_ENV, _load_cached, load_dataset
from tests.conftest import write_idx, write_tiny_mnist


def test_digits_projected_is_normalized_with_train_statistics() -> None:
    ds = load_dataset("digits", dim=48)
    assert ds.train_x.shape == (1438, 48) and ds.test_x.shape == (359, 48)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.long
    assert ds.image_shape is None and ds.num_classes == 10 and ds.input_dim == 48
    torch.testing.assert_close(ds.train_x.mean(0), torch.zeros(48), atol=1e-4, rtol=0)
    torch.testing.assert_close(ds.train_x.std(0), torch.ones(48), atol=1e-4, rtol=0)
    # the test split uses the train statistics: close to, but not exactly, standardized
    assert 0 < (ds.test_x.mean(0).abs().max()) < 0.5
    assert set(ds.train_y.tolist()) == set(range(10))


def test_digits_projection_is_deterministic_and_seeded() -> None:
    a = load_dataset("digits", dim=16)
    assert load_dataset("digits", dim=16) is a  # cached
    _load_cached.cache_clear()
    b = load_dataset("digits", dim=16)
    assert b is not a and torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load_dataset("digits", dim=16, seed=1)
    assert not torch.equal(a.train_x, c.train_x)


def test_digits_raw_images_and_split() -> None:
    ds = load_dataset("digits")
    assert ds.image_shape == (1, 8, 8) and ds.train_x.shape == (1438, 64)
    # one channel: standardized over all pixels together
    assert abs(ds.train_x.mean().item()) < 1e-5 and abs(ds.train_x.std().item() - 1) < 1e-4
    half = load_dataset("digits", test_fraction=0.5)
    assert half.train_x.shape[0] + half.test_x.shape[0] == 1797
    assert abs(half.test_x.shape[0] - 898) <= 1


def test_mnist1d_is_generated_locally_without_touching_global_rngs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # mnist1d.get_dataset would write a pickle here; we must not
    np_before = np.random.get_state()[1].copy()  # noqa: NPY002 - checking it is untouched
    py_before = random.getstate()
    ds = load_dataset("mnist1d")
    assert ds.train_x.shape == (4000, 40) and ds.test_x.shape == (1000, 40)
    assert ds.num_classes == 10 and ds.image_shape is None
    assert set(ds.train_y.tolist()) == set(range(10))
    torch.testing.assert_close(ds.train_x.mean(0), torch.zeros(40), atol=1e-4, rtol=0)
    assert np.array_equal(np.random.get_state()[1], np_before)  # noqa: NPY002
    assert random.getstate() == py_before
    assert list(tmp_path.iterdir()) == []
    projected = load_dataset("mnist1d", dim=8)
    assert projected.train_x.shape == (4000, 8)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "imagenet"}, "imagenet"),
    ({"name": "digits", "dim": 0}, "dim"),
    ({"name": "digits", "test_fraction": 1.0}, "test_fraction"),
    ({"name": "mnist", "root": "/x", "test_fraction": 0.1}, "official"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


@pytest.mark.parametrize("name,where", [
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("cifar100", "cifar-100-python/meta"),
])
def test_missing_root_says_where_to_put_files(
    tmp_path: Path, name: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(ValueError, match=DATA_ROOT_ENV) as info:
        load_dataset(name)
    assert where in str(info.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, root=missing)
    assert str(missing) in str(info.value) and where in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing") as info:
        load_dataset(name, root=tmp_path)  # exists, but empty
    assert where in str(info.value) and "Nothing is downloaded" in str(info.value)


# -- MNIST / FashionMNIST: idx ubyte files --------------------------------------------------

def test_root_defaults_to_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_mnist(tmp_path, n_train=30, n_test=10)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    ds = load_dataset("mnist")
    assert ds.train_x.shape == (30, 784) and ds.test_x.shape == (10, 784)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    train_images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    train_labels = np.arange(20, dtype=np.uint8) % 10
    test_images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    test_labels = np.arange(7, dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", train_images)
    write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    write_idx(raw / "t10k-images-idx3-ubyte", test_images)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_labels)

    ds = load_dataset(name, root=tmp_path)
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.train_x.shape == (20, 784) and ds.test_x.shape == (7, 784)
    assert torch.equal(ds.train_y, torch.as_tensor(train_labels, dtype=torch.long))
    assert torch.equal(ds.test_y, torch.as_tensor(test_labels, dtype=torch.long))
    # standardized with the train mean/std of the pixels, applied to both splits
    pixels = train_images.astype(np.float64) / 255.0
    expected = (test_images.reshape(7, -1) / 255.0 - pixels.mean()) / pixels.std(ddof=1)
    np.testing.assert_allclose(ds.test_x.numpy(), expected, rtol=1e-5, atol=1e-5)
    projected = load_dataset(name, root=tmp_path, dim=5)
    assert projected.train_x.shape == (20, 5) and projected.image_shape is None


# -- CIFAR-10 / CIFAR-100: python pickle batches ---------------------------------------------

def write_pickle(path: Path, obj: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_batch(rng: np.random.Generator, n: int, num_classes: int, key: str) -> dict:
    # rows are 3072 bytes: the 1024 red, then green, then blue pixels of a 32x32 image
    batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             key: [int(i) % num_classes for i in range(n)], "batch_label": "test batch"}
    if key == "fine_labels":
        batch["coarse_labels"] = [0] * n
    return batch


@pytest.fixture
def tiny_cifar10(tmp_path: Path) -> tuple[Path, dict, list, list]:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    batches = {f"data_batch_{i}": cifar_batch(rng, 3, 10, "labels") for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(rng, 4, 10, "labels")
    md5 = {name: write_pickle(folder / name, b) for name, b in batches.items()}
    meta_md5 = write_pickle(folder / "batches.meta",
                            {"label_names": [f"class{i}" for i in range(10)]})
    train_list = [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    test_list = [["test_batch", md5["test_batch"]]]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": meta_md5}
    return tmp_path, batches, [train_list, test_list], meta


def test_cifar10_pickles(tiny_cifar10, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    root, batches, (train_list, test_list), meta = tiny_cifar10
    # torchvision verifies each file's MD5 against the official archive's; tiny files have
    # their own sums, so point its tables at them (the reading code is torchvision's own)
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(tvd.CIFAR10, "meta", meta)
    ds = load_dataset("cifar10", root=root)
    assert ds.image_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.train_x.shape == (15, 3072) and ds.test_x.shape == (4, 3072)
    train_y = [y for i in range(1, 6) for y in batches[f"data_batch_{i}"]["labels"]]
    assert ds.train_y.tolist() == train_y
    # channel-major layout is kept: row = (C, H, W) flattened, standardized per channel
    train = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)]) / 255.0
    red = train[:, :1024]
    np.testing.assert_allclose(ds.train_x[:, :1024].numpy(),
                               (red - red.mean()) / red.std(ddof=1), rtol=1e-5, atol=1e-5)
    per_channel = ds.train_x.reshape(15, 3, -1).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)


def test_cifar10_wrong_checksums_are_reported(tiny_cifar10) -> None:
    root = tiny_cifar10[0]  # real torchvision tables: the tiny files fail the MD5 check
    with pytest.raises(ValueError, match="MD5"):
        load_dataset("cifar10", root=root)


def test_cifar100_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    train, test = cifar_batch(rng, 6, 100, "fine_labels"), cifar_batch(rng, 2, 100, "fine_labels")
    train["fine_labels"] = [99, 3, 50, 7, 0, 42]
    md5_train, md5_test = write_pickle(folder / "train", train), write_pickle(folder / "test", test)
    md5_meta = write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                                              "coarse_label_names": [f"s{i}" for i in range(20)]})
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", md5_train]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", md5_test]])
    monkeypatch.setattr(tvd.CIFAR100, "meta",
                        {"filename": "meta", "key": "fine_label_names", "md5": md5_meta})
    ds = load_dataset("cifar100", root=tmp_path, dim=12)
    assert ds.num_classes == 100 and ds.image_shape is None
    assert ds.train_x.shape == (6, 12) and ds.test_x.shape == (2, 12)
    assert ds.train_y.tolist() == [99, 3, 50, 7, 0, 42]
