"""``focus-optim compare summary|plot DIR...``: the results of :func:`focus_optim.compare.compare`.

A comparison sharded over processes, GPUs or cluster array jobs writes into one directory (or
several, given together); these commands read whatever is stored, so they also show a comparison
in progress: the number of stored runs is printed, and an lr whose runs are not all stored yet is
not ranked (as a diverged run would not be).
"""

from __future__ import annotations

import argparse
import json
import math


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="summarise or plot a focus_optim.compare store", description=__doc__)
    csub = p.add_subparsers(dest="compare_command", required=True)
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
    rows = {}
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
    if args.json:
        print(json.dumps({"metric": metric, "mode": args.mode, "runs": [done, total], "optimizers": rows}))
        return 0
    print(f"{ds.attrs['name']}: {done}/{total} runs stored; best lr by the mean {metric} ({args.mode})")
    for label, r in rows.items():
        print(
            f"  {label:>16s}  lr {r['best_lr']:<9.3g} {metric} {r[metric]:.6g} ± {r['std']:.2g}"
            f"   {r['seconds']:.3g} s/run"
        )
    return 0
