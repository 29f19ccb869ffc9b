"""Ctrl-C on a sweep with local workers: one line instead of tracebacks, and the same command resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TRAIN = """
import time


def train(trial):
    time.sleep(0.4)  # a run long enough to be interrupted
    return {"loss": trial.lr * (1 + trial.seed % 3)}
"""


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")
def test_ctrl_c_stops_the_workers_quietly_and_the_same_command_resumes(tmp_path: Path) -> None:
    (tmp_path / "slow_train.py").write_text(TRAIN)
    out = tmp_path / "cmp"
    target = f"{tmp_path / 'slow_train.py'}:train"
    cmd = [sys.executable, "-m", "focus_optim.cli", "compare", "run", target, "--optimizers", "adamw",
           "focus", "--lrs", "1e-3", "1e-2", "--replicates", "6", "--metrics", "loss", "--out", str(out),
           "--workers", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A terminal's Ctrl-C signals the whole foreground process group: the parent and its workers.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("cells/*.npz")):
        time.sleep(0.05)
    assert proc.poll() is None, "the comparison ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    said = "focus-optim compare run: interrupted; what was stored is kept, and the same command resumes it"
    assert said in stderr
    stored = {p.name for p in out.glob("cells/*.npz")}
    assert 1 <= len(stored) < 24

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    done = len(stored)
    assert f"{24 - done} runs computed, {done} already stored; 24/24 runs stored" in again.stdout
