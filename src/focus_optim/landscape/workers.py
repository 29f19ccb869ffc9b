"""Run one figure's sweep on several local processes writing into one store.

Worker ``j`` of ``w`` takes the sweep's own shard ``(i + n*j) / (n*w)`` of this process's shard
``i/n``, so cells, seeds, files and resume are exactly those of a one-process run. On a CPU,
several single-threaded processes beat one multi-threaded process for this workload (OpenMP
barriers on small per-step kernels stall whenever another process holds a core).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from ..sweep import Shard, Store, SweepReport, SweepSpec, _progress, run_sweep
from . import figures as F


def run_figure(
    spec: SweepSpec,
    run: F.RunOptions,
    out: str | os.PathLike[str],
    *,
    shard: Shard | None = None,
    device: str = "cpu",
    batch_cells: int = 1,
    progress: bool = True,
    max_cells: int | None = None,
    workers: int = 1,
) -> SweepReport:
    """``run_sweep`` of a figure, on ``workers`` processes when more than one (``max_cells`` is then
    per worker)."""
    if workers <= 1:
        return run_sweep(
            spec,
            F.make_compute(spec, run),
            out,
            shard=shard,
            device=device,
            batch_cells=batch_cells,
            group_by=("optimizer",),
            progress=progress,
            max_cells=max_cells,
        )
    t0 = time.perf_counter()
    base = shard or Shard(0, 1)
    store = Store(out, spec).open()
    mine = base.take(spec.cells())
    done_before = sum(store.has(c) for c in mine)
    shards = [Shard(base.index + base.count * j, base.count * workers) for j in range(workers)]
    threads = run.threads or 1
    bar = _progress(len(mine), done_before, enabled=progress, desc=spec.name)
    reports: list[SweepReport] = []
    try:
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(threads,)) as pool:
            jobs = [
                pool.apply_async(_work, ((spec, run, str(out), s, device, batch_cells, max_cells),))
                for s in shards
            ]
            seen = done_before
            while not all(j.ready() for j in jobs):
                time.sleep(0.5)
                now = sum(store.has(c) for c in mine)
                bar.update(now - seen)
                seen = now
            reports = [j.get() for j in jobs]
            bar.update(sum(store.has(c) for c in mine) - seen)
    finally:
        bar.close()
    return SweepReport(
        store=Path(out),
        total_cells=len(spec.cells()),
        shard_cells=len(mine),
        computed=sum(r.computed for r in reports),
        skipped=done_before,
        seconds=time.perf_counter() - t0,
    )


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _work(task: tuple[Any, ...]) -> SweepReport:
    spec, run, out, shard, device, batch_cells, max_cells = task
    return run_sweep(
        spec,
        F.make_compute(spec, run),
        out,
        shard=shard,
        device=device,
        batch_cells=batch_cells,
        group_by=("optimizer",),
        progress=False,
        max_cells=max_cells,
    )


__all__ = ["run_figure"]
