"""``spawn_pool``: the workers run their initializer with SIGINT ignored and unblocked, and the
parent's signal mask is as it was."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from focus_optim.worker_pool import spawn_pool

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal masks")

_GIVEN: dict[str, object] = {}


def _remember(a: int, b: str) -> None:
    _GIVEN["args"] = (a, b)
    _GIVEN["ignored_in_init"] = signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def _report(_: object) -> tuple[object, object, bool, bool]:
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    return _GIVEN["args"], _GIVEN["ignored_in_init"], ignored, blocked


def test_workers_ignore_sigint_without_blocking_it_and_the_parent_mask_is_restored() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with spawn_pool(2, _remember, (3, "x")) as pool:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before  # blocked only while spawning
        reports = pool.map(_report, range(4))
        pool.close()
        pool.join()
    assert reports == [((3, "x"), True, True, False)] * 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the parent's is untouched


def test_a_parent_whose_sigint_was_blocked_keeps_it_blocked() -> None:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with spawn_pool(1, _remember, (1, "y")) as pool:
            assert pool.apply(_report, (None,))[3] is False
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fail(path: str) -> None:
    raise FileNotFoundError(f"no such file: {path}")


def _double(x: int) -> int:
    return 2 * x


def _add(x: int, y: int) -> int:
    return x + y


def test_an_initializer_error_reaches_the_parent_through_every_kind_of_task() -> None:
    """multiprocessing alone would respawn the failing worker forever while the parent waits."""
    with spawn_pool(2, _fail, ("tokenizer.bin",)) as pool:
        calls = [
            lambda: pool.apply(_double, (1,)),
            lambda: pool.apply_async(_double, (1,)).get(timeout=120),
            lambda: pool.map(_double, range(3)),
            lambda: pool.starmap(_add, [(1, 2)]),
            lambda: list(pool.imap(_double, range(3))),
            lambda: list(pool.imap_unordered(_double, range(3))),
        ]
        for call in calls:
            with pytest.raises(FileNotFoundError, match=r"^no such file: tokenizer\.bin$"):
                call()


def test_tasks_run_as_given_when_the_initializer_succeeds() -> None:
    with spawn_pool(2, _remember, (0, "z")) as pool:
        assert pool.map(_double, range(4)) == [0, 2, 4, 6]
        assert pool.starmap(_add, [(1, 2), (3, 4)]) == [3, 7]
        assert sorted(pool.imap_unordered(_double, range(3))) == [0, 2, 4]
        assert pool.apply(_add, (5,), {"y": 1}) == 6


PROBE = """
import json, signal, sys, time
from pathlib import Path
from focus_optim.worker_pool import spawn_pool

def bits(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)

SIGINT_BIT = 1 << (signal.SIGINT - 1)
samples = []
with spawn_pool(1, print, ("ready",)) as pool:
    pid = pool._pool[0].pid
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        blocked, ignored = bits(pid, "SigBlk") & SIGINT_BIT, bits(pid, "SigIgn") & SIGINT_BIT
        samples.append([bool(blocked), bool(ignored)])
        if ignored and not blocked and pool.apply(int, ("1",)) == 1:
            break
print(json.dumps(samples))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
def test_a_starting_worker_never_has_sigint_both_unblocked_and_unignored(tmp_path: Path) -> None:
    """From its exec to its initializer a worker must not be killable by Ctrl-C with a traceback.
    In a fresh process, so that the pool also starts the resource tracker (which unblocks SIGINT)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         check=True, cwd=tmp_path)  # fmt: skip
    samples = json.loads(out.stdout.strip().splitlines()[-1])
    assert samples[0] == [True, False]  # just spawned: blocked, not yet ignored
    assert all(blocked or ignored for blocked, ignored in samples), samples
    assert samples[-1] == [False, True]  # initialized: ignored, unblocked
