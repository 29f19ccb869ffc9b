"""``--fused-eval`` on a device its Triton kernel cannot run on: refused at startup with one line
(not a Triton traceback from the first test pass), while Triton's CPU interpreter
(``TRITON_INTERPRET=1``) still runs it end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from focus_optim.cli import main
from focus_optim.mnist.model import EnsembleMLP

GRID = ["--optimizers", "adamw", "--batch-sizes", "4", "--lrs", "1e-3", "--replicates", "1", "--steps", "2"]


def run_args(out: Path, data_dir: Path) -> list[str]:
    return ["mnist", "run", "--out", str(out), "--data-dir", str(data_dir), "--no-verify", "--no-progress",
            "--device", "cpu", "--workers", "1", *GRID]  # fmt: skip


def test_cli_refuses_fused_eval_on_cpu_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, idx_dir_session: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "f"
    code = main([*run_args(out, idx_dir_session), "--fused-eval", "--eval-precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "focus-optim mnist run: error: fused_eval (--fused-eval) needs"
    )
    assert "a CUDA device with Triton" in err and "TRITON_INTERPRET=1" in err and "not device 'cpu'" in err
    assert not out.exists()  # refused before the results directory was made


def test_fused_eval_available(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    from focus_optim.mnist.scan import fused_eval_available

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not fused_eval_available("cpu")
    assert fused_eval_available("cuda") and fused_eval_available("cuda:1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not fused_eval_available("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert fused_eval_available("cpu")


def test_fused_test_pass_on_cpu_without_interpreter_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library call (``train_cell(fused_eval=True)`` ends here) says what it needs instead of
    failing inside Triton's launcher."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = EnsembleMLP(2).eval()
    x_t, labels = torch.rand(784, 8), torch.zeros(8, dtype=torch.int64)
    with pytest.raises(
        ValueError, match=r"runs on a CUDA device, or under TRITON_INTERPRET=1 .* not on device 'cpu'"
    ):
        model.evaluate(x_t, labels, precision="bf16", fused=True)


def test_cli_fused_eval_in_interpreter_still_runs(tmp_path: Path, idx_dir_session: Path) -> None:
    """Under ``TRITON_INTERPRET=1`` (set before Triton is imported, hence the subprocess) the startup
    check lets a CPU scan with ``--fused-eval`` through, and it completes."""
    pytest.importorskip("triton")
    out = tmp_path / "interp"
    args = [*run_args(out, idx_dir_session), "--fused-eval", "--eval-precision", "bf16"]
    code = textwrap.dedent(
        f"""
        import sys
        from focus_optim.cli import main
        sys.exit(main({args!r}))
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 cell computed" in res.stdout
