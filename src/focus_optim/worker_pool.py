"""A spawn ``multiprocessing.Pool`` whose workers leave Ctrl-C to the parent.

A terminal's Ctrl-C signals the whole foreground process group. The parent catches it, stops the
pool and prints one line; a worker must neither print a ``KeyboardInterrupt`` traceback nor die
half-way through writing a result. Ignoring SIGINT in the worker's initializer is not enough on its
own: a worker still importing torch has not run it yet. So SIGINT is blocked while the workers are
spawned (as ``multiprocessing.resource_tracker`` does); they inherit the blocked mask, ignore the
signal first thing, then unblock it, and the parent gets a Ctrl-C pressed meanwhile as soon as its
own block lifts.

An initializer that raises would leave ``multiprocessing.Pool`` replacing the dying worker forever
while the parent waits for results. Here the worker stays up and every task it is given raises that
error instead, so it reaches the parent as the task's exception (``get()``, or the ``imap`` loop).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import signal
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.pool import Pool
from typing import Any

__all__ = ["spawn_pool"]

_CAN_BLOCK = hasattr(signal, "pthread_sigmask")  # not on Windows, which has no process groups
_INIT_ERROR: list[Exception] = []  # in a worker: what its initializer raised, if it did


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
                _CheckedPool(
                    processes, initializer=_quiet_init, initargs=(initializer, tuple(initargs)), context=ctx
                )
            )
        yield pool


class _CheckedPool(Pool):
    """A pool whose tasks raise their worker's initializer error (see the module docstring).
    ``apply`` goes through ``apply_async``; ``map``, ``starmap`` and their ``_async`` forms through
    ``_map_async``."""

    def apply_async(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().apply_async(functools.partial(_checked, func), *args, **kwargs)

    def _map_async(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super()._map_async(functools.partial(_checked, func), *args, **kwargs)  # type: ignore[misc]

    def imap(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().imap(functools.partial(_checked, func), *args, **kwargs)

    def imap_unordered(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().imap_unordered(functools.partial(_checked, func), *args, **kwargs)


def _checked(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if _INIT_ERROR:
        raise _INIT_ERROR[0]
    return func(*args, **kwargs)


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
    try:
        initializer(*initargs)
    except Exception as exc:  # raised by this worker's tasks instead (see the module docstring)
        _INIT_ERROR.append(exc)
