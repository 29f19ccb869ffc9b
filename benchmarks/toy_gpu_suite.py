"""The whole ``paper`` toy suite on one GPU, timed per figure: 2a, 2b, 6 (left, right), 1c, 4 (5 is
drawn from 2a and 2b).

Each figure runs exactly as ``focus-optim toy run --figure F --preset paper --device cuda`` does
(``focus_optim.sweep.run_sweep`` with the figure's compute function, cells of one optimizer packed
into one call, the step fused by ``torch.compile``, every cell's results written to the store), so a
figure's time includes compilation, simulation and storing. Then:

* ``2a (warm)``: 2a again into a fresh store in the same process (compiled code reused), i.e. the
  time without compilation;
* ``plot``: every figure as PNG+PDF into ``$OUT/plots`` (not part of the suite's time);
* checks (after the timed part, unless ``--no-checks``): on the GPU, cells packed together give
  bit-identical results to cells run alone (2-D and 100-D, with the sums over coordinates in the
  order the run used: fixed, or compiler-chosen under ``--free-order``), and GPU results agree
  statistically (mean final loss within 3 standard errors) with the CPU eager path;
* ``--fresh-process``: ``focus-optim toy run --figure 2a --preset paper`` end to end as a user runs
  it, in two new processes: first with empty Inductor/Triton caches (everything compiled), then
  again with the caches the first one left on disk (a second run on the same machine).

Stores go to ``--store`` (default ``/tmp/toy-gpu-suite``; ~1.4 GB, not copied back); ``$OUT``
receives ``toy_gpu_suite.json`` (timings, device, phase-diagram summaries) and the plots.

Run from the repository root on the GPU machine (expected 3-5 minutes, most of it compiling and the
100-D figure)::

    PYTHONPATH=src python benchmarks/toy_gpu_suite.py

``--figures 2a`` runs a subset; ``--compile off`` times the eager path (slow for 6r); ``--kernels``
runs each step as the hand-written Triton valley kernel plus the optimizers' fused Triton step,
with nothing compiled. CPU smoke test of the script itself: ``--device cpu --preset quick
--figures 2a 1c --no-checks`` (add ``--kernels`` under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from focus_optim import load_results
from focus_optim.atomic import write_json_atomic
from focus_optim.landscape import analysis as A
from focus_optim.landscape import figures as F
from focus_optim.landscape import simulate as S
from focus_optim.landscape import valley as V
from focus_optim.landscape.plots import plot_all
from focus_optim.sweep import run_sweep


def trajectory_steps(spec: Any) -> float:
    cells = int(np.prod([len(v) for v in spec.outer.values()]))
    return float(cells) * float(np.prod(spec.inner_shape)) * spec.config["steps"]


def sweep_store(key: str) -> str:
    """The figure's store directory; refuses derived figures (5), which have no sweep to time."""
    store = F.figure(key).store
    if store is None:
        raise ValueError(f"Figure {key!r} is made from other figures' data: no sweep of its own to time")
    return store


def build(key: str, preset: str, steps: int | None = None) -> Any:
    """The figure's sweep; ``steps`` shortens Figures 1c and 4 (smoke runs)."""
    fig = F.figure(key)
    assert fig.build is not None  # a figure with a store (sweep_store, called first) has a sweep
    if steps and fig.kind == "trajectories":
        return F.trajectory_spec(fig.key, preset, F.OPTIMIZERS, steps)
    if steps and fig.kind == "curves":
        return F.curves_spec(fig.key, preset, steps=steps)
    return fig.build(preset, F.OPTIMIZERS)


def run_one(
    key: str, store: Path, device: str, run: F.RunOptions, preset: str, figure_steps: int | None = None
) -> dict[str, Any]:
    spec = build(key, preset, figure_steps)
    cuda = device.startswith("cuda")
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    report = run_sweep(
        spec,
        F.make_compute(spec, run),
        store,
        device=device,
        batch_cells=F.batch_cells(spec, device),
        group_by=("optimizer",),
        progress=False,
    )
    sync()
    dt = time.perf_counter() - t0
    work = trajectory_steps(spec)
    row = {
        "figure": key,
        "seconds": dt,
        "cells": report.computed,
        "trajectory_steps": work,
        "traj_steps_per_s": work / dt,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
    }
    print(
        f"{key:<10s} {dt:>8.2f} s  {report.computed:>4d} cells  {work:.3e} traj-steps  "
        f"{work / dt:.3e}/s  peak {row['peak_gb']:.1f} GiB",
        flush=True,
    )
    return row


def checks(
    device: str,
    fixed_order: bool | None,
    kernels: bool = False,
    rows: int = 512,
    steps: int = 200,
    fuse_update: bool = False,
    compile: bool = True,
) -> dict[str, Any]:
    """Packed == alone on the GPU (bit for bit); GPU vs CPU eager within 3 standard errors. The GPU
    side takes the timed figures' path: kernels, compiled, or eager."""
    out: dict[str, Any] = {}
    blocks = [S.Rows.make(seed, a, 1.0, np.full(rows, 0.01), 0.1) for seed, a in [(31, 10.0), (32, 100.0)]]
    for land in (V.rotated(), V.random_axis(100)):
        gpu = S.Options(device=device, compile=compile and not kernels, pack_cells=True,
                        fixed_order=fixed_order, kernels=kernels, fuse_update=fuse_update)  # fmt: skip
        packed = S.simulate("adamw", blocks, land, steps, gpu)
        alone = [S.simulate("adamw", [b], land, steps, gpu)[0] for b in blocks]
        cpu = S.simulate("adamw", blocks, land, steps, S.Options(compile=False))
        same = all(torch.equal(p, a) for p, a in zip(packed, alone))
        zs = []
        for p, c in zip(packed, cpu):
            p, c = p[:, 0].double(), c[:, 0].double()
            zs.append(float((p.mean() - c.mean()) / (p.var() / p.numel() + c.var() / c.numel()).sqrt()))
        out[f"{land.kind}{land.dim}"] = {"packed_equals_alone": same, "gpu_vs_cpu_z": zs}
        print(
            f"check {land.kind}-{land.dim}d: packed == alone: {same}; GPU vs CPU z-scores {np.round(zs, 2)}"
        )
    return out


def fresh_process(
    device: str, preset: str, root: Path, kernels: str | None = None, steps_per_launch: int | None = None
) -> dict[str, float]:
    """Seconds of ``focus-optim toy run --figure 2a`` in a new process: cold caches, then warm."""
    caches = root / "compile-caches"
    shutil.rmtree(caches, ignore_errors=True)
    env = dict(
        os.environ, TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"), TRITON_CACHE_DIR=str(caches / "triton")
    )
    out = {}
    for label in ("cold caches", "warm caches"):
        run_dir = root / f"fresh-2a-{label.split()[0]}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "focus_optim.cli", "toy", "run", "--figure", "2a", "--preset", preset,
               "--device", device, "--out", str(run_dir), "--no-progress"]  # fmt: skip
        cmd += ["--kernels", kernels or "off", "--compile", "off" if kernels else "auto"]
        if kernels == "fused" and steps_per_launch:
            cmd += ["--steps-per-launch", str(steps_per_launch)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        out[label] = time.perf_counter() - t0
        print(f"fresh process, 2a, {label}: {out[label]:.2f} s (interpreter start to exit)", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figures", nargs="+", default=list(F.SUITE))
    ap.add_argument("--preset", default="paper", choices=list(F.PRESETS))
    ap.add_argument("--store", default="/tmp/toy-gpu-suite")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", default="on", choices=["on", "off"])
    ap.add_argument(
        "--kernels",
        nargs="?",
        const="separate",
        choices=["separate", "fused"],
        default=None,
        help="hand-written Triton steps, nothing compiled (overrides --compile): two launches a step "
        "(valley kernel, fused optimizer step), or 'fused': one (the valley kernel applying the update)",
    )
    ap.add_argument(
        "--trajectory-steps",
        type=int,
        default=None,
        help="steps of Figures 1c and 4 instead of the paper's 1000 and 3000 (CPU smoke runs)",
    )
    ap.add_argument("--no-warm", action="store_true", help="skip the warm re-run of 2a")
    ap.add_argument("--no-checks", action="store_true")
    ap.add_argument("--check-rows", type=int, default=512, help="trajectories per cell in the checks")
    ap.add_argument("--check-steps", type=int, default=200, help="steps of the checks' trajectories")
    ap.add_argument(
        "--free-order",
        action="store_true",
        help="N-D sums over coordinates as compiler-chosen reductions (fusable with the update; rows "
        "of packed cells then round alike only within one compiled kernel)",
    )
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--steps-per-call",
        type=int,
        default=1,
        help="steps unrolled in one compiled call (state can stay on chip between them; longer compile)",
    )
    ap.add_argument(
        "--steps-per-launch",
        type=int,
        default=S.STEPS_PER_LAUNCH,
        help="with --kernels fused: steps per launch (theta and the state stay in registers between them)",
    )
    ap.add_argument(
        "--fresh-process", action="store_true", help="time 2a as a new CLI process, cold then warm caches"
    )
    args = ap.parse_args()
    kernels, fuse = args.kernels is not None, args.kernels == "fused"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "toy_gpu_suite: no CUDA device (use --device cpu --preset quick for a smoke test)",
            file=sys.stderr,
        )
        return 1
    store = Path(args.store)
    shutil.rmtree(store, ignore_errors=True)
    out = Path(os.environ.get("OUT", store / "out"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    info: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": sys.version.split()[0],
        "preset": args.preset,
        "compile": "off (kernels)" if kernels else args.compile,
        "kernels": kernels,
        "fuse_update": fuse,
        "steps_per_launch": args.steps_per_launch if fuse else None,
        "fixed_order": not args.free_order,
        "steps_per_call": args.steps_per_call,
        "trajectory_steps": args.trajectory_steps,
    }
    print(json.dumps(info))
    compile_on = args.compile == "on" and not kernels
    run = F.RunOptions(
        device=args.device,
        compile=compile_on,
        fixed_order=False if args.free_order else None,
        steps_per_call=args.steps_per_call,
        kernels=kernels,
        fuse_update=fuse,
        steps_per_launch=args.steps_per_launch,
    )
    rows = []
    t_suite = time.perf_counter()
    for key in args.figures:
        rows.append(
            run_one(key, store / sweep_store(key), args.device, run, args.preset, args.trajectory_steps)
        )
    suite_s = time.perf_counter() - t_suite
    print(f"{'suite':<10s} {suite_s:>8.2f} s", flush=True)
    if "2a" in args.figures and not args.no_warm:
        rows.append(run_one("2a", store / "fig2a-warm", args.device, run, args.preset))
        rows[-1]["figure"] = "2a (warm)"
    info.update(suite_seconds=suite_s, figures=rows)
    if not args.no_plots:
        t0 = time.perf_counter()
        stores = {k: load_results(store / sweep_store(k)) for k in args.figures}
        written = plot_all(stores, out / "plots")
        info["plot_seconds"] = time.perf_counter() - t0
        info["summaries"] = {k: A.summary(ds) for k, ds in stores.items() if "metrics" in ds}
        info["phase_checks"] = {k: A.phase_checks(ds) for k, ds in stores.items() if "metrics" in ds}
        print("phase structure:", json.dumps(info["phase_checks"]))
        print(f"plots: {len(written)} files in {info['plot_seconds']:.1f} s -> {out / 'plots'}")
    if not args.no_checks:
        info["checks"] = checks(args.device, False if args.free_order else None, kernels, args.check_rows,
                                args.check_steps, fuse, compile_on)  # fmt: skip
    if args.fresh_process:
        info["fresh_process_2a"] = fresh_process(args.device, args.preset, store, args.kernels,
                                                 args.steps_per_launch)  # fmt: skip
    write_json_atomic(out / "toy_gpu_suite.json", info)
    print("\nfigure        seconds  traj-steps/s")
    for r in rows:
        print(f"{r['figure']:<12s} {r['seconds']:>8.2f}  {r['traj_steps_per_s']:.3e}")
    print(f"{'suite':<12s} {suite_s:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
