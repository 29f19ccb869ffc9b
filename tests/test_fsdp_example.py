"""``examples/fsdp_train.py`` under torchrun (2 gloo ranks): a run stopped at a checkpoint and
started again with the same command continues exactly as the uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fsdp_train.py"


def _run(out: Path, steps: int, *extra: str) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(EXAMPLE), "--out", str(out), "--steps", str(steps), "--save-every", "10", *extra]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "loss.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("optimizer", ["focus", "muon"])
def test_resumed_run_equals_uninterrupted(tmp_path: Path, optimizer: str) -> None:
    lr = "0.02" if optimizer == "muon" else "3e-3"
    _run(tmp_path / "whole", 30, "--optimizer", optimizer, "--lr", lr)
    _run(tmp_path / "cut", 20, "--optimizer", optimizer, "--lr", lr)
    assert "resumed at step 20" in _run(tmp_path / "cut", 30, "--optimizer", optimizer, "--lr", lr)

    whole, cut = _losses(tmp_path / "whole"), _losses(tmp_path / "cut")
    assert [s for s, _ in whole] == list(range(1, 31))
    assert cut == whole
    assert whole[-1][1] < whole[0][1]
    assert sorted(p.name for p in (tmp_path / "cut").glob("ckpt-*")) == ["ckpt-30"]  # older ones removed
