"""Fixtures of the GPT-2 lab tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_helpers import write_synthetic


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI machine is small and shared: one intra-op thread is much faster than contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("lmdata") / "data")
