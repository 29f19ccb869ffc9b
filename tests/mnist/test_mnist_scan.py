"""The scan on the project's sweep runner: presets, resume after a kill, shard union, local workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from focus_optim import load_results
from focus_optim.mnist.optimizers import PAPER_OPTIMIZERS, parse_optimizer
from focus_optim.mnist.scan import PRESETS, ScanConfig, lr_grid, run_scan, sweep_spec
from focus_optim.sweep import Shard

TINY = ScanConfig(
    optimizers=("adamw", "signum"),
    batch_sizes=(4, 8),
    lrs=(1e-3, 1e-2),
    replicates=2,
    steps=4,
    eval_every=2,
)


def _run(out: Path, data: Path, **kw) -> object:
    return run_scan(TINY, out, data_dir=data, verify=False, progress=False, device="cpu", **kw)


def _history(*dirs: Path) -> np.ndarray:
    ds = load_results(dirs[0] if len(dirs) == 1 else list(dirs))
    assert ds.attrs["complete"]
    return ds["history"].values


def test_paper_preset_is_appendix_a2() -> None:
    p = PRESETS["paper"]
    assert p.optimizers == PAPER_OPTIMIZERS == ("adamw", "signum", "focus:gamma=0.2", "focus:gamma=0.4")
    assert p.batch_sizes == tuple(2**k for k in range(1, 13))
    np.testing.assert_allclose(p.lrs, np.logspace(-4, 0, 20))
    assert (p.replicates, p.steps, p.weight_decay, p.eval_every) == (3, 400, 1e-2, 1)
    assert parse_optimizer("focus:gamma=0.4").hparams == {"betas": (0.9, 0.99), "gamma": 0.4}
    assert parse_optimizer("adamw").hparams == {"betas": (0.9, 0.999)}
    assert parse_optimizer("signum").hparams == {"momentum": 0.9}
    spec = sweep_spec(p)
    assert list(spec.outer) == ["optimizer", "batch_size"] and list(spec.inner) == ["lr", "replicate"]
    assert spec.variables == {"history": ("step", "metric")} and len(spec.cells()) == 48
    assert p.members == 60


def test_config_errors_list_valid_keys() -> None:
    with pytest.raises(ValueError, match=r"Unknown scan config key.*valid: optimizers"):
        TINY.replace(step=3)
    with pytest.raises(ValueError, match="Unknown optimizer 'nope'"):
        TINY.replace(optimizers=("nope",))
    with pytest.raises(ValueError, match=r"unknown or scanned hyperparameter.*gama"):
        parse_optimizer("focus:gama=0.2")
    with pytest.raises(ValueError, match="scanned"):
        parse_optimizer("adamw:lr=0.1")
    assert parse_optimizer("focus:betas=(0.9,0.95),decay_mode=reference").hparams == {
        "betas": (0.9, 0.95),
        "gamma": 0.2,
        "decay_mode": "reference",
    }
    assert len(lr_grid(20)) == 20 and lr_grid(3) == (1e-4, 1e-2, 1.0)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lrs": (float("nan"),)}, r"Invalid lrs: \(nan,\) \(allowed: a non-empty list of distinct finite"),
        ({"lrs": (1e-3, float("inf"))}, r"Invalid lrs: \(0\.001, inf\)"),
        ({"lrs": (0.01, 0.01)}, r"Invalid lrs: \(0\.01, 0\.01\) \(allowed: .*distinct"),
        ({"lrs": (-0.1,)}, r"Invalid lrs: \(-0\.1,\)"),
        (
            {"batch_sizes": (100000,)},
            r"Invalid batch_sizes: \(100000,\) \(allowed: distinct integers in 2 \.\. 60000, the training",
        ),
        ({"batch_sizes": (4, 4)}, r"Invalid batch_sizes: \(4, 4\) \(allowed: distinct"),
        ({"batch_sizes": (1, 4)}, r"Invalid batch_sizes: \(1, 4\)"),
        ({"batch_sizes": (4.5,)}, r"Invalid batch_sizes: \(4\.5,\)"),
    ],
)
def test_bad_grids_are_refused_by_the_config(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TINY.replace(**changes)


@pytest.mark.parametrize(
    ("batch_sizes", "match"),
    [
        ((4, 256), r"Invalid batch_sizes: 256 exceeds the 200 training images in .* \(allowed: 2 \.\. 200\)"),
        ((199,), r"Invalid batch_sizes: 199 leaves a last batch of 1 of the 200 training images"),
    ],
)
def test_batch_sizes_beyond_the_loaded_data_are_refused_before_the_store(
    tmp_path: Path, idx_dir_session: Path, batch_sizes: tuple[int, ...], match: str
) -> None:
    cfg = TINY.replace(batch_sizes=batch_sizes)
    with pytest.raises(ValueError, match=match):
        run_scan(cfg, tmp_path / "s", data_dir=idx_dir_session, verify=False, progress=False, device="cpu")
    assert not (tmp_path / "s").exists()


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path, idx_dir_session: Path) -> None:
    full = _run(tmp_path / "full", idx_dir_session)
    assert full.computed == 4
    killed = _run(tmp_path / "resumed", idx_dir_session, max_cells=1)  # the "kill" after one cell
    assert killed.computed == 1 and not load_results(tmp_path / "resumed").attrs["complete"]
    resumed = _run(tmp_path / "resumed", idx_dir_session)
    assert (resumed.computed, resumed.skipped) == (3, 1)
    np.testing.assert_array_equal(_history(tmp_path / "resumed"), _history(tmp_path / "full"))
    again = _run(tmp_path / "resumed", idx_dir_session)
    assert (again.computed, again.skipped) == (0, 4)


def test_shard_union_equals_whole(tmp_path: Path, idx_dir_session: Path) -> None:
    _run(tmp_path / "full", idx_dir_session)
    r0 = _run(tmp_path / "s0", idx_dir_session, shard=Shard(0, 2))
    r1 = _run(tmp_path / "s1", idx_dir_session, shard=Shard(1, 2))
    assert r0.computed + r1.computed == 4 and r0.computed == 2
    np.testing.assert_array_equal(_history(tmp_path / "s0", tmp_path / "s1"), _history(tmp_path / "full"))
    ds = load_results(tmp_path / "s0")
    assert not ds.attrs["complete"] and ds.attrs["cells_done"] == 2


def test_changed_config_refuses_old_store(tmp_path: Path, idx_dir_session: Path) -> None:
    _run(tmp_path / "a", idx_dir_session, max_cells=1)
    with pytest.raises(ValueError, match="different configuration"):
        run_scan(
            TINY.replace(eval_every=1), tmp_path / "a", data_dir=idx_dir_session, verify=False, progress=False
        )


def test_local_workers_fill_one_store(tmp_path: Path, idx_dir_session: Path) -> None:
    _run(tmp_path / "full", idx_dir_session)
    report = run_scan(
        TINY,
        tmp_path / "w",
        workers=2,
        device="cpu",
        data_dir=idx_dir_session,
        verify=False,
        progress=False,
        threads=1,
    )
    assert (report.computed, report.skipped) == (4, 0)
    np.testing.assert_array_equal(_history(tmp_path / "w"), _history(tmp_path / "full"))
