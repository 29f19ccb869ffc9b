"""The test launcher itself: a rank that crashes before its work is done fails the test."""

from __future__ import annotations

import os
import signal

import pytest
import torch.multiprocessing as mp
from gloo_launch import launch


def _crash_on_rank_one(rank: int, n: int, out_dir: str) -> int:
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return rank


def _ok(rank: int, n: int, out_dir: str) -> int:
    return 10 * rank


@pytest.mark.distributed
def test_a_crash_before_the_end_fails_and_results_come_back_otherwise(tmp_path):
    for d in ("crash", "ok"):
        (tmp_path / d).mkdir()
    with pytest.raises(mp.ProcessExitedException, match="SIGSEGV"):
        launch(_crash_on_rank_one, 2, tmp_path / "crash")
    assert launch(_ok, 2, tmp_path / "ok") == [0, 10]
