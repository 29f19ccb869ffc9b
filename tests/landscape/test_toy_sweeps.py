"""The toy figures' sweeps through focus_optim.sweep: store layout, resume, refusal, shards,
batching, the analysis, the CLI and the section-4 regret check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from focus_optim import load_results
from focus_optim.cli import main
from focus_optim.landscape import analysis as A
from focus_optim.landscape import figures as F
from focus_optim.landscape import regret
from focus_optim.sweep import Shard, run_sweep

xr = pytest.importorskip("xarray")

TINY = F.Grid(
    sharpness=[0.3, 30.0],
    weight_decay=[0.0, 0.3],
    noise=[0.0, 2.5],
    lr=[0.003, 0.03, 0.3],
    replicates=3,
    steps=60,
)
RUN = F.RunOptions(compile=False)


class Counting:
    """The figure's compute function, counting the cells it is asked for."""

    def __init__(self, spec):
        self.inner = F.make_compute(spec, RUN)
        self.cells: list[str] = []

    def __call__(self, cells, device):
        self.cells += [c.key for c in cells]
        return self.inner(cells, device)


def spec_2a(**grid):
    return F.phase_spec("2a", "quick", grid=F.Grid(**{**TINY.__dict__, **grid}))


def sweep(spec, out, **kw):
    compute = Counting(spec)
    kw.setdefault("batch_cells", 1)
    report = run_sweep(spec, compute, out, device="cpu", group_by=("optimizer",), progress=False, **kw)
    return report, compute


def cells_of(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted((path / "cells").glob("*.npz")):
        with np.load(f) as z:
            out[f.stem] = z["metrics"]
    return out


def test_store_loads_with_labeled_dims(tmp_path: Path) -> None:
    spec = spec_2a()
    report, _ = sweep(spec, tmp_path / "s")
    assert report.computed == 6
    ds = load_results(tmp_path / "s")
    assert ds["metrics"].dims == ("optimizer", "sharpness", "noise", "lr", "replicate", "metric")
    assert list(ds["optimizer"].values) == ["adamw", "signum", "focus"]
    assert list(ds["metric"].values) == ["final_loss", "min_loss", "max_u"]
    np.testing.assert_allclose(ds["sharpness"].values, TINY.sharpness)
    np.testing.assert_allclose(ds["lr"].values, TINY.lr)
    assert ds.attrs["complete"] and json.loads(ds.attrs["config"])["weight_decay"] == 0.1
    m = ds["metrics"]
    assert np.isfinite(m).all()
    assert (m.sel(metric="min_loss") <= m.sel(metric="final_loss")).all()
    b = F.phase_spec("2b", "quick", grid=TINY)
    assert "weight_decay" in b.outer and b.config["sharpness"] == 10.0


def test_resume_after_kill_recomputes_nothing_and_equals_uninterrupted(tmp_path: Path) -> None:
    spec = spec_2a()
    full, _ = sweep(spec, tmp_path / "full")
    killed, first = sweep(spec, tmp_path / "resumed", max_cells=2)
    assert killed.computed == 2
    resumed, second = sweep(spec, tmp_path / "resumed")
    assert resumed.skipped == 2 and resumed.computed == full.computed - 2
    assert not set(first.cells) & set(second.cells)
    stamps = {f: f.stat().st_mtime_ns for f in (tmp_path / "resumed" / "cells").glob("*.npz")}
    again, third = sweep(spec, tmp_path / "resumed")
    assert again.computed == 0 and third.cells == []
    assert stamps == {f: f.stat().st_mtime_ns for f in (tmp_path / "resumed" / "cells").glob("*.npz")}
    a, b = cells_of(tmp_path / "full"), cells_of(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_changed_configuration_refuses(tmp_path: Path) -> None:
    sweep(spec_2a(), tmp_path / "s", max_cells=1)
    for changed in (spec_2a(steps=61), spec_2a(noise=[0.0, 2.0]), F.phase_spec("6l", "quick", grid=TINY)):
        with pytest.raises(ValueError, match="different configuration"):
            sweep(changed, tmp_path / "s")


def test_shards_and_batches_union_equals_single_run(tmp_path: Path) -> None:
    spec = spec_2a()
    sweep(spec, tmp_path / "single")
    for i in range(3):  # three shards into one directory ...
        sweep(spec, tmp_path / "shared", shard=Shard(i, 3))
    for i in range(2):  # ... and two shards in separate directories, batched
        sweep(spec, tmp_path / f"part{i}", shard=Shard(i, 2), batch_cells=3)
    single = load_results(tmp_path / "single")
    for other in (load_results(tmp_path / "shared"), load_results([tmp_path / "part0", tmp_path / "part1"])):
        assert other.attrs["complete"]
        np.testing.assert_array_equal(other["metrics"].values, single["metrics"].values)


def test_packed_cells_equal_cells_alone(tmp_path: Path) -> None:
    """The GPU layout (cells packed into shared chunks) stores the same numbers (on CPU here)."""
    spec = spec_2a()
    cells = [c for c in spec.cells() if c.coords["optimizer"] == "focus"]
    together = F.make_compute(spec, F.RunOptions(compile=False, pack_cells=True))(cells, "cpu")
    alone = [F.make_compute(spec, RUN)([c], "cpu")[0] for c in cells]
    for t, a in zip(together, alone):
        assert np.array_equal(t["metrics"], a["metrics"])


def test_kernels_auto_takes_the_triton_step_on_cuda_only(monkeypatch) -> None:
    from focus_optim.landscape import simulate as S
    from focus_optim.landscape.cli import resolve_kernels

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(S, "kernels_available", lambda device: True)
    assert resolve_kernels("auto", "auto", cuda) == "separate"
    assert resolve_kernels("auto", "off", cuda) == "separate"
    assert resolve_kernels("auto", "on", cuda) == "off"  # the compiled step, as asked
    assert resolve_kernels("auto", "auto", cpu) == "off"  # never the interpreter unasked
    assert resolve_kernels("fused", "auto", cpu) == "fused"  # (available: the interpreter, say)
    assert resolve_kernels("off", "auto", cuda) == "off"
    with pytest.raises(ValueError, match="--kernels with --compile on"):
        resolve_kernels("separate", "on", cuda)
    monkeypatch.setattr(S, "kernels_available", lambda device: False)
    assert resolve_kernels("auto", "auto", cuda) == "off"  # no Triton: the tensor code
    with pytest.raises(ValueError, match="Invalid --kernels on cuda"):
        resolve_kernels("fused", "auto", cuda)


def test_run_options_reach_the_simulator() -> None:
    want = dict(compile=True, chunk_rows=512, threads=1, pack_cells=True, fixed_order=False, steps_per_call=5)
    opts = F._sim_options(spec_2a(), F.RunOptions(**want), "cpu", record=False)
    assert {k: getattr(opts, k) for k in want} == want
    want = dict(kernels=True, fuse_update=True, chunk_rows=256, steps_per_launch=7)
    opts = F._sim_options(spec_2a(), F.RunOptions(**want), "cpu", record=False)
    assert {k: getattr(opts, k) for k in want} == want


def test_analysis_picks_best_lr_by_mean_and_treats_divergence_as_worst() -> None:
    vals = np.zeros((2, 1, 1, 3, 4, 3))  # optimizer, sharpness, noise, lr, replicate, metric
    vals[0, 0, 0, :, :, 0] = [[1, 1, 1, 1], [0.5, 0.5, 0.5, 0.6], [np.inf, -9, -9, -9]]
    vals[1, 0, 0, :, :, 0] = [[2, 2, 2, 2], [0.7, 0.7, 0.7, 0.7], [0.4, 0.4, 0.4, 0.4]]
    ds = xr.Dataset(
        {
            "metrics": (("optimizer", "sharpness", "noise", "lr", "replicate", "metric"), vals),
            "cell_done": (("optimizer", "sharpness"), np.ones((2, 1), bool)),
        },
        coords={
            "optimizer": ["adamw", "signum"],
            "sharpness": [1.0],
            "noise": [0.0],
            "lr": [0.1, 0.2, 0.3],
            "replicate": range(4),
            "metric": ["final_loss", "min_loss", "max_u"],
        },
    )
    best, lr = A.best_lr(ds)
    assert lr.sel(optimizer="adamw").item() == 0.2 and best.sel(optimizer="adamw").item() == pytest.approx(
        0.525
    )
    assert lr.sel(optimizer="signum").item() == 0.3
    assert A.winners(ds).item() == 1
    assert A.pairwise(ds, "adamw", "signum").item() == 0.0
    # every lr of signum diverged: +inf (it loses to a finite adamw), no lr; not "missing"
    ds["metrics"].loc[dict(optimizer="signum", replicate=0)] = np.nan
    best, lr = A.best_lr(ds)
    assert best.sel(optimizer="signum").item() == np.inf and np.isnan(lr.sel(optimizer="signum").item())
    assert A.winners(ds).item() == 0 and A.pairwise(ds, "adamw", "signum").item() == 1.0
    # a cell not computed yet is missing
    ds["cell_done"].loc[dict(optimizer="signum")] = False
    assert np.isnan(A.best_lr(ds)[0].sel(optimizer="signum").item()) and A.winners(ds).item() == -1


def test_cli_quick_run_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The README's main job on an even smaller grid, plus Figures 1c and 4 with few steps."""
    monkeypatch.setitem(F.GRIDS, "quick", TINY)
    monkeypatch.setitem(F.TRAJECTORY, "steps", 30)
    monkeypatch.setitem(F.LOSS_CURVES, "steps", 40)
    out = tmp_path / "toy-quick"
    assert (
        main(["toy", "run", "--figure", "2a", "--preset", "quick", "--out", str(out), "--device", "cpu"]) == 0
    )
    assert (
        main(
            [
                "toy",
                "run",
                "--figure",
                "5",
                "1c",
                "4",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
                "--compile",
                "off",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "0 cells computed, 6 already stored" in text  # 5 needs 2a (done) and 2b
    assert main(["toy", "plot", str(out)]) == 0
    for name in ("fig2", "fig5", "fig1c", "fig4"):
        for ext in ("png", "pdf"):
            assert (out / "plots" / f"{name}.{ext}").stat().st_size > 1000
    summary = json.loads((out / "plots" / "summary.json").read_text())
    assert set(summary) == {"2a", "2b"}
    ds = load_results(out / "fig1c")
    assert ds["theta"].dims == ("optimizer", "replicate", "step", "coord") and ds.sizes["step"] == 31
    assert main(["toy", "run", "--figure", "2a", "--out", str(out), "--optimizers", "adamw"]) == 2  # refuses
    assert main(["toy", "plot", str(tmp_path / "nothing-here")]) == 2
    with pytest.raises(SystemExit) as exc:  # argparse's usage error, before any work
        main(["toy", "run", "--figure", "2a", "--out", str(tmp_path / "k"), "--steps-per-call", "0"])
    assert exc.value.code == 2 and "--steps-per-call: 0 (allowed: an integer >= 1)" in capsys.readouterr().err
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kernels = ["toy", "run", "--figure", "2a", "--out", str(tmp_path / "k"), "--device", "cpu", "--kernels"]
    assert main(kernels) == 2  # the Triton step needs CUDA (or the interpreter): refused before any work
    capsys.readouterr()
    assert main([*kernels, "--compile", "on"]) == 2
    assert "--kernels" in capsys.readouterr().err
    assert main([*kernels, "fused"]) == 2
    assert "--kernels on cpu" in capsys.readouterr().err
    assert main([*kernels[:-1], "--steps-per-launch", "5"]) == 2  # only with --kernels fused
    err = capsys.readouterr().err
    assert "Invalid --steps-per-launch: 5 (allowed: an integer >= 1, with --kernels fused)" in err
    assert not (tmp_path / "k").exists()


@pytest.mark.slow
def test_quick_preset_shows_the_phase_structure(tmp_path: Path) -> None:
    """The real quick grid of Figure 2a (about 15 s on one core) reproduces the paper's picture."""
    spec = F.phase_spec("2a", "quick")
    F.run_figure(spec, F.RunOptions(device="cpu", threads=1), tmp_path / "q", progress=False)
    checks = A.phase_checks(load_results(tmp_path / "q"))
    assert checks and all(checks.values()), checks


def test_regret_slope_is_minus_one_half(tmp_path: Path) -> None:
    res = regret.run(steps=3000, sequences=16)
    assert -0.6 < res.slope < -0.42, res.slope
    assert np.all(np.diff(res.avg_regret) < 0)
    from focus_optim.landscape.plots import figure_regret

    assert [p.suffix for p in figure_regret(res, tmp_path)] == [".png", ".pdf"]


def test_fig6_scaled_variant_is_6r_with_a_per_transverse_direction() -> None:
    """``6rs`` is Figure 6 right's sweep on the same 100-D valley with a = 10 / 99, a store of its own."""
    r, rs = F.phase_spec("6r", "quick"), F.phase_spec("6rs", "quick")
    assert rs.config["landscape"] == r.config["landscape"] and len(r.config["landscape"]["axis"]) == 100
    assert r.config["sharpness"] == 10.0
    assert rs.config["sharpness"] == pytest.approx(10.0 / 99, rel=1e-15)
    assert rs.outer == r.outer and rs.inner == r.inner and rs.name != r.name
    assert F.figure("6rs").store != F.figure("6r").store and "6rs" not in F.SUITE


@pytest.mark.parametrize("optimizers", [["focus", "focus"], ["adam", "adamw"], ["signum", "signum"]])
def test_cli_refuses_a_repeated_optimizer_before_any_store(tmp_path: Path, capsys, optimizers) -> None:
    """A repeated optimizer would be a repeated coordinate of the store (which then cannot be plotted);
    ``signum signum`` is refused for Figure 4 too, although that figure leaves signum out."""
    out = tmp_path / "o"
    for figure in ("2a", "4"):
        args = ["toy", "run", "--figure", figure, "--optimizers", *optimizers, "--out", str(out)]
        assert main([*args, "--device", "cpu", "--max-cells", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"focus-optim toy run: error: Invalid optimizers: {optimizers} (each at most once" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="each at most once"):
        F.phase_spec("2b", "quick", ["focus", "adamw", "focus"], grid=TINY)


@pytest.mark.parametrize(
    "content", [b"[]", b'"x"', b"null", b'{"config": 5}', b'{"name": "toy-2a", "config": {"figure": "2a"}}']
)
def test_cli_names_a_malformed_manifest_and_leaves_the_store_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, content: bytes
) -> None:
    monkeypatch.setitem(F.GRIDS, "quick", TINY)
    out = tmp_path / "o"
    run = ["toy", "run", "--figure", "2a", "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main([*run, "--max-cells", "1"]) == 0
    manifest = out / "fig2a" / "manifest.json"
    manifest.write_bytes(content)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    for args in (run, ["toy", "plot", str(out)], ["toy", "plot", str(out / "fig2a")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"focus-optim toy {args[1]}: error: {manifest} is corrupt: "), err
        assert "Traceback" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
