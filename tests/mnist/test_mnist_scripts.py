"""The MNIST parts of the GPU playbook (``benchmarks/gpu_followups.sh``) run end to end on the CPU
at toy sizes, so that a session with a GPU does not spend its minutes on a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mnist_helpers import make_idx_set

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


def _run(script: str, out: Path, *args: str) -> None:
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_paper_scan_script_on_cpu(tmp_path):
    idx = make_idx_set(tmp_path / "idx", n_train=300, n_test=64)  # the quick preset's batches go to 256
    out = tmp_path / "out"
    _run("mnist_gpu.py", out, "--device", "cpu", "--preset", "quick", "--steps", "2", "--workers", "1",
         "--no-check", "--eval-precision", "fp32", "--data-dir", str(idx), "--no-verify",
         "--out", str(tmp_path / "scan"))  # fmt: skip
    info = json.loads((out / "mnist_gpu.json").read_text())
    assert info["complete"] is True and info["cells_computed"] == info["cells"] > 0
    assert info["scan_seconds"] > 0 and info["steps"] == 2
    assert (out / "mnist_summary.txt").read_text().strip()


def test_cell_modes_script_on_cpu(idx_dir_session, tmp_path):
    out = tmp_path / "out"
    _run("mnist_cell_modes.py", out, "--device", "cpu", "--steps", "2", "--modes", "eager", "fused",
         "--batch-sizes", "2", "--data-dir", str(idx_dir_session), "--no-verify")  # fmt: skip
    info = json.loads((out / "mnist_cell_modes.json").read_text())
    for mode in ("eager", "fused"):
        row = info["seconds"][mode]
        assert info["steps"] == 2 and row["2"] > 0 and row["scan_serial_estimate_s"] > 0


def test_cell_profile_script_on_cpu(idx_dir_session, tmp_path):
    out = tmp_path / "out"
    _run("mnist_cell_modes.py", out, "--device", "cpu", "--steps", "2", "--modes", "fused", "--profile", "8",
         "--data-dir", str(idx_dir_session), "--no-verify")  # fmt: skip
    info = json.loads((out / "mnist_profile_b8.json").read_text())
    assert info["batch_size"] == 8 and info["steps"] == 2 and info["wall_s"] > 0
    kernels = {row["kernel"] for row in info["kernels"]}
    assert "aten::bmm" in kernels or "aten::baddbmm" in kernels  # the ensemble's layers
    assert 0 < sum(row["share"] for row in info["kernels"]) <= 1.0 + 1e-9
