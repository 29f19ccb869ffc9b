"""Fixtures of the toy lab's tests (the independent restatement lives in ``toy_reference``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP barrier stalls on the shared 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
