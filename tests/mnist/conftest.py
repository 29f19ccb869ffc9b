"""Fixtures of the MNIST lab's tests (helpers live in ``mnist_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mnist_helpers import make_idx_set, synthetic_mnist

from focus_optim.mnist.data import MNIST


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    return make_idx_set(tmp_path / "idx")


@pytest.fixture(scope="session")
def idx_dir_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_idx_set(tmp_path_factory.mktemp("idx"), n_train=200, n_test=64)


@pytest.fixture(scope="session")
def tiny_data() -> MNIST:
    return synthetic_mnist()


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP barrier stalls on the shared 2-core CI machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
