"""One sweep per toy figure of the paper, with ``paper`` (full resolution) and ``quick`` presets.

=========  ===============================================================================  =========
figure     outer (cells) x inner (rows of a cell)                                            store
=========  ===============================================================================  =========
2a         optimizer x sharpness a (96)  x  noise (100) x lr (20) x replicate (50); wd 0.1  fig2a
2b         optimizer x weight decay (96) x  noise (100) x lr (20) x replicate (50); a = 10  fig2b
5          pairwise comparisons, from the 2a and 2b stores (nothing of its own)               -
6l         as 2b on the unrotated valley (u = x)                                             fig6l
6r         as 2b on the 100-D axially symmetric valley with a random axis                    fig6r
6rs        as 6r with a = 10/99 (not in the paper: a per transverse direction, docs/toy.md)  fig6rs
1c         optimizer x replicate: trajectories (every step) at one setting                   fig1c
4          optimizer (Adam, FOCUS) x noise x replicate: loss and u every step, 3000 steps   fig4
=========  ===============================================================================  =========

All use c = 0.1, 1000 steps (3000 for Figure 4), initial positions N(0, 1e-4^2) and the paper's
optimizer settings (:data:`~focus_optim.landscape.simulate.PAPER_SETUPS`). The metrics stored
for 2a/2b/6 are ``final_loss``, ``min_loss`` and ``max_u`` (appendix A.1). The best learning rate
is chosen by mean final loss over replicates (:mod:`.analysis`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sweep import Cell, Deferred, Shard, SweepReport, SweepSpec, run_sweep
from . import simulate as S
from . import valley as V

PRESETS: tuple[str, ...] = ("paper", "quick")
OPTIMIZERS: tuple[str, ...] = ("adamw", "signum", "focus")
SEED = 0


@dataclass(frozen=True)
class Grid:
    """The axes of a phase-diagram sweep."""

    sharpness: Sequence[float]
    weight_decay: Sequence[float]
    noise: Sequence[float]
    lr: Sequence[float]
    replicates: int
    steps: int = 1000


def _f(xs: Any) -> list[float]:
    return [float(x) for x in np.asarray(xs, dtype=np.float64)]


GRIDS: dict[str, Grid] = {
    # Appendix A.1.
    "paper": Grid(
        sharpness=_f(np.logspace(-1, 3, 96)),
        weight_decay=_f(np.linspace(0, 0.5, 96)),
        noise=_f(np.linspace(0, 3, 100)),
        lr=_f(np.logspace(-3, 0, 20)),
        replicates=50,
    ),
    # Same ranges, coarse: 12 x 12 pixels, 13 learning rates (a quarter decade apart over the paper's
    # range, 1e-3 to 1), 16 replicates.
    "quick": Grid(
        sharpness=_f(np.logspace(-1, 3, 12)),
        weight_decay=_f(np.linspace(0, 0.5, 12)),
        noise=_f(np.linspace(0, 3, 12)),
        lr=_f(np.logspace(-3, 0, 13)),
        replicates=16,
    ),
}

#: Fixed settings: Figure 2a's weight decay, Figure 2b's (and 6's) sharpness, the slope c.
FIXED = {"c": V.PAPER_C, "weight_decay_2a": 0.1, "sharpness_2b": 10.0}
#: Figure 1c: one setting where noise is large for the sharpness (Adam slows down, section 2.2).
TRAJECTORY: dict[str, Any] = {"sharpness": 10.0, "noise": 2.0, "lr": 0.01, "weight_decay": 0.1, "steps": 1000}
#: Figure 4: Adam and FOCUS at lr 0.005, a = 10, c = 0.1, wd 0.1, 3000 steps. The paper states no
#: noise level; we store sigma = 0, 1 and 2 (see docs/toy.md).
LOSS_CURVES: dict[str, Any] = {
    "sharpness": 10.0,
    "lr": 0.005,
    "weight_decay": 0.1,
    "steps": 3000,
    "noise": [0.0, 1.0, 2.0],
}


@dataclass
class RunOptions:
    """How a figure runs (never changes what is computed, beyond floating-point paths).

    ``compile=None``: compile on a GPU, and on CPU when the whole sweep has at least
    ``compile_min_work`` coordinate-steps (trajectories x steps x dimension), so that one sweep
    always takes one path, whatever the batching.
    """

    device: str = "cpu"
    compile: bool | None = None
    chunk_rows: int | None = None
    threads: int | None = None
    compile_min_work: float = 2e9
    pack_cells: bool | None = None
    fixed_order: bool | None = None
    steps_per_call: int = 1
    kernels: bool = False
    fuse_update: bool = False
    steps_per_launch: int = S.STEPS_PER_LAUNCH


@dataclass(frozen=True)
class Figure:
    """A toy figure: its sweep (``None`` for figures made from other figures' data)."""

    key: str
    title: str
    store: str | None
    build: Callable[[str, Sequence[str]], SweepSpec] | None = None
    needs: tuple[str, ...] = ()
    kind: str = "phase"  # phase | trajectories | curves | derived


def _landscape(fig: str) -> V.Valley:
    if fig in ("6r", "6rs"):
        return V.random_axis(100, seed=SEED)
    return V.unrotated() if fig == "6l" else V.rotated()


def _base_config(fig: str, preset: str, grid_steps: int) -> dict[str, Any]:
    valley = _landscape(fig)
    return {
        "figure": fig,
        "preset": preset,
        "landscape": valley.config(),
        "steps": grid_steps,
        "init_std": S.INIT_STD,
        "rng": "lowbias32-counter/box-muller v1",
        "optimizers": {k: v.config() for k, v in S.PAPER_SETUPS.items()},
    }


def check_optimizers(optimizers: Sequence[str]) -> None:
    """Known names, each optimizer at most once (``adam`` is ``adamw``): a sweep's optimizer axis
    cannot repeat a coordinate."""
    if isinstance(optimizers, str):
        raise ValueError(f"Invalid optimizers: {optimizers!r} (allowed: a list of {', '.join(OPTIMIZERS)})")
    labels = [S.setup(o).label for o in optimizers]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Invalid optimizers: {list(optimizers)} (each at most once; adam is adamw)")


def _check(preset: str, optimizers: Sequence[str]) -> None:
    if preset not in PRESETS:
        raise ValueError(f"Invalid preset: {preset!r} (allowed: {', '.join(PRESETS)})")
    check_optimizers(optimizers)


def phase_spec(
    fig: str, preset: str = "paper", optimizers: Sequence[str] = OPTIMIZERS, grid: Grid | None = None
) -> SweepSpec:
    """Figures 2a, 2b, 6l, 6r: outer optimizer x (sharpness | weight_decay); inner noise x lr x replicate.

    ``grid`` replaces the preset's grid (tests use tiny ones); the config then says ``preset: custom``.
    """
    if fig not in ("2a", "2b", "6l", "6r", "6rs"):
        raise ValueError(f"Invalid figure for a phase diagram: {fig!r} (allowed: 2a, 2b, 6l, 6r, 6rs)")
    _check(preset, optimizers)
    g = grid or GRIDS[preset]
    preset = "custom" if grid is not None else preset
    config = _base_config(fig, preset, g.steps)
    if fig == "2a":
        outer_axis, outer_vals = "sharpness", g.sharpness
        config["weight_decay"] = FIXED["weight_decay_2a"]
    else:
        outer_axis, outer_vals = "weight_decay", g.weight_decay
        config["sharpness"] = FIXED["sharpness_2b"]
        if fig == "6rs":  # a per transverse direction: |v|^2 sums N - 1 of them (see docs/toy.md)
            config["sharpness"] /= _landscape(fig).dim - 1
    return SweepSpec(
        name=f"toy-fig{fig}",
        outer={"optimizer": [S.setup(o).label for o in optimizers], outer_axis: list(outer_vals)},
        inner={"noise": list(g.noise), "lr": list(g.lr), "replicate": list(range(g.replicates))},
        variables={"metrics": ("metric",)},
        extra_coords={"metric": list(S.METRICS)},
        config=config,
        seed=SEED,
    )


def trajectory_spec(
    fig: str = "1c", preset: str = "paper", optimizers: Sequence[str] = OPTIMIZERS, steps: int | None = None
) -> SweepSpec:
    """Figure 1c: every step of a few trajectories per optimizer at one setting."""
    _check(preset, optimizers)
    t = {**TRAJECTORY, **({"steps": steps} if steps else {})}
    reps = 8 if preset == "paper" else 4
    config = {**_base_config(fig, preset, t["steps"]), **{k: v for k, v in t.items() if k != "steps"}}
    return SweepSpec(
        name="toy-fig1c",
        outer={"optimizer": [S.setup(o).label for o in optimizers]},
        inner={"replicate": list(range(reps))},
        variables={"theta": ("step", "coord"), "loss": ("step",)},
        extra_coords={"step": list(range(t["steps"] + 1)), "coord": ["x", "y"]},
        config=config,
        seed=SEED,
    )


def curves_spec(
    fig: str = "4",
    preset: str = "paper",
    optimizers: Sequence[str] = ("adamw", "focus"),
    steps: int | None = None,
) -> SweepSpec:
    """Figure 4: loss and u at every step for Adam and FOCUS, 3000 steps."""
    _check(preset, optimizers)
    c = {**LOSS_CURVES, **({"steps": steps} if steps else {})}
    reps = 20 if preset == "paper" else 8
    config = {
        **_base_config(fig, preset, c["steps"]),
        **{k: v for k, v in c.items() if k not in ("steps", "noise")},
    }
    return SweepSpec(
        name="toy-fig4",
        outer={"optimizer": [S.setup(o).label for o in optimizers]},
        inner={"noise": list(c["noise"]), "replicate": list(range(reps))},
        variables={"loss": ("step",), "u": ("step",)},
        extra_coords={"step": list(range(c["steps"] + 1))},
        config=config,
        seed=SEED,
    )


FIGURES: dict[str, Figure] = {
    "2a": Figure("2a", "Figure 2a: sharpness x noise", "fig2a", lambda p, o: phase_spec("2a", p, o)),
    "2b": Figure("2b", "Figure 2b: weight decay x noise", "fig2b", lambda p, o: phase_spec("2b", p, o)),
    "5": Figure("5", "Figure 5: pairwise comparisons", None, None, needs=("2a", "2b"), kind="derived"),
    "6l": Figure("6l", "Figure 6 (left): no rotation", "fig6l", lambda p, o: phase_spec("6l", p, o)),
    "6r": Figure("6r", "Figure 6 (right): 100-D valley", "fig6r", lambda p, o: phase_spec("6r", p, o)),
    # Not a panel of the paper: 6r with a = 10 / 99, the reading under which the 100-D valley
    # shows the paper's phase structure (docs/toy.md, "Figure 6 right").
    "6rs": Figure(
        "6rs", "Figure 6 (right), a = 10/(N-1): 100-D valley", "fig6rs", lambda p, o: phase_spec("6rs", p, o)
    ),
    "1c": Figure(
        "1c",
        "Figure 1c: trajectories",
        "fig1c",
        lambda p, o: trajectory_spec("1c", p, o),
        kind="trajectories",
    ),
    "4": Figure(
        "4",
        "Figure 4: loss curves",
        "fig4",
        lambda p, o: curves_spec("4", p, [x for x in o if S.setup(x).label != "signum"]),
        kind="curves",
    ),
}
ALIASES = {"6left": "6l", "6right": "6r", "6-left": "6l", "6-right": "6r", "1": "1c"}
SUITE: tuple[str, ...] = ("2a", "2b", "6l", "6r", "1c", "4")


def figure(key: str) -> Figure:
    k = ALIASES.get(key.lower(), key.lower())
    if k not in FIGURES:
        raise ValueError(f"Invalid figure: {key!r} (allowed: {', '.join(FIGURES)}, all)")
    return FIGURES[k]


def expand(keys: Sequence[str]) -> list[Figure]:
    """Figures to run for these keys (``all`` = the suite; derived figures pull in their inputs)."""
    out: list[str] = []
    for key in keys:
        names = SUITE if key.lower() == "all" else (figure(key).key,)
        for n in names:
            f = FIGURES[n]
            for dep in (*f.needs, n):
                if FIGURES[dep].store and dep not in out:
                    out.append(dep)
    return [FIGURES[k] for k in out]


# --- compute functions for run_sweep ------------------------------------------------------------
def _sim_options(spec: SweepSpec, run: RunOptions, device: str, record: bool) -> S.Options:
    comp = run.compile  # (with run.kernels, S.Options compiles nothing whatever this says)
    if comp is None:
        import torch

        rows = math.prod(spec.inner_shape)
        cells = math.prod(len(v) for v in spec.outer.values())
        work = float(rows) * cells * spec.config["steps"] * spec.config["landscape"]["dim"]
        comp = (
            (not record)
            and S.compile_available(torch.device(device))
            and (torch.device(device).type != "cpu" or work >= run.compile_min_work)
        )
    return S.Options(
        device=device,
        compile=bool(comp),
        chunk_rows=run.chunk_rows,
        threads=run.threads,
        pack_cells=run.pack_cells,
        fixed_order=run.fixed_order,
        steps_per_call=run.steps_per_call,
        kernels=run.kernels,
        fuse_update=run.fuse_update,
        steps_per_launch=run.steps_per_launch,
    )


def landscape_of(spec: SweepSpec) -> V.Valley:
    """The valley of a sweep, rebuilt from its configuration."""
    land = spec.config["landscape"]
    return V.Valley(axis=tuple(land["axis"]), c=land["c"], kind=land["kind"])


def make_compute(
    spec: SweepSpec, run: RunOptions
) -> Callable[[list[Cell], str], list[dict[str, np.ndarray]]]:
    """The ``compute(cells, device)`` of a figure's sweep."""
    valley = landscape_of(spec)
    cfg = spec.config
    steps = int(cfg["steps"])
    inner = spec.inner
    kind = (
        "phase"
        if "metrics" in spec.variables
        else ("trajectories" if "theta" in spec.variables else "curves")
    )

    def settings(cell: Cell) -> tuple[Any, Any, Any, Any]:
        if kind == "phase":
            noise = np.asarray(inner["noise"])[:, None, None]
            lr = np.asarray(inner["lr"])[None, :, None]
            a = cell.coords.get("sharpness", cfg.get("sharpness"))
            wd = cell.coords.get("weight_decay", cfg.get("weight_decay"))
            return a, noise, lr, wd
        if kind == "trajectories":
            return cfg["sharpness"], cfg["noise"], cfg["lr"], cfg["weight_decay"]
        return cfg["sharpness"], np.asarray(inner["noise"])[:, None], cfg["lr"], cfg["weight_decay"]

    def compute(cells: list[Cell], device: str) -> list[dict[str, np.ndarray]]:
        opt = S.setup(cells[0].coords["optimizer"])
        if any(c.coords["optimizer"] != opt.label for c in cells):
            raise ValueError("cells of one compute call must share the optimizer (group_by=('optimizer',))")
        shape = spec.inner_shape
        n = math.prod(shape)
        blocks = []
        for cell in cells:
            a, noise, lr, wd = settings(cell)
            ones = np.ones(shape)
            blocks.append(S.Rows.make(cell.seed, a * ones, noise * ones, lr * ones, wd * ones))
            assert len(blocks[-1]) == n
        record = kind != "phase"
        opts = _sim_options(spec, run, device, record)
        if not record:
            outs = S.simulate(opt, blocks, valley, steps, opts)
            return [{"metrics": o.numpy().reshape(*shape, len(S.METRICS))} for o in outs]
        outs, recs = S.simulate(opt, blocks, valley, steps, opts, record=True)
        results = []
        for rec in recs:
            loss = rec.loss.T.numpy().reshape(*shape, steps + 1)
            if kind == "trajectories":
                theta = rec.theta.permute(1, 0, 2).numpy().reshape(*shape, steps + 1, valley.dim)
                results.append({"theta": theta, "loss": loss})
            else:
                results.append({"loss": loss, "u": rec.u.T.numpy().reshape(*shape, steps + 1)})
        return results

    return compute


def batch_cells(spec: SweepSpec, device: str, target_rows: int = 1 << 24) -> int:
    """Cells per compute call: 1 on CPU (finest resume granularity; CPU work is chunked per cell
    anyway), enough for ``target_rows`` trajectories per call on a GPU."""
    import torch

    if torch.device(device).type == "cpu":
        return 1
    return max(1, target_rows // max(1, math.prod(spec.inner_shape)))


def run_figure(
    spec: SweepSpec,
    run: RunOptions,
    out: str | os.PathLike[str],
    *,
    shard: Shard | None = None,
    device: str = "cpu",
    batch_cells: int = 1,
    progress: bool = True,
    max_cells: int | None = None,
    workers: int = 1,
) -> SweepReport:
    """``run_sweep`` of one figure: cells of one optimizer packed into one call, optionally on
    ``workers`` local processes (one per core on a CPU)."""
    return run_sweep(
        spec,
        Deferred(make_compute, spec, run),
        out,
        shard=shard,
        device=device,
        batch_cells=batch_cells,
        group_by=("optimizer",),
        progress=progress,
        max_cells=max_cells,
        workers=workers,
    )


__all__ = [
    "FIGURES",
    "GRIDS",
    "OPTIMIZERS",
    "PRESETS",
    "SUITE",
    "Figure",
    "Grid",
    "RunOptions",
    "batch_cells",
    "check_optimizers",
    "curves_spec",
    "expand",
    "figure",
    "landscape_of",
    "make_compute",
    "phase_spec",
    "run_figure",
    "trajectory_spec",
]
