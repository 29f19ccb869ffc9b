"""``focus-optim compare run|summary|plot``: :func:`focus_optim.compare.compare` from the shell.

``run TARGET`` calls a training function named ``module:function`` or ``path/to/file.py:function``
(``train(trial) -> {metric: value}``, see :mod:`focus_optim.compare`) for every optimizer, lr and
replicate, sharded with ``--shard i/n`` or torchrun and resumable like every sweep here.

A comparison sharded over processes, GPUs or cluster array jobs writes into one directory (or
several, given together); these commands read whatever is stored, so they also show a comparison
in progress: the number of stored runs is printed, and an lr whose runs are not all stored yet is
not ranked (as a diverged run would not be). An optimizer with no ranked lr is said to have none
(in ``--json``, strict JSON: its values are null).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from .cli_types import device_arg, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="run, summarise or plot a comparison of optimizers on your training function",
        description=__doc__,
    )
    csub = p.add_subparsers(dest="compare_command", required=True)
    r = csub.add_parser("run", help="run (or resume) a comparison of a training function")
    r.add_argument("target", help="the training function: module:function or path/to/file.py:function")
    r.add_argument(
        "--optimizers", nargs="+", required=True, help='NAME[:KEY=VALUE,...], e.g. "focus:gamma=0.2"'
    )
    r.add_argument("--lrs", nargs="+", type=float, required=True, help="learning rates")
    r.add_argument("--metrics", nargs="+", required=True, help="names of the numbers train returns")
    r.add_argument("--out", required=True, help="results directory (resumed if it exists)")
    r.add_argument("--replicates", type=int, default=3, help="paired seeds per (optimizer, lr)")
    r.add_argument("--seed", type=int, default=0, help="seed of replicate 0")
    r.add_argument("--shard", default=None, help="i/n: every n-th run from the i-th (default: torchrun's)")
    r.add_argument("--workers", type=positive_int, default=1, help="local processes")
    r.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per process (default: 1 with several workers, else torch's choice)",
    )
    r.add_argument(
        "--device", type=device_arg, default=None, help="default: cuda:LOCAL_RANK if available, else cpu"
    )
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run_comparison)
    commands = (("summary", "each optimizer's best lr and value"), ("plot", "the lr sweep (+ curves)"))
    for name, help_ in commands:
        c = csub.add_parser(name, help=help_)
        c.add_argument("dirs", nargs="+", help="results directories of one comparison")
        c.add_argument("--metric", default=None, help="the metric to rank by (default: the first stored)")
        c.add_argument("--mode", choices=("min", "max"), default="min", help="lower or higher is better")
        if name == "summary":
            c.add_argument("--json", action="store_true", help="print JSON instead of a table")
        else:
            c.add_argument("--out", default=None, help="figure path without suffix (default: DIR/compare)")
        c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .compare import best_lr, plot
    from .sweep import load_results

    ds = load_results(args.dirs)
    if "metrics" not in ds or ds["metrics"].dims != ("optimizer", "lr", "replicate", "metric"):
        dims = ds["metrics"].dims if "metrics" in ds else ()
        raise ValueError(
            f"{args.dirs[0]} is not a focus_optim.compare store (its metrics have dims {dims}, "
            "not (optimizer, lr, replicate, metric))"
        )
    metric = args.metric or str(ds["metric"].values[0])
    done, total = ds.attrs["cells_done"], ds.attrs["cells_total"]
    if args.compare_command == "plot":
        written = plot(ds, metric, args.out or f"{args.dirs[0]}/compare", mode=args.mode)
        print(f"{done}/{total} runs; wrote", *written)
        return 0
    table = best_lr(ds, metric, mode=args.mode)
    rows, why_none = {}, {}
    for label in table["optimizer"].values:
        lr = float(table["best_lr"].sel(optimizer=label))
        timed = "seconds" in ds and math.isfinite(lr)
        at_best = ds["seconds"].sel(optimizer=label, lr=lr).mean().item() if timed else float("nan")
        rows[str(label)] = {
            "best_lr": lr,
            metric: float(table["best"].sel(optimizer=label)),
            "std": float(table["best_std"].sel(optimizer=label)),
            "seconds": at_best,  # mean wall time of a run at the best lr
        }
        if not math.isfinite(lr):  # no lr ranked: none has all its runs stored, or those diverged
            stored = ds["cell_done"].sel(optimizer=label).all("replicate")
            why_none[str(label)] = (
                f"every lr with all its replicates stored diverged (non-finite {metric})"
                if bool(stored.any())
                else "no lr has all its replicates stored yet"
            )
    if args.json:
        summary = {"metric": metric, "mode": args.mode, "runs": [done, total], "optimizers": rows}
        print(json.dumps(_finite_or_null(summary), allow_nan=False))  # strict JSON: NaN -> null
        return 0
    print(f"{ds.attrs['name']}: {done}/{total} runs stored; best lr by the mean {metric} ({args.mode})")
    for label, r in rows.items():
        if label in why_none:
            print(f"  {label:>16s}  {why_none[label]}")
            continue
        print(
            f"  {label:>16s}  lr {r['best_lr']:<9.3g} {metric} {r[metric]:.6g} ± {r['std']:.2g}"
            f"   {r['seconds']:.3g} s/run"
        )
    return 0


def _finite_or_null(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, inf: no value) replaced by None (JSON null)."""
    if isinstance(x, dict):
        return {k: _finite_or_null(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_null(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run_comparison(args: argparse.Namespace) -> int:
    from .compare import compare
    from .optim.registry import parse_optimizer_spec

    optimizers = {}
    for text in args.optimizers:
        spec, hparams = parse_optimizer_spec(text, reserved=("lr",), why="is swept (--lrs)")
        if text.strip() in optimizers:
            raise ValueError(f"Invalid --optimizers: {text.strip()!r} twice (allowed: distinct entries)")
        optimizers[text.strip()] = {"optimizer": spec.name, **hparams}
    ds = compare(
        load_target(args.target),
        optimizers,
        args.lrs,
        out=args.out,
        replicates=args.replicates,
        metrics=args.metrics,
        config={"target": args.target},
        base_seed=args.seed,
        shard=args.shard,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(
        f"{ds.attrs['runs_computed']} runs computed, {ds.attrs['runs_skipped']} already stored; "
        f"{ds.attrs['cells_done']}/{ds.attrs['cells_total']} runs stored in {args.out}"
    )
    return 0


def load_target(target: str) -> Any:
    """``module:function`` or ``path/to/file.py:function`` -> the function. A file's folder goes on
    ``sys.path`` and the file is imported by name, so worker processes can import it too."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"Invalid target {target!r} (allowed: module:function or path/to/file.py:function)")
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no such file (target {target!r})")
        sys.path.insert(0, str(path.parent))
        where = path.stem
    try:
        module = importlib.import_module(where)
    except ImportError as exc:
        raise ValueError(f"Invalid target {target!r}: cannot import {where!r} ({exc})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"Invalid target {target!r}: {where} has no function {name!r}")
    return fn
