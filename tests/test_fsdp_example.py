"""``examples/fsdp_train.py`` under torchrun (2 gloo ranks): a run stopped at a checkpoint and
started again with the same command continues exactly as the uninterrupted run; one with other
settings is refused before anything is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fsdp_train.py"


def _launch(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(EXAMPLE), "--out", str(out), "--steps", str(steps), "--save-every", "10", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _run(out: Path, steps: int, *extra: str) -> str:
    done = _launch(out, steps, *extra)
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


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_other_settings_are_refused_before_loading_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(out, 10, "--optimizer", "focus")
    settings = json.loads((out / "latest.json").read_text())["settings"]
    assert settings["optimizer"] == "focus" and settings["hyperparameters"]["lr"] == 3e-3
    assert settings["model"]["preset"] == "tiny" and settings["model"]["n_layer"] == 2
    before = _snapshot(out)
    gamma_lr = (
        "hyperparameters.gamma: stored 0.1, this run 0.2; hyperparameters.lr: stored 0.003, this run 0.001"
    )
    cases = [
        (["--optimizer", "muon", "--lr", "0.02"], "(optimizer: stored 'focus', this run 'muon')"),
        (["--optimizer", "focus:gamma=0.2", "--lr", "1e-3"], f"({gamma_lr})"),
    ]
    for extra, diff in cases:
        done = _launch(out, 20, *extra)
        assert done.returncode != 0
        errors = [line for line in done.stderr.splitlines() if line.startswith("fsdp_train.py: error:")]
        assert errors == [
            f"fsdp_train.py: error: {out} holds a checkpoint (step 10) of other settings {diff}; "
            "use a new --out to start this run (or the stored settings to resume that one)"
        ], done.stderr[-3000:]
        assert "Missing key" not in done.stderr and "resumed" not in done.stdout
        assert _snapshot(out) == before  # nothing loaded, trained or written
    # the stored settings, spelt out (gamma=0.1 is focus's default), resume
    assert "resumed at step 10" in _run(out, 12, "--optimizer", "focus:gamma=0.1", "--lr", "3e-3")
    assert [r["step"] for r in map(json.loads, (out / "loss.jsonl").read_text().splitlines())] == [
        *range(1, 13)
    ]
