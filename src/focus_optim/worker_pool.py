"""A spawn ``multiprocessing.Pool`` whose workers leave Ctrl-C to the parent.

A terminal's Ctrl-C signals the whole foreground process group. The parent catches it, stops the
pool and prints one line; a worker must neither print a ``KeyboardInterrupt`` traceback nor die
half-way through writing a result. Ignoring SIGINT in the worker's initializer is not enough on its
own: a worker still importing torch has not run it yet. So SIGINT is blocked while the workers are
spawned (as ``multiprocessing.resource_tracker`` does); they inherit the blocked mask, ignore the
signal first thing, then unblock it, and the parent gets a Ctrl-C pressed meanwhile as soon as its
own block lifts.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.pool import Pool
from typing import Any

__all__ = ["spawn_pool"]

_CAN_BLOCK = hasattr(signal, "pthread_sigmask")  # not on Windows, which has no process groups


@contextlib.contextmanager
def spawn_pool(
    processes: int, initializer: Callable[..., None], initargs: Sequence[Any] = ()
) -> Iterator[Pool]:
    """A ``spawn`` pool of ``processes`` workers that run ``initializer(*initargs)`` first; the
    pool is terminated on leaving the block (call ``close`` and ``join`` for a clean shutdown)."""
    ctx = mp.get_context("spawn")  # safe whatever the parent imported (torch, CUDA)
    if _CAN_BLOCK:  # started first: launching it unblocks SIGINT (bpo-33613's guard blocks, then unblocks)
        resource_tracker.ensure_running()
    with contextlib.ExitStack() as stack:
        with _sigint_blocked():
            pool = stack.enter_context(
                ctx.Pool(processes, initializer=_quiet_init, initargs=(initializer, tuple(initargs)))
            )
        yield pool


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    if not _CAN_BLOCK:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _quiet_init(initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _CAN_BLOCK:  # a Ctrl-C pending since the spawn is dropped here
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    initializer(*initargs)
