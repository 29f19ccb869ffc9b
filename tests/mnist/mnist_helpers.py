"""Helpers of the MNIST lab's tests: the real files when present, small generated IDX sets otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from focus_optim.mnist.data import FILES, MNIST, write_idx

REPO = Path(__file__).resolve().parents[2]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def make_idx_set(
    directory: Path, n_train: int = 96, n_test: int = 48, *, seed: int = 0, gz: bool = True
) -> Path:
    """Write a small, well-formed MNIST-like IDX set (random digits) into ``directory``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "test": n_test}
    for key, spec in FILES.items():
        n = counts[key.split("_")[0]]
        if spec.kind == "images":
            arr = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        else:
            arr = (np.arange(n) % 10).astype(np.uint8)
            rng.shuffle(arr)
        write_idx(directory / (spec.name + (".gz" if gz else "")), arr)
    return directory


def synthetic_mnist(n_train: int = 256, n_test: int = 128, seed: int = 0) -> MNIST:
    """An in-memory MNIST-shaped dataset whose labels depend on the images (so training makes progress)."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, size=(10, 28, 28))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (np.arange(n) % 10).astype(np.uint8)
        x = np.clip(protos[y] * 0.6 + rng.integers(0, 100, size=(n, 28, 28)), 0, 255).astype(np.uint8)
        return x, y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    return MNIST(xtr, ytr, xte, yte, directory=Path("<memory>"), verified=False, md5={"x": "0"})


def real_mnist_dir() -> Path | None:
    return SHARED_MNIST if (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists() else None
