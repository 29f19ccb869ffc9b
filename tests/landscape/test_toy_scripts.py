"""The toy parts of the GPU playbook (``benchmarks/gpu_followups.sh``) run end to end on the CPU at
toy sizes, so that a session with a GPU does not spend its minutes on a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


def test_gpu_suite_script_with_kernels_in_the_interpreter(tmp_path):
    """The ``toy-kernels`` / ``toy-fused`` parts: the suite's checks on the fused Triton step
    (Triton's CPU interpreter; ``--kernels fused``, whose numbers equal the two-launch step's)."""
    pytest.importorskip("triton")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, str(BENCHMARKS / "toy_gpu_suite.py"), "--device", "cpu", "--preset", "quick",
           "--figures", "1c", "--trajectory-steps", "40", "--no-warm", "--no-plots", "--kernels", "fused",
           "--check-rows", "24", "--check-steps", "20", "--steps-per-launch", "7",
           "--store", str(tmp_path / "s")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"toy_gpu_suite.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    info = json.loads((out / "toy_gpu_suite.json").read_text())
    assert info["kernels"] is True and info["fuse_update"] is True and info["steps_per_launch"] == 7
    assert [f["figure"] for f in info["figures"]] == ["1c"] and info["trajectory_steps"] == 40
    assert info["figures"][0]["trajectory_steps"] == 3 * 4 * 40  # optimizers x replicates x steps
    assert set(info["checks"]) == {"rotated2", "random100"}
    assert all(c["packed_equals_alone"] for c in info["checks"].values())


def test_gpu_suite_script_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCHMARKS / "toy_gpu_suite.py"), "--device", "cpu", "--preset", "quick",
           "--figures", "1c", "4", "--trajectory-steps", "300", "--no-warm", "--no-plots", "--compile", "off",
           "--check-rows", "64", "--check-steps", "50",
           "--store", str(tmp_path / "s")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"toy_gpu_suite.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    info = json.loads((out / "toy_gpu_suite.json").read_text())
    assert [f["figure"] for f in info["figures"]] == ["1c", "4"]
    assert all(f["seconds"] > 0 and f["traj_steps_per_s"] > 0 for f in info["figures"])
    # 3 optimizers x 4 replicates; Adam and FOCUS x 3 noises x 8 replicates; 300 steps each
    assert [f["trajectory_steps"] for f in info["figures"]] == [3 * 4 * 300, 2 * 3 * 8 * 300]
    # the suite's own checks: a trajectory packed with others equals the same trajectory alone
    assert info["checks"] and all(c["packed_equals_alone"] for c in info["checks"].values())


def test_throughput_script_on_cpu(tmp_path):
    """``toy_throughput.py`` (the GPU rows of ``toy-kernels`` and ``toy-variants``) at toy sizes, and
    its ``--host-overhead`` mode with the Triton launches stubbed out in the interpreter."""
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCHMARKS / "toy_throughput.py"), "--steps", "5", "--chunks", "64",
           "--threads", "1", "--scalar-trajectories", "1", "--no-compile"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "toy_throughput.json").read_text())["results"]
    assert [r["variant"].split()[0] for r in rows] == ["scalar", "eager"]
    assert all(r["traj_steps_per_s"] > 0 for r in rows)
    pytest.importorskip("triton")
    proc = subprocess.run([*cmd[:2], "--host-overhead"], env={**env, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    us = json.loads((tmp_path / "toy_host_overhead.json").read_text())["us_per_step"]
    names = {"adamw", "signum", "focus"}
    assert set(us) == names | {f"{n}-fused" for n in names} and all(v > 0 for v in us.values())


def test_first_use_sampler_finds_where_the_main_thread_works():
    """``toy_first_use.py``'s stack sampler attributes samples to the code the thread is in."""
    import importlib.util
    import threading
    import time

    import numpy as np

    from focus_optim.landscape import simulate as S
    from focus_optim.landscape import valley as V

    spec = importlib.util.spec_from_file_location("toy_first_use", BENCHMARKS / "toy_first_use.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sampler = mod.StackSampler(threading.get_ident(), 0.02)
    sampler.start()
    rows = S.Rows.make(0, 10.0, np.linspace(0, 3, 64), np.full(64, 0.01), 0.1)
    deadline = time.monotonic() + 120
    while len(sampler.samples) < 8 and time.monotonic() < deadline:  # however fast this machine is
        S.simulate("focus", rows, V.rotated(), 200, S.Options(compile=False))
    sampler.stop()
    top = dict(mod.summarize(sampler.samples))
    assert len(sampler.samples) >= 5
    ours = {k: n for k, n in top.items() if k.startswith("focus_optim: ")}
    assert ours and sum(ours.values()) >= len(sampler.samples) // 2


def test_toy_profile_script_in_the_interpreter(tmp_path):
    """``toy_profile.py`` (the ``toy-diagnose`` part) runs the Triton step under the profiler."""
    pytest.importorskip("triton")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, str(BENCHMARKS / "toy_profile.py"), "--device", "cpu", "--dim", "3",
           "--rows", "40", "--steps", "3", "--configs", "2048x8", "--fused-configs", "1024x2",
           "--fuse-update", "--steps-per-launch", "2"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"toy_profile.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    info = json.loads((out / "toy_profile_d3.json").read_text())
    assert info["dim"] == 3 and info["rows"] == 40
    assert set(info["table"]) == {"adamw", "signum", "focus"}
    assert all(row["wall_s_per_step"] > 0 for row in info["table"].values())
    assert set(info["valley_configs_us"]) == {"2048x8"}  # (no CUDA events on a CPU: 0.0 us)
    assert set(info["fused_configs_us_per_launch"]) == {"1024x2"}
    assert info["fuse_update"] and info["steps_per_launch"] == 2


def test_first_use_script_with_stubbed_kernels(tmp_path):
    """``toy_first_use.py --stub-kernels``: the host's side of a GPU run on a CPU (Triton launches as
    no-ops, cells batched as on a GPU), cold then warm, with the cold run's stack samples."""
    pytest.importorskip("triton")
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, str(BENCHMARKS / "toy_first_use.py"), "--device", "cpu", "--stub-kernels",
           "--preset", "quick", "--kernels", "fused", "--interval", "0.05"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"toy_first_use.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    info = json.loads((tmp_path / "toy_first_use.json").read_text())
    assert info["figure"] == "2a" and set(info["seconds"]) == {"cold", "warm"}
    assert all(s > 0 for s in info["seconds"].values()) and info["samples"] > 0
    assert (tmp_path / "toy_first_use_stacks.txt").stat().st_size > 0


def test_default_valley_kernels_compile_for_an_h100_without_register_pressure(tmp_path):
    """``toy_registers.py`` compiles the launches the host code makes, for sm_90 with Triton's own
    ptxas (no GPU needed): the default tile and warp settings keep every valley kernel at or under
    128 registers a thread (16+ warps an SM) with at most a few bytes of spills. (4096 x 4, timed on
    an H100, needed 232 at 100-D.)"""
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton has no ptxas")
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCHMARKS / "toy_registers.py"), "--dims", "2", "100", "--optimizers",
           "focus"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"toy_registers.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    table = json.loads((tmp_path / "toy_registers.json").read_text())["table"]
    assert sorted((r["dim"], r["fused"]) for r in table) == [(2, False), (2, True), (100, False), (100, True)]
    for row in table:
        assert 0 < row["registers"] <= 128 and row["spill_stores"] <= 16, row


def test_fast_sines_take_the_exact_ones_range_reduction_out_of_the_fused_loop(tmp_path):
    """Compiled for sm_90, Box-Muller's approximate cosine and sine (``FAST_SINCOS``, the default)
    leave the fused 100-D kernel's K-step loop without slow paths and with at least a tenth fewer
    instructions per iteration than the exact functions (302 against 410 with Triton 3.6, 303
    against 368 with Triton 3.9)."""
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton has no ptxas")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for flag in ([], ["--precise-sincos"]):
        out = tmp_path / ("precise" if flag else "fast")
        cmd = [sys.executable, str(BENCHMARKS / "toy_registers.py"), "--dims", "100", "--optimizers", "focus",
               "--step-configs", "--sass", *flag]  # fmt: skip
        proc = subprocess.run(cmd, env={**env, "OUT": str(out)}, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"toy_registers.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        info = json.loads((out / "toy_registers.json").read_text())
        (row,) = [r for r in info["table"] if r["fused"]]
        runs[info["fast_sincos"]] = row["loop_instructions"] - row["loop_skipped"], row["loop_skipped"]
    (fast, fast_skipped), (exact, exact_skipped) = runs[True], runs[False]
    assert fast_skipped == 0 and exact_skipped > 100
    assert fast < 0.9 * exact, runs
