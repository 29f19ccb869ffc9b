"""The one sweep runner: a grid of cells, per-cell seeds, shards, an atomic results store, progress.

A sweep is a grid of named axes split in two:

* ``outer`` axes are iterated across *cells*; each cell is computed, stored and resumed as a unit;
* ``inner`` axes are vectorised inside a cell (e.g. noise x lr x replicate trajectories as rows).

``compute(cells, device)`` returns, for each cell, a dict ``{variable: array}`` whose shape is the
inner shape followed by the variable's trailing dims (e.g. ``("metric",)`` or ``("step", "metric")``).
Several cells can be computed together (``batch_cells``) when that is faster, e.g. on a GPU; each
is still stored in its own file, so storage and resume granularity do not depend on batching.

Store layout (a directory)::

    manifest.json          name, config, grid, variables, seed, config hash, format version
    cells/<key>.npz        one file per finished cell, written to a temp name then renamed

A changed configuration refuses to write into an old store that holds any cell, and a malformed
manifest is refused (the error names it; nothing in the store is touched). A store that holds no
cell yet (e.g. its first run failed before storing one) takes the new configuration: its manifest
is replaced, atomically, and a run still writing under the old one is refused its next cell.
Resume skips cells whose file exists and opens (an unreadable one, e.g. truncated by a full disk,
is moved aside to ``.corrupt-<name>`` and recomputed); the temp file of a write that was killed is
removed once it is an hour old.
Shards (``--shard i/n``, or RANK/WORLD_SIZE under torchrun) take every n-th cell of the grid and
skip the stored ones (so a shard's cells stay the same when it resumes), so processes, GPUs or
cluster array jobs can share one directory; ``load_results`` stitches whatever is there into an
``xarray.Dataset`` (missing cells are NaN; ``attrs["complete"]`` says if none is).
Each cell's seed is derived from (seed, sweep name, cell coordinates), never from the shard or the
order of computation.

``workers=N`` runs this shard's pending batches on N local processes (``spawn``) that write into
the same store; ``compute`` must then be picklable, e.g. a :class:`Deferred` recipe that builds the
real function once per process. On a CPU several single-threaded processes usually beat one
multi-threaded process for the small per-step kernels of the labs; on a GPU several processes hide
each other's Python and launch overhead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from .atomic import create_atomic, remove_stale_temps, write_atomic
from .worker_pool import spawn_pool

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Cell:
    """One unit of work: a point of the outer grid."""

    index: tuple[int, ...]
    coords: Mapping[str, Any]
    key: str
    seed: int


#: Names a variable cannot take: the cell file's own metadata entry, and ``np.savez``'s keywords
#: (a variable passed as one of those would be taken as the option, not stored).
RESERVED_VARIABLES = frozenset({"__meta__", "file", "allow_pickle"})


@dataclass
class SweepSpec:
    """What a sweep computes. Everything that changes results must be in ``config`` or the grid."""

    name: str
    outer: Mapping[str, Sequence[Any]]
    inner: Mapping[str, Sequence[Any]]
    variables: Mapping[str, Sequence[str]]
    extra_coords: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        dims = list(self.outer) + list(self.inner)
        for var, trailing in self.variables.items():
            if var in RESERVED_VARIABLES or not var.isidentifier():
                raise ValueError(
                    f"Invalid variable name {var!r} (allowed: a Python identifier other than "
                    f"{', '.join(sorted(RESERVED_VARIABLES))})"
                )
            for d in trailing:
                if d not in self.extra_coords:
                    raise ValueError(f"variable {var!r} has dim {d!r} with no entry in extra_coords")
            dims_v = dims + list(trailing)
            if len(set(dims_v)) != len(dims_v):
                raise ValueError(f"variable {var!r} repeats a dim: {dims_v}")

    @property
    def inner_shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.inner.values())

    def variable_shape(self, var: str) -> tuple[int, ...]:
        return self.inner_shape + tuple(len(self.extra_coords[d]) for d in self.variables[var])

    def manifest(self) -> dict[str, Any]:
        body = {
            "name": self.name,
            "format": FORMAT_VERSION,
            "seed": self.seed,
            "config": _jsonable(self.config),
            "outer_dims": list(self.outer),
            "inner_dims": list(self.inner),
            "outer": {k: _jsonable(list(v)) for k, v in self.outer.items()},
            "inner": {k: _jsonable(list(v)) for k, v in self.inner.items()},
            "variables": {k: list(v) for k, v in self.variables.items()},
            "extra_coords": {k: _jsonable(list(v)) for k, v in self.extra_coords.items()},
        }
        try:
            encoded = json.dumps(body, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"Invalid config of sweep {self.name!r}: {exc} (allowed: JSON values: numbers, strings, "
                "booleans, None, lists and dicts of them)"
            ) from None
        body["config_hash"] = hashlib.sha256(encoded.encode()).hexdigest()[:16]
        return body

    def cells(self) -> list[Cell]:
        names = list(self.outer)
        out = []
        for index in np.ndindex(*(len(v) for v in self.outer.values())):
            coords = {n: _plain(self.outer[n][i]) for n, i in zip(names, index)}
            key = "-".join(str(i) for i in index) or "all"
            ident = json.dumps({"seed": self.seed, "name": self.name, "cell": coords}, sort_keys=True)
            seed = int(hashlib.sha256(ident.encode()).hexdigest()[:15], 16)
            out.append(Cell(index=tuple(int(i) for i in index), coords=coords, key=key, seed=seed))
        return out


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"Invalid shard {self.index}/{self.count}: need 0 <= i < n and n >= 1")

    def take(self, items: Sequence[Any]) -> list[Any]:
        return list(items[self.index :: self.count])


def parse_shard(text: str | None) -> Shard | None:
    """``"i/n"`` -> Shard(i, n); None -> the torchrun shard from RANK/WORLD_SIZE, if any."""
    if text is None:
        return shard_from_env()
    match = re.fullmatch(r"\s*(-?[0-9]+)\s*/\s*(-?[0-9]+)\s*", text)
    if match is None:
        raise ValueError(f"Invalid --shard {text!r}: expected i/n with integers, e.g. 0/4")
    return Shard(int(match[1]), int(match[2]))


def shard_from_env() -> Shard | None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "RANK" in os.environ:
        return Shard(int(os.environ["RANK"]), world)
    return None


def default_device() -> str:
    """cuda:LOCAL_RANK under torchrun with GPUs, cuda if available, else cpu."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"


@dataclass
class SweepReport:
    store: Path
    total_cells: int
    shard_cells: int
    computed: int
    skipped: int
    seconds: float

    @property
    def remaining(self) -> int:
        """Cells of this shard not stored yet (after ``max_cells``): the same command goes on."""
        return self.shard_cells - self.computed - self.skipped

    def remaining_note(self) -> str:
        """``"; N cells left: run the same command again"``, or ``""`` when this shard is done."""
        return f"; {self.remaining} cells left: run the same command again" if self.remaining else ""


ComputeFn = Callable[[list[Cell], str], Sequence[Mapping[str, np.ndarray]]]


class Deferred:
    """A picklable recipe for a compute function: ``factory(*args, **kwargs)`` is called on first
    use in each process (so worker processes load their data and compile their kernels once)."""

    def __init__(self, factory: Callable[..., ComputeFn], *args: Any, **kwargs: Any) -> None:
        self.factory, self.args, self.kwargs = factory, args, kwargs
        self._fn: ComputeFn | None = None

    def __call__(self, cells: list[Cell], device: str) -> Sequence[Mapping[str, np.ndarray]]:
        if self._fn is None:
            self._fn = self.factory(*self.args, **self.kwargs)
        return self._fn(cells, device)

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self.factory, "args": self.args, "kwargs": self.kwargs, "_fn": None}


#: A temp file in a store untouched for this long was left by a killed writer (other shards may
#: be writing theirs into the same store right now; a cell's write takes seconds).
STALE_TEMP_SECONDS = 3600.0


class Store:
    """The results directory of one sweep."""

    def __init__(self, path: str | os.PathLike[str], spec: SweepSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        self.manifest = spec.manifest()
        self._holds_a_cell = False  # (set once this object has stored one: see ``write``)

    @property
    def cells_dir(self) -> Path:
        return self.path / "cells"

    def open(self) -> Store:
        """Create the store, or check that an existing one holds this configuration."""
        target = self.path / "manifest.json"
        if not target.exists():  # several shards may race to create it: one wins, whole
            self.cells_dir.mkdir(parents=True, exist_ok=True)
            # (every shard writes the manifest before its first cell: cells without one are orphans)
            orphan = next(self.stored_cell_files(), None)
            if orphan is not None and not target.exists():  # (not another shard's, just created)
                raise ValueError(
                    f"{self.path} holds results ({orphan.name}, ...) but no manifest.json, so their "
                    "configuration is unknown. Use a new --out directory, or delete the old one."
                )
            create_atomic(target, lambda f: f.write(json.dumps(self.manifest, indent=1).encode()))
        existing = read_manifest(self.path)
        if existing.get("config_hash") != self.manifest["config_hash"]:
            diff = "; ".join(
                f"{key}: stored {_short(old)}, this run {_short(new)}"
                for key, old, new in dotted_diff(existing, self.manifest)
            )
            hashes = f"hash {existing.get('config_hash')} != {self.manifest['config_hash']}"
            if next(self.stored_cell_files(), None) is not None:
                raise ValueError(
                    f"{self.path} holds results of a different configuration ({hashes}; differs in {diff}). "
                    "Use a new --out directory, or delete the old one."
                )
            # No result stored under the old configuration (e.g. its first run failed): nothing is
            # lost by taking the store over, so the corrected command need not move to a new --out.
            write_atomic(target, lambda f: f.write(json.dumps(self.manifest, indent=1).encode()))
            note = f"{self.path} held no results; its configuration is replaced by this run's"
            print(f"{note} (differs in {diff})", file=sys.stderr)
        self.cells_dir.mkdir(exist_ok=True)  # (only once the manifest is known to be this sweep's)
        for directory in (self.path, self.cells_dir):
            remove_stale_temps(directory, older_than=STALE_TEMP_SECONDS)
        return self

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.key}.npz"

    def stored_cell_files(self) -> Iterator[Path]:
        """The cell files in the store, readable or not (temp and moved-aside files start with a
        dot and are not cells)."""
        if not self.cells_dir.is_dir():
            return iter(())
        return (p for p in self.cells_dir.glob("*.npz") if not p.name.startswith("."))

    def has(self, cell: Cell) -> bool:
        """Whether the cell is stored readably. An unreadable file is moved aside (kept, under a
        dot name that loading skips) and the cell counts as missing, so it is recomputed."""
        path = self.cell_path(cell)
        if not path.exists():
            return False
        required = {"__meta__", *self.spec.variables}
        try:
            loaded = np.load(path, allow_pickle=False)  # of an .npz: the zip's directory, not the data
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # e.g. an .npy array under a cell's name
                problem = f"it holds a single {type(loaded).__name__}, not an .npz archive of arrays"
            else:
                with loaded as z:
                    missing = required - set(z.files)
                if not missing:
                    return True
                problem = f"it lacks {sorted(missing)}"
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            problem = str(exc) or type(exc).__name__
        aside = path.with_name(f".corrupt-{path.name}")
        os.replace(path, aside)
        print(f"{path} is unreadable ({problem}); moved to {aside.name}, recomputing it", file=sys.stderr)
        return False

    def write(self, cell: Cell, result: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        arrays: dict[str, np.ndarray] = {}
        for var in self.spec.variables:
            if var not in result:
                raise ValueError(f"cell {cell.key}: compute returned no {var!r} (got {sorted(result)})")
            arr = np.asarray(result[var], dtype=np.float32)
            want = self.spec.variable_shape(var)
            if arr.shape != want:
                raise ValueError(f"cell {cell.key}: {var!r} has shape {arr.shape}, expected {want}")
            arrays[var] = arr
        # A store holding no cells may be taken over by another configuration (see ``open``): never
        # write a cell into a store whose manifest is no longer this sweep's. Once this object has
        # stored a cell, no other run can take the store over, so the check is needed only until then.
        current = (
            self.manifest["config_hash"]
            if self._holds_a_cell
            else read_manifest(self.path).get("config_hash")
        )
        if current != self.manifest["config_hash"]:
            raise ValueError(
                f"{self.path} now holds a different configuration (hash {current} != "
                f"{self.manifest['config_hash']}): another run replaced its manifest while it held no "
                f"results; cell {cell.key} is not stored. Use a new --out directory for this run."
            )
        info = {"key": cell.key, "coords": cell.coords, "config_hash": self.manifest["config_hash"], **meta}
        arrays["__meta__"] = np.array(json.dumps(_jsonable(info)))
        # (Any: mypy would match the variable names against savez's allow_pickle keyword)
        write_atomic(self.cell_path(cell), lambda f: np.savez(f, **cast("dict[str, Any]", arrays)))
        self._holds_a_cell = True


def run_sweep(
    spec: SweepSpec,
    compute: ComputeFn,
    out: str | os.PathLike[str],
    *,
    shard: Shard | None = None,
    device: str | None = None,
    batch_cells: int = 1,
    group_by: Sequence[str] = (),
    progress: bool = True,
    max_cells: int | None = None,
    workers: int = 1,
    threads: int | None = None,
    order: Callable[[Cell], Any] | None = None,
) -> SweepReport:
    """Compute every missing cell of this shard and store it; see the module docstring.

    Args:
        batch_cells: up to this many cells (sharing the ``group_by`` coordinates) per compute call.
        max_cells: stop after computing this many cells (tests use it to simulate a killed run).
        workers: local processes computing batches in parallel (``compute`` must be picklable).
        threads: torch threads per process (default: torch's own choice).
        order: sort key on a batch's first cell; batches are computed in that order (e.g. the
            most expensive first, so that parallel workers finish together).
    """
    if workers < 1:
        raise ValueError(f"Invalid workers: {workers} (allowed: an integer >= 1)")
    if max_cells is not None and not is_int(max_cells, minimum=0):
        raise ValueError(f"Invalid max_cells: {max_cells!r} (allowed: an integer >= 0, or None for all)")
    if threads is not None and not is_int(threads, minimum=1):
        raise ValueError(f"Invalid threads: {threads!r} (allowed: an integer >= 1, or None for the default)")
    start = time.perf_counter()
    store = Store(out, spec).open()
    device = device or default_device()
    cells = spec.cells()
    mine = shard.take(cells) if shard else cells
    todo = [c for c in mine if not store.has(c)]
    skipped = len(mine) - len(todo)
    if max_cells is not None:
        todo = todo[:max_cells]
    batches = list(_batches(todo, batch_cells, group_by))
    if order is not None:
        batches.sort(key=lambda b: order(b[0]))
    bar = _progress(len(mine), skipped, enabled=progress, desc=spec.name)
    computed = 0
    try:
        if workers == 1:
            if threads:
                _set_threads(threads)
            for batch in batches:
                computed += _compute_and_store(store, compute, batch, device)
                bar.update(len(batch))
        else:
            init = (spec, str(out), compute, device, threads)
            with spawn_pool(min(workers, len(batches)) or 1, _worker_init, init) as pool:
                for n in pool.imap_unordered(_worker_run, batches):
                    computed += n
                    bar.update(n)
                pool.close()  # a clean shutdown (the with-block alone terminates the workers)
                pool.join()
    finally:
        bar.close()
    return SweepReport(
        store=store.path,
        total_cells=len(cells),
        shard_cells=len(mine),
        computed=computed,
        skipped=skipped,
        seconds=time.perf_counter() - start,
    )


def _compute_and_store(store: Store, compute: ComputeFn, batch: list[Cell], device: str) -> int:
    t0 = time.perf_counter()
    results = compute(batch, device)
    if len(results) != len(batch):
        raise ValueError(f"compute returned {len(results)} results for {len(batch)} cells")
    per_cell = (time.perf_counter() - t0) / len(batch)
    for cell, result in zip(batch, results):
        store.write(cell, result, {"seconds": per_cell, "device": device, "batch": len(batch)})
    return len(batch)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


_WORKER: dict[str, Any] = {}


def _worker_init(spec: SweepSpec, out: str, compute: ComputeFn, device: str, threads: int | None) -> None:
    if threads:
        _set_threads(threads)
    _WORKER.update(store=Store(out, spec), compute=compute, device=device)


def _worker_run(batch: list[Cell]) -> int:
    return _compute_and_store(_WORKER["store"], _WORKER["compute"], batch, _WORKER["device"])


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the store at ``path``, checked; a malformed one raises a ValueError naming it."""
    target = Path(path) / "manifest.json"
    if not target.exists():
        raise FileNotFoundError(f"{path} is not a results store (no manifest.json)")
    try:
        manifest = json.loads(target.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{target} is corrupt: {exc}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise ValueError(
            f"{target} is corrupt: {problem} (expected the manifest a sweep writes: a JSON object with "
            f"{', '.join(_MANIFEST_KEYS)})"
        )
    return manifest


#: The keys of a manifest and the JSON type of each value.
_MANIFEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "format": int,
    "seed": (int, float),  # (an int from every writer here; a number is enough to read the store)
    "config": dict,
    "config_hash": str,
    "outer_dims": list,
    "inner_dims": list,
    "outer": dict,
    "inner": dict,
    "variables": dict,
    "extra_coords": dict,
}


def _manifest_problem(m: Any) -> str | None:
    """What is wrong with a parsed manifest, or None."""
    if not isinstance(m, dict):
        return f"it holds a JSON {type(m).__name__}, not an object"
    missing = [k for k in _MANIFEST_KEYS if k not in m]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(m[key], kind) or isinstance(m[key], bool):
            return f"its {key!r} is {json.dumps(m[key])[:60]}, not a JSON {_JSON_NAMES[kind]}"
    if m["format"] != FORMAT_VERSION:
        return f"its format is {m['format']}; this version of focus_optim reads format {FORMAT_VERSION}"
    for dims, axes in (("outer_dims", "outer"), ("inner_dims", "inner")):
        for d in m[dims]:
            if not isinstance(d, str) or not isinstance(m[axes].get(d), list):
                return f"its {dims} names {d!r}, which has no list of values in {axes!r}"
    for key in ("variables", "extra_coords"):
        bad = next((k for k, v in m[key].items() if not isinstance(v, list)), None)
        if bad is not None:
            return f"its {key}[{bad!r}] is not a list"
    for var, dims in m["variables"].items():
        for d in dims:
            if not isinstance(d, str) or d not in m["extra_coords"]:
                return f"variable {var!r} has dim {d!r} with no entry in extra_coords"
    return None


_JSON_NAMES: dict[type | tuple[type, ...], str] = {
    str: "string",
    int: "integer",
    (int, float): "number",
    dict: "object",
    list: "array",
}


def load_results(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> Any:
    """Stitch the cells of one or more stores of the same sweep into an ``xarray.Dataset``."""
    import xarray as xr

    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    dirs = [Path(p) for p in paths]
    if not dirs:
        raise ValueError("load_results: no results directory given")
    manifest = read_manifest(dirs[0])
    for p in dirs[1:]:
        if read_manifest(p).get("config_hash") != manifest["config_hash"]:
            raise ValueError(f"{p} and {dirs[0]} hold different configurations and cannot be merged")
    outer = {k: list(manifest["outer"][k]) for k in manifest["outer_dims"]}
    inner = {k: list(manifest["inner"][k]) for k in manifest["inner_dims"]}
    extra = {k: list(v) for k, v in manifest["extra_coords"].items()}
    outer_shape = tuple(len(v) for v in outer.values())
    data = {
        var: np.full(outer_shape + tuple(len(v) for v in inner.values()) + tuple(len(extra[d]) for d in dims),
                     np.nan, dtype=np.float32)
        for var, dims in manifest["variables"].items()
    }  # fmt: skip
    done = np.zeros(outer_shape, dtype=bool)
    for p in dirs:
        # (a temp file of a write that was killed starts with a dot: not a cell)
        for f in sorted(f for f in (p / "cells").glob("*.npz") if not f.name.startswith(".")):
            try:
                index = tuple(int(i) for i in f.stem.split("-")) if f.stem != "all" else ()
                with np.load(f, allow_pickle=False) as z:
                    meta = json.loads(str(z["__meta__"]))
                    if meta.get("config_hash") != manifest["config_hash"]:
                        raise ValueError("config hash mismatch")
                    for var in data:
                        data[var][index] = z[var]
            except Exception as exc:
                raise ValueError(f"corrupt results file {f}: {exc}") from None
            done[index] = True
    coords = {**outer, **inner, **extra}
    dims_outer_inner = list(outer) + list(inner)
    ds = xr.Dataset(
        {var: (dims_outer_inner + list(dims), data[var]) for var, dims in manifest["variables"].items()},
        coords=coords,
    )
    ds["cell_done"] = (list(outer), done)
    ds.attrs.update(
        name=manifest["name"],
        config=json.dumps(manifest["config"]),
        config_hash=manifest["config_hash"],
        seed=manifest["seed"],
        complete=bool(done.all()),
        cells_done=int(done.sum()),
        cells_total=int(done.size),
    )
    return ds


# --- helpers ------------------------------------------------------------------------------------
def _batches(cells: list[Cell], size: int, group_by: Sequence[str]) -> Iterator[list[Cell]]:
    if size < 1:
        raise ValueError(f"Invalid batch_cells: {size} (allowed: an integer >= 1)")
    groups: dict[tuple[Any, ...], list[Cell]] = {}
    for c in cells:
        groups.setdefault(tuple(c.coords[g] for g in group_by), []).append(c)
    for members in groups.values():
        for i in range(0, len(members), size):
            yield members[i : i + size]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, *, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a lab dependency
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="cell", dynamic_ncols=True)


def is_int(x: Any, *, minimum: int) -> bool:
    """An integer (Python or numpy, not a bool) >= ``minimum``: a count or seed argument."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool) and bool(x >= minimum)


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return x


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


def dotted_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, value in ``a``, value in ``b``) of the keys whose values differ, into nested
    dicts: e.g. ``("config.user.width", 8, 9)``."""
    out = []
    for k in sorted((set(a) | set(b)) - ({"config_hash"} if not prefix else set())):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += dotted_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append((f"{prefix}{k}", va, vb))
    return out


def _short(value: Any, limit: int = 120) -> str:
    """``repr`` of a manifest value, cut to ``limit`` characters (a grid may hold thousands)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"
