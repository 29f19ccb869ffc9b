"""Seconds per MNIST cell, eager vs ``torch.compile`` modes, one process, side by side.

A cell is one ensemble of the paper scan (60 MLPs, 400 steps, every-step test pass). This times a
few batch sizes of one optimizer in each mode in this one process (no other process sharing the
device), and extrapolates to the 48 cells of the paper scan by interpolating over log(batch size).
It says which mode and how many workers the full scan (``mnist_gpu.py``) should use.

::

    PYTHONPATH=src python benchmarks/mnist_cell_modes.py                          # CUDA, ~3-6 min
    PYTHONPATH=src python benchmarks/mnist_cell_modes.py --device cpu --steps 20 --batch-sizes 2 64

``--overhead`` times the host side instead: 2 members, batch 2, a 64-image test set, so that
compute is negligible and what is timed is per-step dispatch (the regime of the GPU's small-batch
cells); ms per step from the difference of a 300-step and a 50-step cell, and each cell's fixed
cost (set-up, and for compiled modes re-tracing the optimizer step of a new optimizer)::

    PYTHONPATH=src python benchmarks/mnist_cell_modes.py --device cpu --overhead

``--profile B`` runs one cell at batch size ``B`` in the first of ``--modes`` under
``torch.profiler`` instead and prints the kernels that take the most device time (where a big
cell's time goes)::

    PYTHONPATH=src python benchmarks/mnist_cell_modes.py --profile 4096 --modes fused --steps 40

With ``$OUT`` set, ``$OUT/mnist_cell_modes.json`` holds every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time
from pathlib import Path

import numpy as np
import torch

from focus_optim.atomic import write_json_atomic
from focus_optim.mnist.data import load_mnist
from focus_optim.mnist.optimizers import parse_optimizer
from focus_optim.mnist.scan import PRESETS
from focus_optim.mnist.train import DeviceData, train_cell


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-dir", default=".data/mnist")
    ap.add_argument("--no-verify", action="store_true", help="accept any well-formed IDX set (smoke tests)")
    ap.add_argument("--optimizer", default="focus:gamma=0.2")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 64, 1024, 4096])
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["eager", "fused", "graphs", "default"],
        help="eager, fused (eager with the fused optimizer step), graphs (fused, with forward/backward "
        "and test pass as CUDA graphs), graphs-eval (graphs, with the fused Triton test pass), or "
        "torch.compile modes",
    )
    ap.add_argument("--steps", type=int, default=None, help="override the paper's 400 (smoke tests)")
    ap.add_argument("--eval-precision", default="bf16", choices=("fp32", "tf32", "bf16"))
    ap.add_argument("--overhead", action="store_true", help="time per-step dispatch (tiny cells)")
    ap.add_argument("--profile", type=int, default=None, metavar="B", help="profile one cell at batch size B")
    ap.add_argument("--overhead-optimizers", nargs="+", default=["adamw", "signum", "focus:gamma=0.2"])
    args = ap.parse_args()
    if args.overhead:
        return overhead(args)
    if args.profile:
        return profile_cell(args)

    cfg = PRESETS["paper"].replace(eval_precision=args.eval_precision)
    if args.steps:
        cfg = cfg.replace(steps=args.steps)
    settings = cfg.settings()
    lrs = [lr for lr in cfg.lrs for _ in range(cfg.replicates)]
    data = DeviceData.from_mnist(
        load_mnist(args.data_dir, download=False, verify=not args.no_verify), args.device
    )
    opt = parse_optimizer(args.optimizer)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    rows: dict[str, dict[str, float]] = {}
    for mode in args.modes:
        how = _mode(mode)
        t0 = time.perf_counter()
        # warm-up: compilation, which the first cell of each worker process pays
        train_cell(
            opt,
            2,
            lrs,
            data,
            dataclasses.replace(settings, steps=3),
            seed=0,
            **how,
        )
        sync()
        rows[mode] = {"warmup_s": time.perf_counter() - t0}
        for bs in args.batch_sizes:
            sync()
            t = time.perf_counter()
            train_cell(opt, bs, lrs, data, settings, seed=1, **how)
            sync()
            rows[mode][str(bs)] = time.perf_counter() - t
        # the 12 paper batch sizes x 4 optimizers, each cell's time interpolated in log2(batch size)
        xs = np.log2(args.batch_sizes)
        ys = [rows[mode][str(b)] for b in args.batch_sizes]
        per_cell = np.interp(np.log2(cfg.batch_sizes), xs, ys)
        rows[mode]["scan_serial_estimate_s"] = float(per_cell.sum() * len(cfg.optimizers))
        cells = " ".join(f"b{b}:{rows[mode][str(b)]:.2f}s" for b in args.batch_sizes)
        print(
            f"{mode:>16}: warm-up {rows[mode]['warmup_s']:.1f}s; {cells}; "
            f"paper scan, one process, serial: ~{rows[mode]['scan_serial_estimate_s']:.0f}s"
        )

    info = {
        "benchmark": "mnist_cell_modes",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__,
        "optimizer": args.optimizer,
        "steps": cfg.steps,
        "eval_precision": cfg.eval_precision,
        "seconds": rows,
    }
    if env_out := os.environ.get("OUT"):
        write_json_atomic(Path(env_out) / "mnist_cell_modes.json", info)
    return 0


def profile_cell(args: argparse.Namespace, top: int = 15) -> int:
    """The kernels with the most device time in one cell (batch ``args.profile``, first mode)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = PRESETS["paper"].replace(eval_precision=args.eval_precision)
    settings = dataclasses.replace(cfg.settings(), steps=args.steps or cfg.steps)
    lrs = [lr for lr in cfg.lrs for _ in range(cfg.replicates)]
    data = DeviceData.from_mnist(
        load_mnist(args.data_dir, download=False, verify=not args.no_verify), args.device
    )
    how, cuda = _mode(args.modes[0]), args.device.startswith("cuda")
    opt = parse_optimizer(args.optimizer)
    train_cell(opt, args.profile, lrs, data, dataclasses.replace(settings, steps=3), seed=0, **how)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        train_cell(opt, args.profile, lrs, data, settings, seed=1, **how)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if not cuda or e.device_type == torch.autograd.DeviceType.CUDA]
    key = (lambda e: e.device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events.sort(key=key, reverse=True)
    total = sum(key(e) for e in events) or 1.0
    print(f"batch {args.profile}, {args.modes[0]}, {settings.steps} steps: {wall:.2f} s wall, "
          f"{total / 1e6:.2f} s {'device' if cuda else 'CPU'} time")  # fmt: skip
    rows = []
    for e in events[:top]:
        rows.append({"kernel": e.key[:90], "count": e.count, "ms": key(e) / 1e3, "share": key(e) / total})
        print(f"  {100 * key(e) / total:5.1f}%  {key(e) / 1e3:9.1f} ms  x{e.count:<6} {e.key[:90]}")
    if env_out := os.environ.get("OUT"):
        body = {"device": args.device, "batch_size": args.profile, "mode": args.modes[0],
                "steps": settings.steps, "wall_s": wall, "kernels": rows}  # fmt: skip
        write_json_atomic(Path(env_out) / f"mnist_profile_b{args.profile}.json", body)
    return 0


def _tiny_cell(opt, data: DeviceData, settings, how: dict, steps: int) -> None:
    train_cell(opt, 2, [1e-3, 1e-2], data, dataclasses.replace(settings, steps=steps), seed=1, **how)


def _mode(mode: str) -> dict:
    """``train_cell`` keywords: ``eager``, ``fused`` (eager, fused optimizer step), ``graphs``
    (fused, forward/backward and test pass replayed as CUDA graphs), ``graphs-eval`` (graphs, the
    test pass as the fused Triton kernel), or a compile mode."""
    if mode in ("eager", "fused", "graphs", "graphs-eval"):
        return {"fused": mode != "eager", "cuda_graphs": mode.startswith("graphs"),
                "fused_eval": mode == "graphs-eval"}  # fmt: skip
    return {"compile": mode}


#: ATen ops that only make views or metadata: no kernel on a GPU
VIEW_OPS = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::transpose",
    "aten::t", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::as_strided", "aten::detach",
    "aten::alias", "aten::select", "aten::slice", "aten::permute", "aten::view_as_real", "aten::empty",
    "aten::empty_like", "aten::empty_strided", "aten::resolve_conj", "aten::resolve_neg", "aten::lift_fresh",
}  # fmt: skip


def launches_per_step(opt, data: DeviceData, settings) -> float:
    """Top-level ATen calls per eager step that do work (views excluded): each is at least one
    kernel launch on a GPU (a foreach call: one per group of same-shape tensors). Counted on any
    device; the count does not depend on the machine."""
    with torch.profiler.profile() as prof:
        _tiny_cell(opt, data, settings, {}, 10)  # {}: train_cell's defaults, the eager path
    events = [e for e in prof.events() if e.name.startswith("aten::") and not _inside_aten(e)]
    return sum(_launches(e) for e in events) / 10


def _launches(event) -> bool:
    if event.name in VIEW_OPS:
        return False
    if event.name in ("aten::to", "aten::contiguous"):  # a kernel only if they copy
        return _copies(event)
    return True


def _copies(event) -> bool:
    return any(c.name == "aten::copy_" or _copies(c) for c in event.cpu_children)


def _inside_aten(event) -> bool:
    """Called by another ATen op (rather than from Python, perhaps inside a profiler range)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def overhead(args: argparse.Namespace) -> int:
    """ms per step of a tiny cell (compute negligible), eager vs each compiled mode, and the kernel
    launches per eager step (per-tensor and foreach optimizer paths), for ``--overhead-optimizers``."""
    full = DeviceData.from_mnist(
        load_mnist(args.data_dir, download=False, verify=not args.no_verify), args.device
    )
    data = DeviceData(full.train_x, full.train_y, full.test_x_t[:, :64].contiguous(), full.test_y[:64])
    settings = PRESETS["paper"].settings()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    result: dict[str, dict[str, float]] = {}
    for label in args.overhead_optimizers:
        opt, row = parse_optimizer(label), {}
        for mode in args.modes:
            run = functools.partial(_tiny_cell, opt, data, settings, _mode(mode))
            run(3)
            seconds = []
            for steps in (50, 300):  # the difference excludes per-cell costs (set-up, re-tracing)
                sync()
                t = time.perf_counter()
                run(steps)
                sync()
                seconds.append(time.perf_counter() - t)
            row[mode] = (seconds[1] - seconds[0]) / 250 * 1e3
            row[f"{mode}_per_cell_fixed_s"] = seconds[0] - 50 * row[mode] / 1e3
        row["eager_launches_per_step"] = launches_per_step(opt, data, settings)
        row["eager_foreach_launches_per_step"] = launches_per_step(
            parse_optimizer(label + (",foreach=True" if ":" in label else ":foreach=True")), data, settings
        )
        result[label] = row
        print(f"{label:>16}: " + "; ".join(f"{k} {v:.2f}" for k, v in row.items()))
    if env_out := os.environ.get("OUT"):
        body = {"device": args.device, "torch": torch.__version__, "ms_per_step": result}
        write_json_atomic(Path(env_out) / "mnist_cell_overhead.json", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
