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


def test_cell_overhead_script_counts_fewer_launches_on_the_foreach_path(idx_dir_session, tmp_path):
    """``--overhead`` (it once crashed before its first step): the ensemble foreach path launches
    under half the kernels of the per-tensor one per eager step (431 vs 152 for AdamW, BENCHMARKS.md)."""
    out = tmp_path / "out"
    _run("mnist_cell_modes.py", out, "--device", "cpu", "--overhead", "--modes", "eager",
         "--overhead-optimizers", "adamw", "--data-dir", str(idx_dir_session), "--no-verify")  # fmt: skip
    row = json.loads((out / "mnist_cell_overhead.json").read_text())["ms_per_step"]["adamw"]
    per_tensor, foreach = row["eager_launches_per_step"], row["eager_foreach_launches_per_step"]
    assert row["eager"] > 0 and 0 < foreach < per_tensor / 2


def test_cell_profile_script_on_cpu(idx_dir_session, tmp_path):
    out = tmp_path / "out"
    _run("mnist_cell_modes.py", out, "--device", "cpu", "--steps", "2", "--modes", "fused", "--profile", "8",
         "--data-dir", str(idx_dir_session), "--no-verify")  # fmt: skip
    info = json.loads((out / "mnist_profile_b8.json").read_text())
    assert info["batch_size"] == 8 and info["steps"] == 2 and info["wall_s"] > 0
    kernels = {row["kernel"] for row in info["kernels"]}
    assert "aten::bmm" in kernels or "aten::baddbmm" in kernels  # the ensemble's layers
    assert 0 < sum(row["share"] for row in info["kernels"]) <= 1.0 + 1e-9


def test_step_costs_script_counts_the_cell_s_flops(tmp_path):
    """``mnist_step_costs.py`` tallies the cell's own code on meta tensors: its matrix-product FLOPs
    equal the layer sizes' arithmetic (training: forward, weight and input gradients; with the input
    layer's BN folded, less that layer's input gradient, plus the bias ``c + W beta`` and its two
    gradients, a batch of one; test pass: the padded folded GEMMs and the folded biases ``c + W t``)."""
    out = tmp_path / "out"
    _run("mnist_step_costs.py", out, "--batch-sizes", "2", "4096", "--unfolded")
    info = json.loads((out / "mnist_step_costs.json").read_text())
    E, layers, first = 60, 784 * 128 + 4 * 128 * 128 + 128 * 10, 784 * 128
    test_pass = 2 * 10_000 * E * (136 * 792 + 4 * 136 * 136 + 10 * 136) + 2 * E * layers  # + folded biases
    for variant, b, saved in (
        ("folded", 4096, 1),
        ("unfolded", 4096, 0),
        ("folded", 2, 0),
        ("unfolded", 2, 0),
    ):
        row = next(r for r in info[variant]["rows"] if r["batch"] == b)
        folding = saved * (3 * 2 * E * first - 2 * E * b * first)
        assert row["flops_train"] == 3 * 2 * E * b * layers + folding, (variant, b)
        assert row["flops_test"] == test_pass
    folded, unfolded = (
        next(r for r in info[v]["rows"] if r["batch"] == 4096) for v in ("folded", "unfolded")
    )
    assert folded["bytes_train"] < 0.85 * unfolded["bytes_train"]
    assert info["folded"]["scan_seconds"] < info["unfolded"]["scan_seconds"]


def test_eval_kernel_compiles_for_an_h100_without_spills(tmp_path):
    """The fused test pass compiles for sm_90 with Triton's own ptxas (no GPU needed), within the
    register file and shared memory of an H100 and without spills."""
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton has no ptxas")
    out = tmp_path / "out"
    _run("mnist_eval_kernel.py", out, "--registers", "--configs", "128x8x3", "64x8x3")
    rows = json.loads((out / "mnist_eval_kernel.json").read_text())["registers"]
    assert [r["config"] for r in rows] == ["128x8x3", "64x8x3"]
    for r in rows:
        assert 0 < r["registers"] <= 255 and r["spill_stores"] == 0 and r["shared_bytes"] <= 227 * 1024, r
