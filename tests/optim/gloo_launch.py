"""Run a function on several ranks (processes started by torch.multiprocessing spawn; gloo on CPU)."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 600.0  # a hang guard only: 4 ranks spawning on a loaded 2-core box take a while


def _entry(rank: int, n: int, fn: Callable[..., Any], out_dir: str, args: tuple, backend: str) -> None:
    torch.set_num_threads(1)
    # a file rendezvous (no free-port race between choosing a port and binding it)
    store = Path(out_dir) / f"rendezvous-{fn.__name__}"
    dist.init_process_group(backend, init_method=store.as_uri(), rank=rank, world_size=n)
    try:
        result = fn(rank, n, out_dir, *args)
        torch.save(result, Path(out_dir) / f"result{rank}.pt")
        dist.barrier()  # every rank done before any tears its process group down
        (Path(out_dir) / f"done{rank}").touch()
    finally:
        dist.destroy_process_group()
    # The result is saved: skip interpreter finalization, where gloo's worker threads can still
    # drop tensors and abort the process ("terminate called without an active exception",
    # pytorch/pytorch#179291), which the launcher would report as a failed rank.
    os._exit(0)


def launch(fn: Callable[..., Any], n: int, out_dir: Path, *args: Any, backend: str = "gloo") -> list[Any]:
    """Run ``fn(rank, n, out_dir, *args)`` on ``n`` ranks (gloo by default); return each rank's result."""
    ctx = mp.spawn(_entry, args=(n, fn, str(out_dir), args, backend), nprocs=n, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    if proc.is_alive():
                        proc.terminate()
                pytest.fail(f"{fn.__name__} on {n} ranks did not finish within {TIMEOUT_S} s")
    except mp.ProcessExitedException as exc:
        # Every rank had saved its result and passed the final barrier: the crash came while tearing
        # the gloo process group down, after all the work the test checks. Anything earlier fails.
        if not all((out_dir / f"done{r}").exists() for r in range(n)):
            raise
        msg = f"{fn.__name__}: {exc} while tearing down its process group, after finishing"
        warnings.warn(msg, stacklevel=2)
    return [torch.load(out_dir / f"result{r}.pt", weights_only=True) for r in range(n)]
