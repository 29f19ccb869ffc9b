"""Ctrl-C on a sweep with local workers: one line instead of tracebacks, and the same command resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")

TRAIN = """
import time


def train(trial):
    time.sleep(0.4)  # a run long enough to be interrupted
    return {"loss": trial.lr * (1 + trial.seed % 3)}
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _command(tmp_path: Path) -> tuple[list[str], Path]:
    (tmp_path / "slow_train.py").write_text(TRAIN)
    out = tmp_path / "cmp"
    target = f"{tmp_path / 'slow_train.py'}:train"
    cmd = [sys.executable, "-m", "focus_optim.cli", "compare", "run", target, "--optimizers", "adamw",
           "focus", "--lrs", "1e-3", "1e-2", "--replicates", "6", "--metrics", "loss", "--out", str(out),
           "--workers", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    return cmd, out


def _start(cmd: list[str]) -> subprocess.Popen[str]:
    # A terminal's Ctrl-C signals the whole foreground process group: the parent and its workers.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)  # fmt: skip


def _interrupt_quietly(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    said = "focus-optim compare run: interrupted; what was stored is kept, and the same command resumes it"
    assert said in stderr


def _resumes(cmd: list[str], stored: int) -> None:
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert f"{24 - stored} runs computed, {stored} already stored; 24/24 runs stored" in again.stdout


def test_ctrl_c_stops_the_workers_quietly_and_the_same_command_resumes(tmp_path: Path) -> None:
    cmd, out = _command(tmp_path)
    proc = _start(cmd)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("cells/*.npz")):
        time.sleep(0.05)
    assert proc.poll() is None, "the comparison ended before it could be interrupted"
    _interrupt_quietly(proc)
    stored = len(list(out.glob("cells/*.npz")))
    assert 1 <= stored < 24
    _resumes(cmd, stored)


def _group(pgid: int) -> set[int]:
    """The other processes of process group ``pgid`` (from /proc)."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and int(stat.parent.name) != pgid:
            members.add(int(stat.parent.name))
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_ctrl_c_while_the_workers_are_still_starting_is_as_quiet(tmp_path: Path) -> None:
    """The workers spawn with SIGINT blocked: one still importing torch cannot print a traceback."""
    cmd, out = _command(tmp_path)
    proc = _start(cmd)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and len(_group(proc.pid)) < 2:
        time.sleep(0.01)
    assert proc.poll() is None and not list(out.glob("cells/*.npz")), "too late to interrupt the start"
    _interrupt_quietly(proc)
    _resumes(cmd, len(list(out.glob("cells/*.npz"))))
