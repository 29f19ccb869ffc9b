"""``focus-optim toy``: run the narrowing-valley sweeps and plot them.

::

    focus-optim toy run --figure 2a --preset quick --out runs/toy-quick
    focus-optim toy plot runs/toy-quick
    focus-optim toy run --figure all --preset paper --out runs/toy --device cuda
    focus-optim toy run --figure 2a --preset paper --out runs/toy --workers 2   # CPU: one process per core
    focus-optim toy run --figure 2a --preset paper --out runs/toy --shard 0/2   # and 1/2, anywhere
    focus-optim toy regret --out runs/toy

Each figure is stored in ``OUT/fig<key>/`` (a :mod:`focus_optim.sweep` store); re-running the same
command resumes and computes only missing cells. ``toy plot DIR [DIR ...]`` draws every figure
found, merging stores of the same figure from several directories (e.g. shards run elsewhere).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..cli_types import counted, device_arg, output_dir, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "toy",
        help="narrowing-valley toy experiments (paper Figures 1c, 2a, 2b, 4, 5, 6)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = p.add_subparsers(dest="toy_command", required=True)

    r = tsub.add_parser("run", help="run figure sweeps into a results directory (resumable)")
    r.add_argument(
        "--figure",
        nargs="+",
        default=["2a"],
        help="2a 2b 5 6l 6r 1c 4, or all (default: 2a); 6rs: 6r with a = 10/99",
    )
    r.add_argument(
        "--preset", default="quick", choices=["quick", "paper"], help="grid resolution (default: quick)"
    )
    r.add_argument("--out", type=output_dir, required=True, help="results directory")
    r.add_argument(
        "--shard", default=None, help="i/n: this process computes every n-th cell (default: torchrun's)"
    )
    r.add_argument(
        "--device", type=device_arg, default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"
    )
    r.add_argument(
        "--optimizers", nargs="+", default=["adamw", "signum", "focus"], help="subset of optimizers"
    )
    r.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="torch.compile the step (auto: on GPUs, and on CPU for big sweeps)",
    )
    r.add_argument(
        "--kernels",
        nargs="?",
        const="separate",
        choices=["auto", "off", "separate", "fused"],
        default="auto",
        help="hand-written Triton steps, nothing compiled: 'separate' (the flag alone), two launches "
        "a step (valley, the optimizer's fused step); 'fused', the valley kernel applying the "
        "optimizer's update, --steps-per-launch steps a launch with theta and the state held in "
        "registers; 'off', the tensor code (compiled or eager); 'auto' (default): 'separate' on CUDA "
        "unless --compile on, else 'off'",
    )
    r.add_argument(
        "--steps-per-launch",
        type=positive_int,
        default=None,
        help="steps per launch with --kernels fused (default: landscape.simulate.STEPS_PER_LAUNCH)",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local processes sharing this run (CPU: one per core, e.g. 2; default 1)",
    )
    r.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads per process (default: 1 on CPU, torch's choice on CUDA)",
    )
    r.add_argument(
        "--batch-cells", type=positive_int, default=None, help="cells per compute call (default: per device)"
    )
    r.add_argument(
        "--chunk-rows", type=positive_int, default=None, help="trajectories per chunk (default: per device)"
    )
    r.add_argument(
        "--steps-per-call",
        type=positive_int,
        default=1,
        help="compiled steps unrolled per call (state stays on chip between them; longer compile)",
    )
    r.add_argument(
        "--max-cells", type=positive_int, default=None, help="stop after this many cells (per figure)"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--plot", action="store_true", help="plot OUT when done")
    r.set_defaults(func=run)

    pl = tsub.add_parser("plot", help="plot every figure found in one or more results directories")
    pl.add_argument("dirs", nargs="+", help="results directories (stores of one figure are merged)")
    pl.add_argument(
        "--out", type=output_dir, default=None, help="where to write the figures (default: DIR/plots)"
    )
    pl.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"])
    pl.set_defaults(func=plot)

    g = tsub.add_parser("regret", help="section 4: FOCUS's average regret vs T on an online convex problem")
    g.add_argument("--out", type=output_dir, default=None, help="write regret.png/pdf and regret.json here")
    g.add_argument("--steps", type=positive_int, default=10000, help="T, at least 200 (default 10000)")
    g.add_argument("--sequences", type=positive_int, default=32)
    g.set_defaults(func=regret)


def resolve_kernels(kernels: str, compile: str, device: Any) -> str:
    """``--kernels`` as ``off``, ``separate`` or ``fused``: ``auto`` takes the Triton step on CUDA
    (measured on an H100: the paper suite in 108 s against 216 s compiled, no compilation) unless
    ``--compile on`` asks for the compiled step; an explicit choice is checked against the device."""
    from .simulate import kernels_available

    if kernels == "auto":
        use = device.type == "cuda" and compile != "on" and kernels_available(device)
        return "separate" if use else "off"
    if kernels != "off":
        if compile == "on":
            raise ValueError("Invalid --kernels with --compile on: the Triton step compiles nothing")
        if not kernels_available(device):
            raise ValueError(
                f"Invalid --kernels on {device}: the Triton step runs on CUDA (or under TRITON_INTERPRET=1)"
            )
    return kernels


def run(args: argparse.Namespace) -> int:
    import torch

    from ..sweep import default_device, parse_shard
    from . import figures as F

    device = args.device or default_device()
    shard = parse_shard(args.shard)
    comp = {"auto": None, "on": True, "off": False}[args.compile]
    threads = args.threads
    if threads is None and torch.device(device).type == "cpu":
        threads = 1  # per-step kernels are short: more threads per process only add barrier stalls
    kernels = resolve_kernels(args.kernels, args.compile, torch.device(device))
    if args.steps_per_call < 1:
        raise ValueError(f"Invalid --steps-per-call: {args.steps_per_call} (allowed: an integer >= 1)")
    per_launch = args.steps_per_launch
    if per_launch is not None and (per_launch < 1 or kernels != "fused"):
        raise ValueError(
            f"Invalid --steps-per-launch: {per_launch} (allowed: an integer >= 1, with --kernels fused)"
        )
    opts = F.RunOptions(
        device=device,
        compile=comp,
        chunk_rows=args.chunk_rows,
        threads=threads,
        steps_per_call=args.steps_per_call,
        kernels=kernels != "off",
        fuse_update=kernels == "fused",
        **({"steps_per_launch": per_launch} if per_launch is not None else {}),
    )
    out = Path(args.out)
    t_all = time.perf_counter()
    F.check_optimizers(args.optimizers)
    figures = F.expand(args.figure)
    specs = {}
    for fig in figures:  # every figure's sweep is checked before any store is created
        assert fig.build is not None and fig.store is not None
        specs[fig.key] = fig.build(args.preset, args.optimizers)
    for fig in figures:
        assert fig.store is not None
        spec = specs[fig.key]
        batch = args.batch_cells or F.batch_cells(spec, device)
        t0 = time.perf_counter()
        report = F.run_figure(
            spec,
            opts,
            out / fig.store,
            shard=shard,
            device=device,
            batch_cells=batch,
            progress=not args.no_progress,
            max_cells=args.max_cells,
            workers=args.workers,
        )
        where = f" shard {shard.index}/{shard.count}" if shard else ""
        print(
            f"{fig.title}: {counted(report.computed, 'cell')} computed, {report.skipped} already stored "
            f"({report.shard_cells}/{report.total_cells} cells{where}) in {time.perf_counter() - t0:.1f} s "
            f"-> {report.store}{report.remaining_note()}",
            flush=True,
        )
    print(f"toy run: done in {time.perf_counter() - t_all:.1f} s", flush=True)
    if args.plot:
        return plot(argparse.Namespace(dirs=[str(out)], out=None, formats=["png", "pdf"]))
    return 0


def find_stores(dirs: list[str]) -> dict[str, list[Path]]:
    """Stores under (or at) each directory, grouped by figure key."""
    from ..sweep import read_manifest

    found: dict[str, list[Path]] = {}
    for d in dirs:
        base = Path(d)
        if not base.exists():
            raise FileNotFoundError(f"{d} does not exist")
        candidates = [base] if (base / "manifest.json").exists() else sorted(base.glob("*/manifest.json"))
        for c in candidates:
            path = c if c.is_dir() else c.parent
            manifest = read_manifest(path)
            key = manifest.get("config", {}).get("figure")
            if key is not None and str(manifest.get("name", "")).startswith("toy-"):
                found.setdefault(str(key), []).append(path)
    return found


def plot(args: argparse.Namespace) -> int:
    from ..sweep import load_results
    from . import analysis as A
    from .plots import plot_all

    found = find_stores(args.dirs)
    if not found:
        raise FileNotFoundError(f"no toy results stores in {', '.join(args.dirs)}")
    stores: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for key, paths in sorted(found.items()):
        ds = load_results(paths)
        stores[key] = ds
        done, total = ds.attrs["cells_done"], ds.attrs["cells_total"]
        note = "" if ds.attrs["complete"] else " (incomplete: missing cells are grey)"
        print(f"fig{key}: {done}/{total} cells from {len(paths)} store(s){note}")
        if "metrics" in ds:
            summary[key] = A.summary(ds)
            print("  pixels won: " + ", ".join(f"{k} {v:.0%}" for k, v in summary[key]["overall"].items()))
            checks = A.phase_checks(ds)
            if checks:
                summary[key]["phase_checks"] = checks
                print(
                    "  phase structure: "
                    + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items())
                )
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "plots"
    written = plot_all(stores, out, tuple(args.formats))
    write_json_atomic(out / "summary.json", summary)
    for p in written:
        print(f"wrote {p}")
    return 0


def regret(args: argparse.Namespace) -> int:
    from . import regret as R

    res = R.run(steps=args.steps, sequences=args.sequences)
    checkpoints = res.T
    fit = checkpoints[checkpoints >= res.config["fit_from"]]
    print(
        f"FOCUS average regret R(T)/T: log-log slope {res.slope:.3f} (theory: -0.5), fitted over T in "
        f"[{fit[0]}, {fit[-1]}]"
    )
    for T, v in zip(res.T, res.avg_regret):
        print(f"  T={int(T):>6d}  R(T)/T={v:.5f}")
    if args.out:
        from .plots import figure_regret

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        body = {"slope": res.slope, "T": res.T.tolist(), "avg_regret": res.avg_regret.tolist(), **res.config}
        write_json_atomic(out / "regret.json", body)
        for p in figure_regret(res, out):
            print(f"wrote {p}")
    return 0
