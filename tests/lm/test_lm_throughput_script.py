"""The GPT-2 part of the GPU playbook (``benchmarks/gpu_followups.sh lm``) runs end to end on the CPU
with a tiny model, so that a session with a GPU does not spend its minutes on a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


def test_throughput_script_on_cpu(synthetic_data, tmp_path):
    out = tmp_path / "out"  # not created beforehand: the script makes it
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCHMARKS / "lm_throughput.py"), "--model", "tiny", "--device", "cpu",
           "--no-compile", "--dtype", "float32", "--steps", "1", "--warmup", "1", "--opt-reps", "2",
           "--variants", "b64-chunkce-cdt", "--data-dir", str(synthetic_data)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"lm_throughput.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    info = json.loads((out / "lm_throughput.json").read_text())
    (variant,) = info["variants"]
    assert "error" not in variant, variant  # the script reports a failing variant instead of raising
    assert variant["tok_per_s"] > 0 and 0 < variant["mfu"] < 1
    steps = {r["optimizer"]: r for r in info["optimizers"]}
    assert {"focus fused", "focus foreach", "adamw fused", "adamw foreach"} <= set(steps)
    for name, row in steps.items():
        assert "error" not in row and row["step_ms"] > 0, (name, row)
