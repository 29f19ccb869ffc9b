"""The sweep runner and results store: resume, refusal, shards, batching, corruption."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from focus_optim.sweep import Shard, Store, SweepSpec, load_results, parse_shard, run_sweep

xr = pytest.importorskip("xarray")


def make_spec(**config):
    return SweepSpec(
        name="demo",
        outer={"optimizer": ["adamw", "focus"], "sharpness": [0.1, 1.0, 10.0]},
        inner={"lr": [1e-3, 1e-2], "replicate": [0, 1, 2]},
        variables={"value": ("metric",), "curve": ("step",)},
        extra_coords={"metric": ["final", "min"], "step": [0, 1, 2, 3]},
        config={"steps": 4, **config},
        seed=7,
    )


class Counting:
    """A deterministic compute function (depends only on the cell seed) that counts its calls."""

    def __init__(self):
        self.cells = []

    def __call__(self, cells, device):
        out = []
        for c in cells:
            self.cells.append(c.key)
            rng = np.random.default_rng(c.seed)
            out.append({"value": rng.normal(size=(2, 3, 2)), "curve": rng.normal(size=(2, 3, 4))})
        return out


def test_resume_recomputes_nothing_and_equals_uninterrupted(tmp_path):
    spec = make_spec()
    first = Counting()
    rep = run_sweep(spec, first, tmp_path / "a", max_cells=2, progress=False)  # a "killed" run
    assert rep.computed == 2 and len(first.cells) == 2
    assert rep.remaining == 4 and "4 cells left: run the same command again" in rep.remaining_note()
    second = Counting()
    rep = run_sweep(spec, second, tmp_path / "a", progress=False)
    assert rep.skipped == 2 and rep.computed == 4 and rep.remaining == 0 and rep.remaining_note() == ""
    assert not set(first.cells) & set(second.cells)
    third = Counting()
    run_sweep(spec, third, tmp_path / "a", progress=False)
    assert third.cells == []
    run_sweep(spec, Counting(), tmp_path / "b", progress=False)
    a, b = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    assert a.attrs["complete"] and b.attrs["complete"]
    xr.testing.assert_identical(a, b)
    assert not list((tmp_path / "a" / "cells").glob("*.tmp*"))


def test_a_write_killed_midway_is_recomputed_and_its_temp_file_ignored(tmp_path, monkeypatch):
    spec = make_spec()
    run_sweep(spec, Counting(), tmp_path / "a", max_cells=2, progress=False)

    def dies_midway(f, **arrays):  # the process dies after writing some bytes of a cell
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(np, "savez", dies_midway)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, Counting(), tmp_path / "a", progress=False)
    # a stray temp file as an older version named them (".<key>.<pid>.tmp.npz"), e.g. after SIGKILL
    (tmp_path / "a" / "cells" / ".1-2.999.tmp.npz").write_bytes(b"PK\x03\x04 torn")
    partial = load_results(tmp_path / "a")
    assert int(partial.attrs["cells_done"]) == 2
    again = Counting()
    run_sweep(spec, again, tmp_path / "a", progress=False)
    assert len(again.cells) == 4  # the torn cell was not stored, so it is computed again
    run_sweep(spec, Counting(), tmp_path / "b", progress=False)
    xr.testing.assert_identical(load_results(tmp_path / "a"), load_results(tmp_path / "b"))


def test_changed_configuration_refuses_with_clear_error(tmp_path):
    run_sweep(make_spec(), Counting(), tmp_path, max_cells=1, progress=False)
    with pytest.raises(ValueError, match=r"different configuration.*config\.steps"):
        run_sweep(make_spec(steps=5), Counting(), tmp_path, progress=False)
    run_sweep(
        make_spec(model={"width": 8, "depth": 2}), Counting(), tmp_path / "n", max_cells=1, progress=False
    )
    with pytest.raises(ValueError, match=r"differs in config\.model\.width: stored 8, this run 9\)"):
        run_sweep(make_spec(model={"width": 9, "depth": 2}), Counting(), tmp_path / "n", progress=False)


def fails_before_storing(cells, device):
    raise ValueError("train returned no val_acc")


def test_a_store_with_no_cells_takes_a_new_configuration(tmp_path, capsys, monkeypatch):
    """A sweep that failed before storing anything leaves only a manifest: the corrected command
    takes the store over (nothing is lost), and a store with any cell still refuses it."""
    with pytest.raises(ValueError, match="no val_acc"):
        run_sweep(make_spec(), fails_before_storing, tmp_path / "a", progress=False)
    manifest = tmp_path / "a" / "manifest.json"
    old = manifest.read_bytes()
    assert json.loads(old) == make_spec().manifest()
    assert not list((tmp_path / "a" / "cells").iterdir())

    # a failed write of the new manifest leaves the old one whole, and no temp file
    def fails(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr("os.replace", fails)
        with pytest.raises(OSError, match="disk full"):
            run_sweep(make_spec(steps=5), Counting(), tmp_path / "a", progress=False)
    assert manifest.read_bytes() == old
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["cells", "manifest.json"]
    capsys.readouterr()

    rep = run_sweep(make_spec(steps=5), Counting(), tmp_path / "a", progress=False)
    assert rep.computed == 6 and rep.skipped == 0
    assert json.loads(manifest.read_text()) == make_spec(steps=5).manifest()
    err = capsys.readouterr().err
    assert "held no results; its configuration is replaced by this run's" in err
    assert "config.steps: stored 4, this run 5" in err
    run_sweep(make_spec(steps=5), Counting(), tmp_path / "b", progress=False)
    xr.testing.assert_identical(load_results(tmp_path / "a"), load_results(tmp_path / "b"))

    # now it holds cells: a changed configuration is refused as ever, and nothing is touched
    new = manifest.read_bytes()
    cells = {p: p.read_bytes() for p in (tmp_path / "a" / "cells").iterdir()}
    with pytest.raises(ValueError, match=r"holds results of a different configuration.*config\.steps"):
        run_sweep(make_spec(steps=6), Counting(), tmp_path / "a", progress=False)
    assert manifest.read_bytes() == new
    assert {p: p.read_bytes() for p in (tmp_path / "a" / "cells").iterdir()} == cells


def test_a_run_whose_empty_store_was_taken_over_stores_no_cell(tmp_path):
    """Two runs of different configurations started into one empty store: the one whose manifest
    was replaced is refused its cells instead of mixing them with the other's."""
    old_spec = make_spec()
    first = Store(tmp_path, old_spec).open()
    Store(tmp_path, make_spec(steps=5)).open()  # takes the empty store over
    cell = old_spec.cells()[0]
    result = {"value": np.zeros((2, 3, 2)), "curve": np.zeros((2, 3, 4))}
    with pytest.raises(ValueError, match=r"now holds a different configuration .* cell 0-0 is not stored"):
        first.write(cell, result, {})
    assert not list((tmp_path / "cells").iterdir())


def test_a_changed_grid_is_shown_stored_against_this_run(tmp_path):
    """The refusal says what each changed key held and now holds, so that a respelt setting (e.g.
    an optimizer spec) is found at once; long grids are cut."""
    run_sweep(make_spec(), Counting(), tmp_path, max_cells=1, progress=False)
    spec = make_spec()
    spec.outer = {**spec.outer, "optimizer": ["adamw", "focus:gamma=.2"]}
    with pytest.raises(ValueError) as err:
        run_sweep(spec, Counting(), tmp_path, progress=False)
    shown = "outer.optimizer: stored ['adamw', 'focus'], this run ['adamw', 'focus:gamma=.2']"
    assert shown in str(err.value)
    spec.outer = {**spec.outer, "sharpness": [float(i) for i in range(1000)]}
    with pytest.raises(ValueError, match=r"this run \[0\.0, 1\.0, [^]]* \.\.\.\]\)") as err:
        run_sweep(spec, Counting(), tmp_path, progress=False)
    assert len(str(err.value)) < 800


def test_results_without_their_manifest_are_not_resumed(tmp_path):
    run_sweep(make_spec(), Counting(), tmp_path, max_cells=1, progress=False)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"holds results \(.*\.npz, \.\.\.\) but no manifest\.json"):
        run_sweep(make_spec(steps=5), Counting(), tmp_path, progress=False)


def test_a_config_that_is_not_json_is_named():
    with pytest.raises(ValueError, match=r"Invalid config of sweep 'demo': .*PosixPath.*JSON values"):
        make_spec(data=Path("/tmp")).manifest()


def test_shards_creating_one_store_at_once_never_crash(tmp_path):
    """Array jobs on different nodes may share a pid: threads of one process do, and race to write
    the manifest. Exactly one creates it; every one then sees it whole."""
    spec = make_spec()
    for trial in range(40):
        errors: list[BaseException] = []
        store = tmp_path / f"t{trial}"

        def open_store(store=store, errors=errors):
            try:
                Store(store, spec).open()
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"trial {trial}: {errors}"
        assert json.loads((store / "manifest.json").read_text()) == spec.manifest()
        assert [p.name for p in store.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_shards_and_batches_give_the_single_run_store(tmp_path):
    spec = make_spec()
    run_sweep(spec, Counting(), tmp_path / "single", progress=False)
    for i in range(3):
        run_sweep(spec, Counting(), tmp_path / "sharded", shard=Shard(i, 3), progress=False)
    run_sweep(spec, Counting(), tmp_path / "batched", batch_cells=3, group_by=("optimizer",), progress=False)
    single = load_results(tmp_path / "single")
    xr.testing.assert_identical(single, load_results(tmp_path / "sharded"))
    xr.testing.assert_identical(single, load_results(tmp_path / "batched"))


def test_partial_store_loads_with_nans_and_union_of_directories(tmp_path):
    spec = make_spec()
    run_sweep(spec, Counting(), tmp_path / "x", shard=Shard(0, 2), progress=False)
    run_sweep(spec, Counting(), tmp_path / "y", shard=Shard(1, 2), progress=False)
    part = load_results(tmp_path / "x")
    assert not part.attrs["complete"] and part.attrs["cells_done"] == 3
    assert np.isnan(part["value"].sel(optimizer="adamw", sharpness=1.0)).all()
    union = load_results([tmp_path / "x", tmp_path / "y"])
    assert union.attrs["complete"]
    assert union["value"].dims == ("optimizer", "sharpness", "lr", "replicate", "metric")
    assert list(union["metric"].values) == ["final", "min"]


def test_batches_respect_group_by(tmp_path):
    seen = []

    def compute(cells, device):
        seen.append({c.coords["optimizer"] for c in cells})
        return Counting()(cells, device)

    run_sweep(make_spec(), compute, tmp_path, batch_cells=10, group_by=("optimizer",), progress=False)
    assert all(len(s) == 1 for s in seen) and len(seen) == 2


def test_a_corrupt_cell_is_kept_aside_and_recomputed_on_resume(tmp_path, capsys):
    spec = make_spec()
    run_sweep(spec, Counting(), tmp_path / "a", progress=False)
    run_sweep(spec, Counting(), tmp_path / "b", progress=False)
    victim = sorted((tmp_path / "a" / "cells").glob("*.npz"))[3]
    damaged = victim.read_bytes()[: len(victim.read_bytes()) // 2]  # e.g. a full disk, a bad copy
    victim.write_bytes(damaged)
    again = Counting()
    rep = run_sweep(spec, again, tmp_path / "a", progress=False)
    assert again.cells == [victim.stem] and rep.computed == 1 and rep.skipped == 5
    assert f"{victim.name} is unreadable" in capsys.readouterr().err
    assert (victim.parent / f".corrupt-{victim.name}").read_bytes() == damaged  # nothing lost
    xr.testing.assert_identical(load_results(tmp_path / "a"), load_results(tmp_path / "b"))


def test_wrong_shapes_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"'value' has shape \(3,\), expected \(2, 3, 2\)"):
        run_sweep(make_spec(), lambda cells, d: [{"value": np.zeros(3), "curve": 0} for _ in cells],
                  tmp_path / "bad", progress=False)  # fmt: skip
    run_sweep(make_spec(), Counting(), tmp_path / "ok", max_cells=1, progress=False)
    victim = next((tmp_path / "ok" / "cells").glob("*.npz"))
    victim.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=rf"corrupt results file .*{victim.name}"):
        load_results(tmp_path / "ok")
    victim.unlink()
    stray = tmp_path / "ok" / "cells" / "notes.npz"
    np.savez(stray, x=np.zeros(1))
    with pytest.raises(ValueError, match=r"corrupt results file .*notes\.npz"):
        load_results(tmp_path / "ok")
    with pytest.raises(ValueError, match="no results directory given"):
        load_results([])
    (tmp_path / "ok" / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match=r"manifest\.json is corrupt"):
        load_results(tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="not a results store"):
        load_results(tmp_path / "nowhere")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (names and bytes), to show that a refusal changed nothing."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _manifest_with(**changes):
    body = make_spec().manifest()
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[]", "it holds a JSON list, not an object"),
        (b'"x"', "it holds a JSON str, not an object"),
        (b"null", "it holds a JSON NoneType, not an object"),
        (b'{"config": 5}', "it lacks name, format, seed, config_hash"),
        (b'{"a": 1}', "it lacks name, format"),
        (b'{"name": "toy-2a", "config": {"figure": "2a"}}', "it lacks format, seed, config_hash, outer_dims"),
        (_manifest_with(config=5), "its 'config' is 5, not a JSON object"),
        (_manifest_with(variables={"value": ["nope"]}), "variable 'value' has dim 'nope' with no entry"),
        (_manifest_with(outer_dims=["optimizer", "lr"]), "its outer_dims names 'lr', which has no list"),
        (_manifest_with(format=2), "its format is 2; this version of focus_optim reads format 1"),
        (b'{"name": "\xff\xfe"}', "can't decode byte 0xff"),  # not UTF-8
    ],
)
def test_a_malformed_manifest_is_named_and_the_store_untouched(tmp_path, content, problem):
    run_sweep(make_spec(), Counting(), tmp_path, max_cells=1, progress=False)
    (tmp_path / "manifest.json").write_bytes(content)
    before = snapshot(tmp_path)
    where = re.escape(f"{tmp_path / 'manifest.json'} is corrupt: ")
    for attempt in (
        lambda: run_sweep(make_spec(), Counting(), tmp_path, progress=False),
        lambda: load_results(tmp_path),
        lambda: load_results([tmp_path, tmp_path]),
    ):
        with pytest.raises(ValueError, match=where + ".*" + re.escape(problem)):
            attempt()
    assert snapshot(tmp_path) == before


def test_a_malformed_manifest_is_refused_before_a_missing_cells_dir_is_made(tmp_path):
    run_sweep(make_spec(), Counting(), tmp_path, max_cells=1, progress=False)
    shutil.rmtree(tmp_path / "cells")
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match=r"manifest\.json is corrupt"):
        run_sweep(make_spec(), Counting(), tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_cell_that_is_an_npy_array_is_kept_aside_and_recomputed(tmp_path, capsys):
    spec = make_spec()
    run_sweep(spec, Counting(), tmp_path / "a", progress=False)
    run_sweep(spec, Counting(), tmp_path / "b", progress=False)
    victim = tmp_path / "a" / "cells" / "0-0.npz"
    with victim.open("wb") as f:  # (np.save to a path would append .npy)
        np.save(f, np.arange(5.0))
    npy = victim.read_bytes()
    with pytest.raises(ValueError, match=rf"corrupt results file .*{victim.name}"):
        load_results(tmp_path / "a")
    again = Counting()
    rep = run_sweep(spec, again, tmp_path / "a", progress=False)
    assert again.cells == ["0-0"] and (rep.computed, rep.skipped) == (1, 5)
    err = capsys.readouterr().err
    assert f"{victim} is unreadable (it holds a single ndarray, not an .npz archive" in err
    assert (victim.parent / f".corrupt-{victim.name}").read_bytes() == npy  # nothing lost
    xr.testing.assert_identical(load_results(tmp_path / "a"), load_results(tmp_path / "b"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_cells": -1}, r"Invalid max_cells: -1 \(allowed: an integer >= 0, or None for all\)"),
        ({"max_cells": 1.5}, r"Invalid max_cells: 1.5 \(allowed: an integer >= 0"),
        ({"threads": -1}, r"Invalid threads: -1 \(allowed: an integer >= 1, or None"),
        ({"threads": 0}, r"Invalid threads: 0 \(allowed: an integer >= 1, or None"),
    ],
)
def test_run_sweep_range_checks_before_creating_the_store(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_sweep(make_spec(), Counting(), tmp_path / "s", progress=False, **kwargs)
    assert not (tmp_path / "s").exists()


def test_seeds_depend_on_cell_coordinates_not_order():
    a = {c.key: c.seed for c in make_spec().cells()}
    assert len(set(a.values())) == len(a)
    b = {c.key: c.seed for c in make_spec().cells()}
    assert a == b


def test_parse_shard(monkeypatch):
    assert parse_shard("1/4") == Shard(1, 4)
    assert parse_shard(" 3 / 8 ") == Shard(3, 8)
    for bad in ("1-4", "1_0/20", "1/4/5", "1.0/4", "١/٤"):  # digit grouping, unicode digits
        with pytest.raises(ValueError, match="expected i/n"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="Invalid shard 4/4"):
        parse_shard("4/4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard(None) == Shard(2, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert parse_shard(None) is None


def test_manifest_records_grid_and_hash(tmp_path):
    run_sweep(make_spec(), Counting(), tmp_path, max_cells=1, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["outer_dims"] == ["optimizer", "sharpness"]
    assert manifest["config"] == {"steps": 4} and len(manifest["config_hash"]) == 16


def seeded_normal_compute():
    """A module-level factory, so that Deferred can pickle it into worker processes."""

    def compute(cells, device):
        out = []
        for c in cells:
            rng = np.random.default_rng(c.seed)
            out.append({"value": rng.normal(size=(2, 3, 2)), "curve": rng.normal(size=(2, 3, 4))})
        return out

    return compute


def test_local_workers_fill_one_store_like_a_single_process(tmp_path):
    from focus_optim.sweep import Deferred

    spec = make_spec()
    run_sweep(spec, Counting(), tmp_path / "single", progress=False)
    compute = Deferred(seeded_normal_compute)
    run_sweep(spec, compute, tmp_path / "pool", max_cells=2, progress=False)  # killed, then resumed:
    rep = run_sweep(spec, compute, tmp_path / "pool", workers=2, threads=1, progress=False,
                    order=lambda c: -c.coords["sharpness"])  # fmt: skip
    assert rep.computed == 4 and rep.skipped == 2
    xr.testing.assert_identical(load_results(tmp_path / "single"), load_results(tmp_path / "pool"))
    with pytest.raises(ValueError, match="Invalid workers"):
        run_sweep(spec, compute, tmp_path / "pool", workers=0)


def test_temp_files_of_killed_writes_are_removed_once_an_hour_old(tmp_path):
    """Other shards may be writing into the store: only a temp file untouched for an hour goes."""
    import os
    import time

    from focus_optim.atomic import temp_name

    spec = make_spec()
    run_sweep(spec, Counting(), tmp_path / "a", max_cells=2, progress=False)
    cells = tmp_path / "a" / "cells"
    stale, busy = temp_name(cells / "1-2.npz"), temp_name(cells / "0-1.npz")
    stale_manifest = temp_name(tmp_path / "a" / "manifest.json")
    for p in (stale, busy, stale_manifest):
        p.write_bytes(b"PK\x03\x04 torn")
    two_hours_ago = time.time() - 7200
    for p in (stale, stale_manifest):
        os.utime(p, (two_hours_ago, two_hours_ago))
    run_sweep(spec, Counting(), tmp_path / "a", progress=False)
    assert not stale.exists() and not stale_manifest.exists() and busy.exists()
    assert int(load_results(tmp_path / "a").attrs["cells_done"]) == 6


@pytest.mark.parametrize("name", ["allow_pickle", "file", "__meta__", "not a name"])
def test_a_variable_cannot_take_a_name_the_cell_file_uses(name):
    """``np.savez`` would take ``allow_pickle``/``file`` as its own options and ``__meta__`` is the
    cell's metadata: such a variable would silently never be stored, so the spec refuses it."""
    with pytest.raises(ValueError, match=rf"Invalid variable name '{name}'.*allow_pickle"):
        SweepSpec(name="demo", outer={"a": [1]}, inner={}, variables={name: ()})


def test_a_variable_named_like_a_savez_option_would_not_be_stored(tmp_path):
    """Why the names above are refused: numpy takes the keyword as its option."""
    np.savez(tmp_path / "x.npz", **{"allow_pickle": np.ones(2), "kept": np.zeros(1)})
    assert list(np.load(tmp_path / "x.npz").keys()) == ["kept"]
