"""focus_optim.compare: optimizers on a user's own problem through the one sweep runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

xr = pytest.importorskip("xarray")

from focus_optim.compare import Trial, best_lr, compare, plot  # noqa: E402

STEPS = 150


def _problem() -> tuple[torch.Tensor, torch.Tensor, float]:
    gen = torch.Generator().manual_seed(1234)  # the problem: the same for every run
    a = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(64, generator=gen, dtype=torch.float64)
    optimum = float(((a @ torch.linalg.lstsq(a, y).solution - y) ** 2).mean())
    return a, y, optimum


A, Y, OPTIMUM = _problem()


def least_squares(trial: Trial) -> dict[str, object]:
    """Fit w to a fixed, well-conditioned least-squares problem."""
    torch.manual_seed(trial.seed)  # the run: init depends on the replicate only
    w = torch.nn.Parameter(0.1 * torch.randn(8, dtype=torch.float64))
    opt = trial.make_optimizer([w])
    curve = []
    for _ in range(STEPS):
        loss = ((A @ w - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    with torch.no_grad():
        final = float(((A @ w - Y) ** 2).mean())
    return {"loss": final, "w_sum": float(w.detach().sum()), "seed": trial.seed, "curve": np.array(curve)}


def init_only(trial: Trial) -> dict[str, float]:
    torch.manual_seed(trial.seed)
    return {"init": float(torch.randn(()))}


OPTS = {"adamw": {"weight_decay": 0.0}, "focus-g0": {"optimizer": "focus", "gamma": 0.0, "weight_decay": 0.0}}
LRS = [1e-3, 1e-2, 1e-1]


def run(out, **kw):
    args = dict(replicates=2, metrics=["loss", "w_sum", "seed"], progress=False)
    args.update(kw)
    return compare(least_squares, OPTS, LRS, out=out, **args)


def same_runs(a, b) -> None:
    """Equal stored values, coordinates and completeness (attributes such as timings aside)."""
    xr.testing.assert_identical(
        a[["metrics", "cell_done"]].drop_attrs(), b[["metrics", "cell_done"]].drop_attrs()
    )


def test_stored_runs_equal_direct_calls_and_adamw_reaches_the_optimum(tmp_path) -> None:
    ds = run(tmp_path / "c")
    assert ds.attrs["complete"] and ds.attrs["runs_computed"] == 12
    for label, hp in OPTS.items():
        hp = dict(hp)
        name = hp.pop("optimizer", label)
        for lr in LRS:
            for rep in range(2):
                direct = least_squares(Trial(label, name, hp, lr, rep, rep, "cpu"))
                got = ds["metrics"].sel(optimizer=label, lr=lr, replicate=rep)
                for metric in ("loss", "w_sum"):
                    assert float(got.sel(metric=metric)) == np.float32(direct[metric])
    seeds = ds["metrics"].sel(metric="seed")
    assert (seeds.sel(replicate=1) == 1).all() and (seeds.sel(replicate=0) == 0).all()
    table = best_lr(ds, "loss")
    assert float(table["best"].sel(optimizer="adamw")) == pytest.approx(OPTIMUM, rel=1e-5)  # lstsq's optimum
    # The lr reaches the optimizer: 150 steps of 1e-3 from a random start stop well short of it.
    assert float(table["mean"].sel(optimizer="adamw", lr=1e-3)) > 1.05 * OPTIMUM
    assert float(table["best_lr"].sel(optimizer="adamw")) > 1e-3


def test_paired_seeds_give_every_optimizer_the_same_start(tmp_path) -> None:
    ds = compare(init_only, ["adamw", "lion", "focus"], [1e-3, 1e-2], out=tmp_path / "p",
                 replicates=3, metrics=["init"], progress=False)  # fmt: skip
    init = ds["metrics"].sel(metric="init", drop=True)
    for rep in range(3):
        vals = init.sel(replicate=rep).values
        assert np.all(vals == vals.flat[0])
    assert len(np.unique(init.values)) == 3


class FakeClock:
    """``perf_counter`` for ``compare`` alone: only the trials move it, so the recorded times are
    exact and a stall of the shared box cannot change them."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_each_run_records_its_wall_time(tmp_path, capsys, monkeypatch) -> None:
    import json
    import types

    import focus_optim.compare as compare_module
    from focus_optim.cli import main

    clock = FakeClock()
    monkeypatch.setattr(compare_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))

    def timed(trial: Trial) -> dict[str, float]:
        clock.now += (2.0 if trial.optimizer == "focus" else 0.5) + trial.replicate * trial.lr
        return {"loss": trial.lr}

    ds = compare(timed, ["adamw", "focus"], LRS, out=tmp_path / "t", replicates=2, progress=False)
    sec = ds["seconds"]
    assert sec.dims == ("optimizer", "lr", "replicate")
    for opt, base in (("adamw", 0.5), ("focus", 2.0)):
        want = [[base + rep * lr for rep in range(2)] for lr in LRS]
        np.testing.assert_allclose(sec.sel(optimizer=opt).values, want, rtol=1e-6)  # stored as float32
    assert main(["compare", "summary", str(tmp_path / "t"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["optimizers"]
    assert rows["focus"]["seconds"] == pytest.approx(float(sec.sel(optimizer="focus", lr=LRS[0]).mean()))


def test_best_lr_matches_an_independent_numpy_selection(tmp_path) -> None:
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(2, 3, 4)).astype(np.float32)
    vals[0, 1, 2] = np.inf  # a diverged replicate: that lr cannot be best
    vals[1, :, 0] = np.nan  # a NaN replicate everywhere: no best lr for that optimizer

    def fixed(trial: Trial) -> dict[str, float]:
        i = 0 if trial.label == "adamw" else 1
        return {"loss": float(vals[i, LRS.index(trial.lr), trial.replicate])}

    ds = compare(fixed, ["adamw", "focus"], LRS, out=tmp_path / "b", replicates=4, progress=False)
    for mode in ("min", "max"):
        t = best_lr(ds, "loss", mode=mode)
        mean = vals[0].mean(axis=1)
        score = np.where(np.isfinite(mean), mean if mode == "min" else -mean, np.inf)
        j = int(np.argmin(score))
        assert j != 1
        assert float(t["best_lr"].sel(optimizer="adamw")) == LRS[j]
        assert float(t["best"].sel(optimizer="adamw")) == pytest.approx(float(mean[j]), rel=1e-6)
        assert float(t["best_std"].sel(optimizer="adamw")) == pytest.approx(
            float(vals[0, j].std(ddof=1)), rel=1e-5
        )
        assert np.isnan(float(t["best_lr"].sel(optimizer="focus")))
    with pytest.raises(ValueError, match="Unknown metric 'acc'; stored: loss"):
        best_lr(ds, "acc")


def test_killed_comparison_resumes_and_equals_uninterrupted(tmp_path) -> None:
    full = run(tmp_path / "full")
    part = run(tmp_path / "resumed", max_runs=5)
    assert part.attrs["runs_computed"] == 5 and not part.attrs["complete"]
    again = run(tmp_path / "resumed")
    assert again.attrs["runs_computed"] == 7 and again.attrs["runs_skipped"] == 5
    same_runs(full, again)


def test_shards_fill_one_store_like_a_single_process(tmp_path, monkeypatch) -> None:
    full = run(tmp_path / "full")
    run(tmp_path / "sharded", shard="0/2")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: the shard comes from RANK/WORLD_SIZE
    monkeypatch.setenv("RANK", "1")
    second = run(tmp_path / "sharded")
    assert second.attrs["runs_computed"] == 6 and second.attrs["complete"]
    same_runs(full, second)


def threads_seen(trial: Trial) -> dict[str, float]:
    return {"threads": torch.get_num_threads()}


def test_workers_get_one_thread_each_unless_told(tmp_path) -> None:
    kw = dict(metrics=["threads"], workers=2, progress=False)
    ds = compare(threads_seen, ["adamw"], LRS, out=tmp_path / "a", **kw)
    assert (ds["metrics"] == 1).all()  # two processes x torch's default threads would oversubscribe
    ds = compare(threads_seen, ["adamw"], LRS, out=tmp_path / "b", threads=2, **kw)
    assert (ds["metrics"] == 2).all()


def test_local_workers_equal_one_process(tmp_path) -> None:
    full = run(tmp_path / "full")
    pool = run(tmp_path / "pool", workers=2)
    same_runs(full, pool)
    with pytest.raises(ValueError, match="must be importable by name"):
        compare(lambda t: {"loss": 0.0}, ["adamw"], LRS, out=tmp_path / "lambda", workers=2, progress=False)
    assert not (tmp_path / "lambda").exists()


def test_changed_problem_refuses_the_old_store(tmp_path) -> None:
    run(tmp_path / "c", config={"steps": STEPS})
    with pytest.raises(ValueError, match=r"different configuration.*config\.user"):
        run(tmp_path / "c", config={"steps": 2 * STEPS})
    with pytest.raises(ValueError, match="different configuration"):
        compare(least_squares, {"adamw": {"weight_decay": 0.1}}, LRS, out=tmp_path / "c", replicates=2,
                metrics=["loss", "w_sum", "seed"], config={"steps": STEPS}, progress=False)  # fmt: skip


def test_curves_are_stored_and_plotted(tmp_path) -> None:
    ds = run(tmp_path / "c", curves=["curve"], points=STEPS)
    c = ds["curves"].sel(curve="curve")
    assert c.dims == ("optimizer", "lr", "replicate", "point") and c.sizes["point"] == STEPS
    direct = least_squares(Trial("adamw", "adamw", {"weight_decay": 0.0}, 1e-2, 1, 1, "cpu"))["curve"]
    np.testing.assert_array_equal(
        c.sel(optimizer="adamw", lr=1e-2, replicate=1).values, direct.astype(np.float32)
    )
    written = plot(ds, "loss", tmp_path / "fig" / "compare")
    assert sorted(p.suffix for p in written) == [".pdf", ".png"] and all(
        p.stat().st_size > 1000 for p in written
    )


@pytest.mark.parametrize(
    ("optimizers", "kwargs", "match"),
    [
        (["adamz"], {}, "Unknown optimizer 'adamz'; available: .*adamw"),
        ({"focus": {"gama": 0.2}}, {}, "Unknown hyperparameter.*gama; valid: .*gamma"),
        ({"f": {"optimizer": "focus", "betas": (0.9, 2.0)}}, {}, r"optimizer 'f': Invalid betas\[1\]: 2.0"),
        ({"x": {"optimizer": "focus", "lr": 1.0}}, {}, "through lrs="),
        (["adamw"], {"lrs": [0.0]}, "Invalid lrs"),
        (["adamw"], {"lrs": [1e-3, 1e-3]}, "distinct"),
        (["adamw"], {"replicates": 0}, "Invalid replicates"),
        (["adamw"], {"replicates": 2.5}, "Invalid replicates"),
        (["adamw"], {"metrics": []}, "Invalid metrics"),
        (["adamw"], {"curves": ["c"], "points": 0}, "Invalid curves"),
        (["adamw"], {"lrs": 1e-3, "metrics": 7}, r"Invalid metrics: 7 \(allowed: a list of names\)"),
        (["adamw"], {"lrs": "1e-3"}, r"Invalid lrs: '1e-3' \(allowed: a list of numbers\)"),
        (["adamw"], {"curves": ["c"], "points": "10"}, r"Invalid points: '10'"),
        (["adamw"], {"config": {"data": object()}}, r"Invalid config of sweep 'compare'.*JSON values"),
        (["adamw"], {"max_runs": -1}, r"Invalid max_runs: -1 \(allowed: an integer >= 0, or None for all\)"),
        (["adamw"], {"max_runs": 2.0}, r"Invalid max_runs: 2\.0 \(allowed: an integer >= 0"),
        (["adamw"], {"threads": -1}, r"Invalid threads: -1 \(allowed: an integer >= 1, or None"),
        (["adamw"], {"threads": 0}, r"Invalid threads: 0 \(allowed: an integer >= 1, or None"),
        (["adamw"], {"workers": "2"}, r"Invalid workers: '2' \(allowed: an integer >= 1\)"),
        (
            ["adamw"],
            {"base_seed": "x"},
            r"Invalid base_seed: 'x' \(allowed: an integer in 0 \.\. 2\*\*63 - 1",
        ),
        (["adamw"], {"base_seed": -1}, r"Invalid base_seed: -1 \(allowed: an integer in 0 \.\. 2\*\*63 - 1"),
        (["adamw"], {"base_seed": 2**63}, r"Invalid base_seed: 9223372036854775808 \(allowed"),
        (["adamw"], {"base_seed": 1.5}, r"Invalid base_seed: 1\.5"),
    ],
)
def test_bad_input_is_named_before_any_run(tmp_path, optimizers, kwargs, match) -> None:
    args = {"lrs": LRS, "replicates": 1, "metrics": ["loss"], **kwargs}
    with pytest.raises(ValueError, match=match):
        compare(least_squares, optimizers, args.pop("lrs"), out=tmp_path / "c", progress=False, **args)
    assert not (tmp_path / "c").exists()


def test_a_single_name_or_lr_is_a_list_of_one(tmp_path) -> None:
    """``metrics="loss"`` is one metric (not the letters l, o, s, s), ``lrs=1e-2`` one lr."""
    ds = compare(
        least_squares, ["adamw"], 1e-2, out=tmp_path / "c", replicates=1, metrics="loss", progress=False
    )
    assert list(ds["metric"].values) == ["loss"] and list(ds["lr"].values) == [1e-2]
    assert ds.attrs["complete"]


def test_lrs_given_in_any_order_plot_left_to_right_and_tie_to_the_smallest(tmp_path) -> None:
    def flat(trial: Trial) -> dict[str, float]:
        return {"loss": 1.0 if trial.lr > 1e-3 else 2.0}  # a tie between 1e-2 and 1e-1

    lrs = [1e-1, 1e-3, 1e-2]
    ds = compare(flat, ["adamw"], lrs, out=tmp_path / "c", replicates=1, metrics=["loss"], progress=False)
    assert float(best_lr(ds, "loss")["best_lr"].sel(optimizer="adamw")) == 1e-2
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    drawn = []
    original = plt.Axes.plot

    def record(self, x, *args, **kwargs):
        drawn.append(np.asarray(x, dtype=float))
        return original(self, x, *args, **kwargs)

    plt.Axes.plot = record
    try:
        plot(ds, "loss", tmp_path / "c" / "compare")
    finally:
        plt.Axes.plot = original
    assert drawn and all(np.all(np.diff(x) > 0) for x in drawn if x.size > 1)


def test_a_run_that_omits_a_metric_is_named_and_nothing_is_stored(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"train\(adamw, lr=0.001, replicate=0\) returned no accuracy"):
        run(tmp_path / "c", metrics=["loss", "accuracy"])
    assert not list((tmp_path / "c" / "cells").glob("*.npz"))
    with pytest.raises(ValueError, match=r"curve .curve. .* has 150 points, expected 10"):
        run(tmp_path / "d", curves=["curve"], points=10)
    with pytest.raises(ValueError, match=r"returned float, not a dict of metrics"):
        compare(lambda trial: 0.5, OPTS, LRS, out=tmp_path / "e", metrics=["loss"], progress=False)
    assert not list((tmp_path / "e" / "cells").glob("*.npz"))


def test_the_corrected_command_reuses_the_store_a_failed_first_run_left(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"returned no accuracy"):  # nothing stored, only a manifest
        run(tmp_path / "c", metrics=["loss", "accuracy"], replicates=1)
    fixed = run(tmp_path / "c", replicates=1)  # the same --out, the metrics corrected
    assert fixed.attrs["cells_done"] == fixed.attrs["cells_total"] == 6
    same_runs(fixed, run(tmp_path / "new", replicates=1))
    with pytest.raises(ValueError, match=r"holds results of a different configuration"):
        run(tmp_path / "c", metrics=["loss"], replicates=1)  # once results are stored: refused


def test_the_example_template_runs_resumes_and_plots(tmp_path, capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "compare_own_problem.py"
    spec = importlib.util.spec_from_file_location("compare_own_problem", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--out", str(tmp_path / "c"), "--steps", "20", "--lrs", "1e-3", "1e-2", "--replicates", "1",
            "--optimizers", "adamw", "focus", "--no-progress", "--plot"]  # fmt: skip
    assert example.main([*argv, "--shard", "0/2"]) == 0  # one cluster job of two: no table yet
    out = capsys.readouterr().out
    assert "2/4 runs stored" in out and "when every shard is done" in out and "best lr" not in out
    assert example.main(argv) == 0  # the rest, then the table and the plot
    out = capsys.readouterr().out
    assert "4/4 runs stored" in out and out.count("best lr") == 2
    assert (tmp_path / "c" / "compare.png").stat().st_size > 1000
    cells = {p: p.stat().st_mtime_ns for p in (tmp_path / "c" / "cells").glob("*.npz")}
    assert len(cells) == 4
    example.main(argv)  # the same command again: nothing is recomputed
    assert {p: p.stat().st_mtime_ns for p in cells} == cells


def test_cli_summarises_and_plots_the_union_of_shards(tmp_path, capsys) -> None:
    import json

    from focus_optim.cli import main

    run(tmp_path / "a", shard="0/2")
    run(tmp_path / "b", shard="1/2")  # another directory, e.g. another cluster job's scratch
    assert main(["compare", "summary", str(tmp_path / "a"), "--json"]) == 0
    half = json.loads(capsys.readouterr().out)
    assert half["runs"] == [6, 12] and half["metric"] == "loss"
    done = run(tmp_path / "a", shard="0/2")["cell_done"]  # nothing left to run: just the store
    for label, row in half["optimizers"].items():  # an lr with runs still missing is not ranked
        complete = [lr for lr in LRS if bool(done.sel(optimizer=label, lr=lr).all())]
        assert row["best_lr"] in complete if complete else row["best_lr"] is None
    assert main(["compare", "summary", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    table = best_lr(run(tmp_path / "full"), "loss")
    assert both["runs"] == [12, 12]
    for label, row in both["optimizers"].items():
        assert row["best_lr"] == float(table["best_lr"].sel(optimizer=label))
        assert row["loss"] == float(table["best"].sel(optimizer=label))
    assert main(["compare", "summary", str(tmp_path / "full"), "--metric", "w_sum", "--mode", "max"]) == 0
    assert "best lr by the mean w_sum (max)" in capsys.readouterr().out
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(["compare", "plot", *dirs, "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert main(["compare", "summary", str(tmp_path / "full"), "--metric", "acc"]) == 2
    assert "Unknown metric 'acc'; stored: loss, w_sum, seed" in capsys.readouterr().err


def diverges(trial: Trial) -> dict[str, float]:
    return {"loss": float("inf")}


def _strict_json(text: str) -> dict:
    import json

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)  # (json.loads alone accepts NaN and Infinity)


def test_cli_summary_of_a_store_with_no_ranked_lr_is_strict_json_and_says_why(tmp_path, capsys) -> None:
    from focus_optim.cli import main

    run(tmp_path / "a", shard="0/6")  # one replicate of the smallest lr of each optimizer
    assert main(["compare", "summary", str(tmp_path / "a"), "--json"]) == 0
    summary = _strict_json(capsys.readouterr().out)
    assert summary["runs"] == [2, 12]
    none = {"best_lr": None, "loss": None, "std": None, "seconds": None}
    assert summary["optimizers"] == {"adamw": none, "focus-g0": none}
    assert main(["compare", "summary", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "compare: 2/12 runs stored; best lr by the mean loss (min)"
    assert [line.split() for line in lines[1:]] == [
        [label, "no", "lr", "has", "all", "its", "replicates", "stored", "yet"] for label in OPTS
    ]
    assert "nan" not in "\n".join(lines)

    # every lr stored, every run diverged: also no best lr, for another reason
    compare(diverges, ["adamw"], LRS, out=tmp_path / "d", replicates=2, metrics=["loss"], progress=False)
    run(tmp_path / "ok", replicates=1)  # and an ordinary store, for the mix of both
    assert main(["compare", "summary", str(tmp_path / "d"), "--json"]) == 0
    row = _strict_json(capsys.readouterr().out)["optimizers"]["adamw"]
    assert row["best_lr"] is None and row["loss"] is None
    assert main(["compare", "summary", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "adamw  every lr with all its replicates stored diverged (non-finite loss)" in out
    assert main(["compare", "summary", str(tmp_path / "ok"), "--json"]) == 0
    rows = _strict_json(capsys.readouterr().out)["optimizers"]
    assert all(r["best_lr"] in LRS and r["std"] == 0.0 and r["loss"] > 0 for r in rows.values())


@pytest.mark.parametrize(
    "content", [b"[]", b"null", b'{"a": 1}', b'{"name": "compare", "config": {}}', b'{"name": "\xff"}']
)
def test_cli_names_a_malformed_manifest_and_leaves_the_store_alone(tmp_path, capsys, content) -> None:
    from focus_optim.cli import main

    run(tmp_path / "c", max_runs=1)
    manifest = tmp_path / "c" / "manifest.json"
    manifest.write_bytes(content)
    before = {p: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    for command in ("summary", "plot"):
        assert main(["compare", command, str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"focus-optim compare {command}: error: {manifest} is corrupt: ")
    with pytest.raises(ValueError, match=f"{manifest} is corrupt: "):
        run(tmp_path / "c")
    assert {p: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()} == before


def test_cli_runs_a_training_function_by_name(tmp_path, capsys) -> None:
    from pathlib import Path

    from focus_optim.cli import main

    # module:function (this test module is importable by name) equals the Python API
    opts = ["adamw:weight_decay=0.0", "focus:gamma=0.0,weight_decay=0.0"]  # = OPTS
    args = ["--optimizers", *opts, "--lrs", *map(str, LRS), "--metrics", "loss", "w_sum", "seed",
            "--replicates", "2", "--no-progress"]  # fmt: skip
    assert main(["compare", "run", "test_compare:least_squares", "--out", str(tmp_path / "m"), *args]) == 0
    assert "12/12 runs stored" in capsys.readouterr().out
    from focus_optim import load_results

    cli = load_results(tmp_path / "m")["metrics"].sel(metric="loss").values
    api = run(tmp_path / "api")["metrics"].sel(metric="loss").values
    np.testing.assert_array_equal(cli, api)
    # path/to/file.py:function, here the template's train (500 steps, one run per optimizer)
    example = Path(__file__).resolve().parents[1] / "examples" / "compare_own_problem.py"
    argv = ["compare", "run", f"{example}:train", "--optimizers", "adamw", "--lrs", "1e-3", "--replicates",
            "1", "--metrics", "val_loss", "--out", str(tmp_path / "f"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    import compare_own_problem as template  # importable now: its folder is on sys.path

    direct = template.train(Trial("adamw", "adamw", {}, 1e-3, 0, 0, "cpu"))
    got = load_results(tmp_path / "f")["metrics"].sel(metric="val_loss").values.item()
    assert got == np.float32(direct["val_loss"])
    for target, message in [
        ("nocolon", "Invalid target 'nocolon'"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("test_compare:nope", "has no function 'nope'"),
        (f"{tmp_path}/missing.py:f", "no such file"),
    ]:
        assert main(["compare", "run", target, "--out", str(tmp_path / "e"), *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["compare", "run", "test_compare:least_squares", "--out", str(tmp_path / "e"),
                 *args[:1], "focus:lr=1", *args[3:]]) == 2  # fmt: skip
    assert "lr is swept (--lrs)" in capsys.readouterr().err
    assert main(["compare", "run", "test_compare:least_squares", "--out", str(tmp_path / "e"),
                 *args[:1], "adamw", "adamw", *args[3:]]) == 2  # fmt: skip
    assert "Invalid --optimizers: 'adamw' twice" in capsys.readouterr().err


def test_cli_threads_reach_the_training_function(tmp_path, capsys) -> None:
    from focus_optim import load_results
    from focus_optim.cli import main

    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            argv = ["compare", "run", "test_compare:threads_seen", "--optimizers", "adamw", "--lrs", "1e-3",
                    "--replicates", "1", "--metrics", "threads", "--threads", str(threads),
                    "--out", str(tmp_path / f"t{threads}"), "--no-progress"]  # fmt: skip
            assert main(argv) == 0
            assert load_results(tmp_path / f"t{threads}")["metrics"].values.item() == threads
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "run", "test_compare:threads_seen", "--optimizers", "adamw", "--lrs", "1e-3",
              "--metrics", "threads", "--out", str(tmp_path / "x"), "--threads", "0"])  # fmt: skip
    assert exit_.value.code == 2 and "--threads: 0 (allowed: an integer >= 1)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
