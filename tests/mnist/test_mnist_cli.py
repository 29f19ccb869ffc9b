"""`focus-optim mnist run|plot` end to end on tiny grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mnist_helpers import real_mnist_dir

from focus_optim import load_results
from focus_optim.cli import main

TINY = ["--batch-sizes", "4", "8", "--num-lrs", "2", "--replicates", "2", "--steps", "3", "--eval-every", "3"]


def run_args(out: Path, data_dir: Path) -> list[str]:
    return ["mnist", "run", "--out", str(out), "--data-dir", str(data_dir), "--no-verify", "--no-progress"]


def test_run_and_plot_tiny_grid(tmp_path: Path, idx_dir_session: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = run_args(out, idx_dir_session)
    assert main([*args, *TINY, "--device", "cpu", "--workers", "1", "--plot"]) == 0
    text = capsys.readouterr().out
    assert "4 cells computed" in text and "I_Signum (%)" in text
    for name in ("fig2c.png", "fig2c.pdf", "fig2d.png", "fig2d.pdf", "summary.json", "summary.txt"):
        assert (out / "figures" / name).stat().st_size > 0
    summary = json.loads((out / "figures" / "summary.json").read_text())
    assert summary["batch_sizes"] == [4, 8] and set(summary["optimizers"]) == {"adamw", "signum"}
    ds = load_results(out)
    assert ds["history"].shape == (2, 2, 2, 2, 3, 3)
    assert json.loads(ds.attrs["config"])["data"].startswith("unverified:")
    # resume: nothing left to do; plot again into another directory
    assert main([*args, *TINY, "--device", "cpu", "--workers", "1"]) == 0
    assert "0 cells computed, 4 already there" in capsys.readouterr().out
    assert main(["mnist", "plot", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "fig2c.png").exists()


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["mnist", "run", "--out", str(tmp_path / "x"), "--optimizers", "adamw", "nope"]) == 2
    assert "Unknown optimizer 'nope'" in capsys.readouterr().err
    missing = tmp_path / "no-data"
    missing.mkdir()
    code = main(["mnist", "run", "--out", str(tmp_path / "y"), "--data-dir", str(missing), "--shard", "3/2"])
    assert code == 2 and "Invalid shard 3/2" in capsys.readouterr().err


def test_cli_refuses_cuda_graphs_off_cuda_before_any_work(
    tmp_path: Path, idx_dir_session: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "g"
    code = main(["mnist", "run", "--out", str(out), "--device", "cpu", "--cuda-graphs", *TINY,
                 "--data-dir", str(idx_dir_session), "--no-verify"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "cuda_graphs needs eager cells on a CUDA device, not device 'cpu'" in err
    assert not out.exists()
    code = main(["mnist", "run", "--out", str(out), "--device", "cpu", "--cuda-graphs", "--compile", *TINY,
                 "--data-dir", str(idx_dir_session), "--no-verify"])  # fmt: skip
    assert code == 2 and "not compile='default'" in capsys.readouterr().err


def test_cli_refuses_fused_eval_without_bf16_before_any_work(
    tmp_path: Path, idx_dir_session: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "f"
    code = main(["mnist", "run", "--out", str(out), "--device", "cpu", "--fused-eval", *TINY,
                 "--data-dir", str(idx_dir_session), "--no-verify"])  # fmt: skip
    assert code == 2 and "fused_eval needs eval_precision 'bf16', not 'fp32'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--lrs", "nan"], "Invalid lrs: (nan,)"),
        (["--lrs", "inf"], "Invalid lrs: (inf,)"),
        (["--lrs", "0.01", "0.01"], "Invalid lrs: (0.01, 0.01)"),
        (
            ["--batch-sizes", "100000"],
            "Invalid batch_sizes: (100000,) (allowed: distinct integers in 2 .. 60000, the training",
        ),
        (["--batch-sizes", "4", "4"], "Invalid batch_sizes: (4, 4)"),
        (["--batch-sizes", "256"], "Invalid batch_sizes: 256 exceeds the 200 training images"),
    ],
)
def test_cli_refuses_bad_grids_before_creating_the_store(
    tmp_path: Path, idx_dir_session: Path, capsys: pytest.CaptureFixture, override: list[str], message: str
) -> None:
    """A refused command leaves no store behind, which would block the corrected command."""
    out = tmp_path / "r"
    code = main([*run_args(out, idx_dir_session), *TINY, *override, "--device", "cpu", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"focus-optim mnist run: error: {message}")
    assert not out.exists()


@pytest.mark.skipif(real_mnist_dir() is None, reason="../shared/data/mnist not present")
def test_run_on_real_mnist_one_cell(tmp_path: Path) -> None:
    out = tmp_path / "real"
    args = [
        "mnist",
        "run",
        "--out",
        str(out),
        "--data-dir",
        str(real_mnist_dir()),
        "--no-progress",
        "--device",
        "cpu",
    ]
    tiny = [
        "--optimizers",
        "signum",
        "--batch-sizes",
        "32",
        "--lrs",
        "1e-3",
        "--replicates",
        "2",
        "--steps",
        "20",
    ]
    assert main([*args, *tiny, "--eval-every", "20"]) == 0
    ds = load_results(out)
    assert json.loads(ds.attrs["config"])["data"] == "mnist"
    final = ds["history"].sel(metric="test_acc").isel(step=-1).values
    assert final.shape == (1, 1, 1, 2) and (final > 0.5).all()  # 20 steps of signum: well above chance


def test_plot_of_a_partial_store_without_a_batch_size_both_optimizers_finished(
    tmp_path: Path, idx_dir_session: Path, capsys: pytest.CaptureFixture
) -> None:
    """A killed or sharded scan can hold AdamW at one batch size and Signum at another only:
    ``plot`` still draws 2c and an empty 2d, and writes the summary with the missing cells n/a."""
    import numpy as np

    out = tmp_path / "run"
    args = run_args(out, idx_dir_session)
    assert main([*args, *TINY, "--device", "cpu", "--workers", "1"]) == 0
    for cell in (out / "cells").glob("*.npz"):
        with np.load(cell, allow_pickle=False) as z:
            coords = json.loads(str(z["__meta__"]))["coords"]
        if (coords["optimizer"], coords["batch_size"]) in {("adamw", 8), ("signum", 4)}:
            cell.unlink()
    capsys.readouterr()
    assert main(["mnist", "plot", str(out), "--out", str(tmp_path / "figs")]) == 0
    for name in ("fig2c.png", "fig2d.png", "summary.json", "summary.txt"):
        assert (tmp_path / "figs" / name).stat().st_size > 0
    summary = json.loads((tmp_path / "figs" / "summary.json").read_text())
    assert summary["batch_sizes"] == [4, 8] and not summary.get("complete", False)
