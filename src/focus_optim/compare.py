"""Compare optimizers on your own problem: every (optimizer, lr, replicate) is one training run.

You write the training run; the sweep runner of the labs (:mod:`focus_optim.sweep`) does the
rest: one results file per run written atomically, resume that recomputes nothing stored,
``shard=`` (or RANK/WORLD_SIZE under ``torchrun``, automatically) to spread the runs over
processes, GPUs or cluster array jobs writing into one directory, local ``workers``, a progress
bar, and an ``xarray.Dataset`` of the results::

    from focus_optim.compare import Trial, best_lr, compare

    def train(trial: Trial) -> dict[str, float]:
        torch.manual_seed(trial.seed)               # the same init and data order for every
        model = MyModel().to(trial.device)          # optimizer and lr at one replicate
        opt = trial.make_optimizer(model)           # make_optimizer(name, model, lr=..., **hparams)
        ...
        return {"val_loss": val_loss, "train_loss": train_loss}

    ds = compare(train, {"adamw": {"weight_decay": 0.1}, "focus": {"gamma": 0.2}},
                 lrs=[1e-4, 3e-4, 1e-3], replicates=3, metrics=["val_loss", "train_loss"],
                 out="runs/compare")
    print(best_lr(ds, "val_loss").to_dataframe())

``optimizers`` maps a label to hyperparameters; a label that is not a registry name says which
optimizer it is with an ``"optimizer"`` entry (``{"focus-g0.4": {"optimizer": "focus", "gamma":
0.4}}``). A run may also return per-step curves (``curves=["val_loss"], points=100``: an array of
``points`` values each; or ``points=[0, 250, 500]``, the coordinates themselves, e.g. steps),
stored beside the metrics. The best lr is picked by the mean over replicates, as the paper does
(:mod:`focus_optim.selection`); a diverged run (inf or NaN) is stored as such and its lr can never
be the best. Values are stored as float32, as in every store of the project (so a finite value
beyond 3.4e38 reads as inf); ties between lrs go to the smallest. With ``workers > 1`` the
``train`` function must be importable by name (defined at module level), as for any ``spawn``
pool. From the shell:
``focus-optim compare run module:train ...``, then ``focus-optim compare summary|plot OUT``
(:mod:`focus_optim.compare_cli`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pickle
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cli_types import MAX_SEED
from .optim.registry import check_hyperparameters, check_values, get_spec, make_optimizer
from .selection import best_lr as _best_lr
from .sweep import Cell, Shard, SweepReport, SweepSpec, is_int, load_results, run_sweep, shard_from_env


@dataclass(frozen=True)
class Trial:
    """One training run of a comparison.

    Attributes:
        label: the optimizer's label in the comparison.
        optimizer: its registry name.
        hparams: hyperparameters other than ``lr``.
        lr: the learning rate.
        replicate: the replicate index (0, 1, ...).
        seed: ``base_seed + replicate``: the same for every optimizer and lr at one replicate, so
            that runs are paired (same initialisation and data order) when ``train`` seeds with it.
        device: where to run (``cuda:LOCAL_RANK`` under torchrun with GPUs).
    """

    label: str
    optimizer: str
    hparams: Mapping[str, Any]
    lr: float
    replicate: int
    seed: int
    device: str

    def make_optimizer(self, model_or_params: Any, **kwargs: Any) -> Any:
        """``focus_optim.make_optimizer(optimizer, model_or_params, lr=lr, **hparams, **kwargs)``."""
        return make_optimizer(self.optimizer, model_or_params, lr=self.lr, **{**self.hparams, **kwargs})


@dataclass
class _RunTrials:
    """The compute function of a comparison's sweep (picklable when ``train`` is importable)."""

    train: Callable[[Trial], Mapping[str, Any]]
    optimizers: dict[str, dict[str, Any]]
    metrics: list[str]
    curves: list[str] = field(default_factory=list)
    points: int = 0
    base_seed: int = 0

    def __call__(self, cells: list[Cell], device: str) -> list[dict[str, np.ndarray]]:
        return [self._one(cell, device) for cell in cells]

    def _one(self, cell: Cell, device: str) -> dict[str, np.ndarray]:
        label, lr, rep = cell.coords["optimizer"], float(cell.coords["lr"]), int(cell.coords["replicate"])
        hp = dict(self.optimizers[label])
        name = hp.pop("optimizer", label)
        trial = Trial(label, get_spec(name).name, hp, lr, rep, self.base_seed + rep, device)
        t0 = time.perf_counter()
        result = self.train(trial)
        seconds = time.perf_counter() - t0
        where = f"train({label}, lr={lr:g}, replicate={rep})"
        if not isinstance(result, Mapping):
            raise ValueError(f"{where} returned {type(result).__name__}, not a dict of metrics")
        missing = [k for k in self.metrics + self.curves if k not in result]
        if missing:
            got = ", ".join(sorted(result)) or "nothing"
            raise ValueError(f"{where} returned no {', '.join(missing)} (got {got})")
        out = {
            "metrics": np.array([_scalar(result[k], k) for k in self.metrics], dtype=np.float64),
            "seconds": np.array(seconds),
        }
        if self.curves:
            rows = []
            for k in self.curves:
                arr = np.asarray(_numpy(result[k]), dtype=np.float64).reshape(-1)
                if arr.shape != (self.points,):
                    raise ValueError(f"curve {k!r} of {where} has {arr.size} points, expected {self.points}")
                rows.append(arr)
            out["curves"] = np.stack(rows, axis=-1)
        return out


def comparison_spec(
    optimizers: Mapping[str, Mapping[str, Any]] | Sequence[str],
    lrs: Sequence[float],
    *,
    replicates: int,
    metrics: Sequence[str],
    curves: Sequence[str] = (),
    points: int | Sequence[float] = 0,
    point_label: str = "point along the run",
    name: str = "compare",
    config: Mapping[str, Any] | None = None,
    base_seed: int = 0,
) -> tuple[SweepSpec, dict[str, dict[str, Any]]]:
    """The sweep of a comparison (axes optimizer x lr x replicate) and its normalised optimizers."""
    if not is_int(base_seed, minimum=0) or base_seed >= MAX_SEED:
        raise ValueError(f"Invalid base_seed: {base_seed!r} (allowed: an integer in 0 .. 2**63 - 1)")
    base_seed = int(base_seed)
    opts = _normalise(optimizers)
    lrs = [float(v) for v in _sequence("lrs", lrs, numbers.Real)]
    if not lrs or any(not math.isfinite(v) or v <= 0 for v in lrs):
        raise ValueError(f"Invalid lrs: {lrs} (allowed: a non-empty list of finite numbers > 0)")
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"Invalid lrs: {lrs} (allowed: distinct values)")
    if not isinstance(replicates, numbers.Integral) or isinstance(replicates, bool) or replicates < 1:
        raise ValueError(f"Invalid replicates: {replicates!r} (allowed: an integer >= 1)")
    replicates = int(replicates)
    metrics, curves = _sequence("metrics", metrics, str), _sequence("curves", curves, str)
    if not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"Invalid metrics: {metrics} (allowed: a non-empty list of distinct names)")
    if isinstance(points, numbers.Integral) and not isinstance(points, bool):
        coords: list[Any] = list(range(int(points)))
    else:
        coords = [float(v) for v in _sequence("points", points, numbers.Real)]
    if len(set(curves)) != len(curves) or (curves and not coords):
        raise ValueError(
            f"Invalid curves/points: {curves}, {points} (allowed: distinct names with points >= 1, "
            "or a non-empty list of point coordinates)"
        )
    variables: dict[str, tuple[str, ...]] = {"metrics": ("metric",), "seconds": ()}
    extra: dict[str, list[Any]] = {"metric": metrics}
    if curves:
        variables["curves"] = ("point", "curve")
        extra.update(point=coords, curve=curves)
    spec = SweepSpec(
        name=name,
        outer={"optimizer": list(opts), "lr": lrs, "replicate": list(range(replicates))},
        inner={},
        variables=variables,
        extra_coords=extra,
        config={
            "optimizers": opts,
            "base_seed": base_seed,
            "point_label": point_label,
            "user": dict(config or {}),
        },
        seed=base_seed,
    )
    return spec, opts


def compare(
    train: Callable[[Trial], Mapping[str, Any]],
    optimizers: Mapping[str, Mapping[str, Any]] | Sequence[str],
    lrs: Sequence[float],
    *,
    out: str | os.PathLike[str],
    replicates: int = 3,
    metrics: Sequence[str] = ("loss",),
    curves: Sequence[str] = (),
    points: int | Sequence[float] = 0,
    point_label: str = "point along the run",
    name: str = "compare",
    config: Mapping[str, Any] | None = None,
    base_seed: int = 0,
    shard: Shard | str | None = None,
    device: str | None = None,
    workers: int = 1,
    threads: int | None = None,
    progress: bool = True,
    max_runs: int | None = None,
) -> Any:
    """Run every missing (optimizer, lr, replicate) of this shard; return the store's Dataset.

    Args:
        train: one training run, ``train(trial) -> {metric: float, curve: array}``.
        optimizers: label -> hyperparameters (or a list of registry names with their defaults).
        lrs: learning rates, the same for every optimizer.
        out: the results directory (resumed if it holds this comparison; refused if another).
        replicates: runs per (optimizer, lr), with seeds ``base_seed + replicate``.
        metrics: names of the scalars ``train`` returns.
        curves, points: names of per-step series ``train`` returns, each ``points`` long (or as
            long as the list of point coordinates ``points``, e.g. the steps they were taken at);
            ``point_label`` names that axis in plots (e.g. ``"step"``).
        config: anything else that changes results (model size, steps, data...): stored and
            compared on resume, so a changed problem never mixes with old runs.
        shard: ``"i/n"`` or a :class:`~focus_optim.sweep.Shard` (default: torchrun's RANK/WORLD_SIZE).
        device: default ``cuda:LOCAL_RANK`` with GPUs, else ``cpu``.
        workers: local processes (``train`` must then be importable by name).
        threads: torch threads per process (default: 1 with several workers, so that they do not
            oversubscribe the cores; torch's own choice otherwise).
        max_runs: stop after this many runs (e.g. to fill a time slot; run again to continue).

    Returns:
        ``xarray.Dataset`` with ``metrics (optimizer, lr, replicate, metric)``, ``seconds`` (each
        run's wall time inside ``train``), ``curves (..., point, curve)`` if any, and
        ``cell_done`` (runs not yet computed, e.g. other shards', are NaN); ``attrs`` say how many
        runs this call computed (``runs_computed``) and found stored (``runs_skipped``).
    """
    if not is_int(workers, minimum=1):
        raise ValueError(f"Invalid workers: {workers!r} (allowed: an integer >= 1)")
    if threads is not None and not is_int(threads, minimum=1):
        raise ValueError(f"Invalid threads: {threads!r} (allowed: an integer >= 1, or None for the default)")
    if max_runs is not None and not is_int(max_runs, minimum=0):
        raise ValueError(f"Invalid max_runs: {max_runs!r} (allowed: an integer >= 0, or None for all)")
    spec, opts = comparison_spec(
        optimizers, lrs, replicates=replicates, metrics=metrics, curves=curves, points=points,
        point_label=point_label, name=name, config=config, base_seed=base_seed,
    )  # fmt: skip
    extra = spec.extra_coords  # the checked metric, curve and point lists
    metric_names, curve_names = list(extra["metric"]), list(extra.get("curve", []))
    compute = _RunTrials(train, opts, metric_names, curve_names, len(extra.get("point", [])), base_seed)
    if workers > 1:
        try:
            pickle.dumps(compute)
        except Exception as exc:  # a lambda, a closure, a function defined inside another one...
            raise ValueError(
                f"workers={workers} runs train in other processes, so it must be importable by name "
                f"(defined at module level, as must everything it holds): {exc}"
            ) from None
    if isinstance(shard, str):
        from .sweep import parse_shard

        shard = parse_shard(shard)
    report: SweepReport = run_sweep(
        spec,
        compute,
        out,
        shard=shard or shard_from_env(),
        device=device,
        progress=progress,
        max_cells=max_runs,
        workers=workers,
        threads=threads if threads is not None else (1 if workers > 1 else None),
    )
    ds = load_results(out)
    ds.attrs.update(runs_computed=report.computed, runs_skipped=report.skipped, seconds=report.seconds)
    return ds


def best_lr(ds: Any, metric: str, *, mode: str = "min", ddof: int = 1) -> Any:
    """Each optimizer's best lr by the mean of ``metric`` over replicates.

    Returns an ``xarray.Dataset`` over ``optimizer`` with ``best_lr``, ``best`` (the mean there),
    ``best_std`` (std over replicates there) and ``mean`` (every lr); ``mode="max"`` for metrics
    such as accuracy.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"Invalid mode: {mode!r} (allowed: min, max)")
    names = [str(m) for m in ds["metric"].values]
    if metric not in names:
        raise ValueError(f"Unknown metric {metric!r}; stored: {', '.join(names)}")
    x = ds["metrics"].sel(metric=metric, drop=True).sortby("lr")  # lrs as given; ties: the smallest
    sign = 1.0 if mode == "min" else -1.0
    t = _best_lr(sign * x, ddof=ddof)
    return t.rename(best_loss="best", mean_loss="mean").assign(
        best=sign * t["best_loss"], mean=sign * t["mean_loss"]
    )


def plot(ds: Any, metric: str, path: str | os.PathLike[str], *, mode: str = "min") -> list[Path]:
    """``metric`` against lr per optimizer (mean, min-max band over replicates; the best lr
    marked) and, if curves were stored, each optimizer's curves at its best lr. PNG and PDF."""
    from .plots import color, pyplot, save

    plt = pyplot()
    ds = ds.sortby("lr")  # stored in the order given; lines run left to right
    table = best_lr(ds, metric, mode=mode)
    has_curves = "curves" in ds
    curve_names = [str(c) for c in ds["curve"].values] if has_curves else []
    point_label = json.loads(ds.attrs.get("config", "{}")).get("point_label", "point along the run")
    ncol = 1 + len(curve_names)
    fig, axes = plt.subplots(1, ncol, figsize=(4.6 * ncol, 3.6), squeeze=False)
    ax = axes[0, 0]
    x = ds["metrics"].sel(metric=metric, drop=True)
    for label in [str(v) for v in ds["optimizer"].values]:
        runs = x.sel(optimizer=label)
        lrs = runs["lr"].values
        with np.errstate(invalid="ignore"):
            ax.plot(lrs, table["mean"].sel(optimizer=label), "o-", ms=3, color=color(label), label=label)
            ax.fill_between(lrs, runs.min("replicate"), runs.max("replicate"), color=color(label), alpha=0.2)
        b = table.sel(optimizer=label)
        if np.isfinite(b["best"]):
            ax.plot([float(b["best_lr"])], [float(b["best"])], "*", ms=11, color=color(label), mec="k")
    vals = x.values[np.isfinite(x.values)]
    log_y = vals.size > 0 and bool((vals > 0).all()) and vals.max() > 10 * vals.min()
    ax.set(xscale="log", yscale="log" if log_y else "linear", xlabel="learning rate",
           ylabel=f"{metric} (mean, band: min-max over replicates)")  # fmt: skip
    lrs = ds["lr"].values  # label the swept lrs themselves (after the scale, which resets ticks)
    ax.set_xticks(lrs, [f"{v:.2g}" for v in lrs])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend(fontsize=8)
    for j, cname in enumerate(curve_names, start=1):
        ax = axes[0, j]
        for label in [str(v) for v in ds["optimizer"].values]:
            b = table.sel(optimizer=label)
            if not np.isfinite(b["best"]):
                continue
            c = ds["curves"].sel(optimizer=label, lr=float(b["best_lr"]), curve=cname).mean("replicate")
            ax.plot(
                ds["point"].values, c, color=color(label), label=f"{label} (lr {float(b['best_lr']):.2g})"
            )
        ax.set(xlabel=point_label, ylabel=f"{cname} at the best lr (mean over replicates)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    written = save(fig, path)
    plt.close(fig)
    return written


def _sequence(name: str, value: Any, kind: type | tuple[type, ...]) -> list[Any]:
    """``value`` as a list of ``kind``: a single one (``metrics="loss"``) becomes a list of one."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return [value]
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ValueError(f"Invalid {name}: {value!r} (allowed: a list of {_kind_name(kind)})")
    items = list(value)
    if any(not isinstance(v, kind) or isinstance(v, bool) for v in items):
        raise ValueError(f"Invalid {name}: {items!r} (allowed: a list of {_kind_name(kind)})")
    return items


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return "names" if kind is str else "numbers"


def _normalise(optimizers: Mapping[str, Mapping[str, Any]] | Sequence[str]) -> dict[str, dict[str, Any]]:
    if isinstance(optimizers, str):
        optimizers = [optimizers]
    items = optimizers.items() if isinstance(optimizers, Mapping) else ((n, {}) for n in optimizers)
    out: dict[str, dict[str, Any]] = {}
    for label, hp in items:
        hp = dict(hp or {})
        if "lr" in hp:
            raise ValueError(
                f"optimizer {label!r}: give learning rates through lrs=, not in its hyperparameters"
            )
        name = str(hp.get("optimizer", label))
        given = {k: v for k, v in hp.items() if k != "optimizer"}
        check_hyperparameters(name, given)
        try:
            check_values(name, given)
        except ValueError as exc:
            raise ValueError(f"optimizer {label!r}: {exc}") from None
        if label in out:
            raise ValueError(f"Duplicate optimizer label {label!r}")
        out[str(label)] = hp
    if not out:
        raise ValueError(
            "Invalid optimizers: none given (allowed: registry names or label -> hyperparameters)"
        )
    return out


def _numpy(v: Any) -> Any:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else v


def _scalar(v: Any, key: str) -> float:
    arr = np.asarray(_numpy(v), dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"metric {key!r} must be a scalar, got shape {arr.shape}")
    return float(arr.reshape(()))


__all__ = ["Trial", "best_lr", "compare", "comparison_spec", "plot"]
