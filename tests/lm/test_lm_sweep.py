"""``focus-optim lm sweep``: optimizer x lr x seed training runs through the one sweep runner."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
import torch
from lm_helpers import kill_after_batches, records, tiny_config

from focus_optim.cli import main
from focus_optim.lm.model import GPT
from focus_optim.lm.sweep import eval_steps, sweep
from focus_optim.lm.train import train

OPTS = ["adamw:betas=(0.9,0.95),weight_decay=0.1", "focus:betas=(0.9,0.99),gamma=0.2,weight_decay=0.2"]
LRS = [3e-3, 1e-2]
SHAPE = ("max_steps=8", "eval_interval=4", "ckpt_interval=2")


def base(data, tmp_path):
    return tiny_config(data, tmp_path / "unused", *SHAPE)


def run_dir(out, label, lr, rep=0):
    return out / "runs" / f"{label}_lr{lr:g}_r{rep}"


def test_each_run_equals_a_direct_training_run(synthetic_data, tmp_path) -> None:
    ds = sweep(base(synthetic_data, tmp_path), OPTS, LRS, tmp_path / "sw", progress=False)
    assert ds.attrs["complete"] and ds.attrs["runs_computed"] == 4
    assert ds["point"].values.tolist() == [0, 4, 8] == eval_steps(base(synthetic_data, tmp_path))
    assert json.loads(ds.attrs["config"])["point_label"] == "step"  # the x axis of compare's plot
    args = {"betas": [0.9, 0.99], "gamma": 0.2, "weight_decay": 0.2}
    direct = tiny_config(
        synthetic_data, tmp_path / "direct", *SHAPE, optimizer="focus", lr=1e-2, optimizer_args=args
    )
    summary = train(direct)
    cell = {"optimizer": OPTS[1], "lr": 1e-2, "replicate": 0}
    assert float(ds["metrics"].sel(**cell, metric="val_loss")) == np.float32(summary["val_loss"])
    curve = [r["val_loss"] for r in records(tmp_path / "direct", "val")]
    np.testing.assert_array_equal(ds["curves"].sel(**cell, curve="val_curve").values, np.float32(curve))
    assert float(ds["metrics"].sel(**cell, metric="best_val_loss")) == np.float32(min(curve))
    # the runs differ where they should: optimizer and lr reach the trainer
    losses = ds["metrics"].sel(replicate=0, metric="val_loss").values
    assert len(np.unique(losses)) == 4 and bool(np.isfinite(losses).all())
    assert float(ds["metrics"].sel(**cell, metric="val_loss")) < float(ds["curves"].sel(**cell, point=0.0)[0])


def test_a_killed_sweep_resumes_inside_the_interrupted_run(synthetic_data, tmp_path, monkeypatch) -> None:
    full = sweep(base(synthetic_data, tmp_path), OPTS, LRS, tmp_path / "full", progress=False)
    restore = kill_after_batches(monkeypatch, 5 * 2)  # the first run dies fetching step 6 (checkpoint at 4)
    with pytest.raises(KeyboardInterrupt):
        sweep(base(synthetic_data, tmp_path), OPTS, LRS, tmp_path / "cut", progress=False)
    restore()
    assert not list((tmp_path / "cut" / "cells").glob("*.npz"))
    again = sweep(base(synthetic_data, tmp_path), OPTS, LRS, tmp_path / "cut", progress=False)
    assert again.attrs["runs_computed"] == 4
    first = run_dir(tmp_path / "cut", OPTS[0], LRS[0])
    assert "resume" in [r["event"] for r in records(first, "event")]  # continued, not restarted
    losses = ["val_loss", "best_val_loss"]  # (train_time is a wall time)
    np.testing.assert_array_equal(again["metrics"].sel(metric=losses), full["metrics"].sel(metric=losses))
    np.testing.assert_array_equal(again["curves"], full["curves"])
    rerun = sweep(base(synthetic_data, tmp_path), OPTS, LRS, tmp_path / "cut", progress=False)
    assert rerun.attrs["runs_computed"] == 0


def test_under_torchrun_each_rank_trains_its_own_runs(synthetic_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    ds = sweep(base(synthetic_data, tmp_path), OPTS, LRS, tmp_path / "sw", progress=False)
    assert ds.attrs["cells_done"] == 2 and not ds.attrs["complete"]  # rank 1 of 2: every other run
    assert os.environ["WORLD_SIZE"] == "2" and os.environ["RANK"] == "1"  # restored after each run


def test_local_workers_train_the_same_runs(synthetic_data, tmp_path) -> None:
    one = sweep(base(synthetic_data, tmp_path), OPTS, LRS[:1], tmp_path / "one", progress=False)
    two = sweep(base(synthetic_data, tmp_path), OPTS, LRS[:1], tmp_path / "two", workers=2, progress=False)
    losses = ["val_loss", "best_val_loss"]
    np.testing.assert_array_equal(two["metrics"].sel(metric=losses), one["metrics"].sel(metric=losses))
    np.testing.assert_array_equal(two["curves"], one["curves"])


def test_a_diverged_run_is_stored_as_inf(synthetic_data, tmp_path, monkeypatch) -> None:
    real_forward, calls = GPT.forward, {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        out = real_forward(self, idx, targets, **kw)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 5 * 2:
                return out * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)
    ds = sweep(base(synthetic_data, tmp_path), OPTS[:1], LRS[:1], tmp_path / "sw", progress=False)
    m = ds["metrics"].isel(optimizer=0, lr=0, replicate=0)
    assert math.isinf(float(m.sel(metric="val_loss")))
    curve = ds["curves"].isel(optimizer=0, lr=0, replicate=0, curve=0).values
    assert np.isfinite(curve[:2]).all() and np.isnan(curve[2])  # evaluated at 0 and 4, stopped at 6
    assert float(m.sel(metric="best_val_loss")) == curve[:2].min()


def test_cli_sweep_and_its_errors(synthetic_data, tmp_path, capsys) -> None:
    cfg = tmp_path / "base.toml"
    cfg.write_text(
        f'model = "tiny"\ndata_dir = {json.dumps(str(synthetic_data))}\nbatch_size = 4\ngrad_accum = 2\n'
        'max_steps = 4\nwarmup_steps = 1\ndtype = "float32"\neval_interval = 2\neval_sequences = 8\n'
        'device = "cpu"\ntensorboard = false\n'
    )
    argv = [
        "lm",
        "sweep",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "o"),
        "--lrs",
        "1e-3",
        "--no-progress",
    ]
    assert main([*argv, "--optimizers", "adamw", "signum"]) == 0
    out = capsys.readouterr().out
    assert "2/2 runs stored" in out and "adamw: best lr 0.001" in out
    assert main([*argv, "--optimizers", "focus:lr=1"]) == 2
    assert "reserved hyperparameter(s) lr (lr is swept (--lrs)" in capsys.readouterr().err
    assert main([*argv, "--optimizers", "focus:gama=1"]) == 2
    assert "valid for focus:" in capsys.readouterr().err
    assert main([*argv, "--optimizers", "adamw", "adamw"]) == 2
    assert "Duplicate optimizer label 'adamw'" in capsys.readouterr().err
    assert main([*argv, "--optimizers", "adamw", "--set", "bogus=1"]) == 2
    assert "Unknown config key 'bogus'; valid: data_dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer_args.foo=1", r"--set optimizer_args\.foo=1: lm sweep sets optimizer_args for each run"),
        ("out_dir=/x", r"--set out_dir=/x: lm sweep sets out_dir for each run \(from OUT/runs/"),
        ("lr=1e-2", r"--set lr=1e-2: lm sweep sets lr for each run \(from --lrs\)"),
        (
            "optimizer=lion",
            r"--set optimizer=lion: lm sweep sets optimizer for each run \(from --optimizers\)",
        ),
        ("name=x", r"--set name=x: lm sweep sets name for each run"),
        ("optimizer_args=5", r"Invalid optimizer_args: 5"),  # the config's own checks come first
    ],
)
def test_cli_sweep_refuses_overrides_each_run_replaces(synthetic_data, tmp_path, capsys, override, message):
    cfg = tmp_path / "base.toml"  # a quick run: without the check, the sweep would train it and say 0
    cfg.write_text(
        f'model = "tiny"\ndata_dir = {json.dumps(str(synthetic_data))}\nbatch_size = 2\nmax_steps = 1\n'
        'dtype = "float32"\neval_sequences = 2\ndevice = "cpu"\ntensorboard = false\n'
    )
    argv = ["lm", "sweep", "--config", str(cfg), "--set", override, "--out", str(tmp_path / "o")]
    argv += ["--lrs", "1e-3", "--optimizers", "adamw", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()  # refused before anything was trained or written
