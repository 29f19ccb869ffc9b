"""Where a toy step's GPU time goes: per-kernel times of the Triton step (``kernels=True``) on one
chunk, against the memory traffic each kernel must move.

For each optimizer it runs ``--steps`` steps of one chunk of ``--rows`` trajectories in ``--dim``
dimensions under ``torch.profiler`` (after a warm-up that compiles the kernels) and prints, per
kernel, the launches, the mean time and the bandwidth implied by the bytes it must read and write
(float32: the valley kernel reads theta and writes the gradient, 8 B per coordinate; the optimizer
kernels read param, grad and states and write param and states: FOCUS and AdamW 28 B, Signum 20 B).

::

    PYTHONPATH=src python benchmarks/toy_profile.py --dim 100 --rows 1342177   # one Figure 6 right chunk
    PYTHONPATH=src python benchmarks/toy_profile.py --dim 2 --rows 4194304

``--configs TILExWARPS ...`` (e.g. ``4096x4 4096x8 2048x4``) also times the valley kernel alone
under each tile size (rows x padded coordinates per program) and warp count, on the same chunk;
a ``:precise`` suffix (``2048x8:precise``) times it with exact sines and cosines.

``--fuse-update`` profiles the one-launch step instead (``Options(fuse_update=True)``: the valley
kernel applying the optimizer's update, ``--steps-per-launch`` steps per launch with theta and the
state in registers); its bytes are moved once per launch, so the table gives its time per step and
coordinate-steps per second. ``--fused-configs TILExWARPS ...`` times that kernel (FOCUS) under
other tile sizes and warp counts.

With ``$OUT`` set, ``$OUT/toy_profile_d{dim}.json`` holds the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from focus_optim.atomic import write_json_atomic
from focus_optim.landscape import simulate as S
from focus_optim.landscape import valley as V

#: Bytes per coordinate that each kernel must move (float32 tensors of the chunk's size); the fused
#: step (valley kernel applying the update) moves the optimizer's minus the gradient's 8.
KERNEL_BYTES = {"valley": 8, "focus": 28, "adamw": 28, "signum": 20}
FUSED_BYTES = {"focus": 24, "adamw": 24, "signum": 16}


def kernel_kind(name: str, opt: str) -> str:
    """``valley``, the optimizer's own kernel (its name), ``fused-<optimizer>``, or ``other``."""
    if "valley_update" in name:
        return f"fused-{opt}"
    if "valley" in name:
        return "valley"
    return opt if ("sign_family" in name or "adamw_kernel" in name) else "other"


def kernel_bytes(kind: str) -> int | None:
    if kind.startswith("fused-"):
        return FUSED_BYTES.get(kind.removeprefix("fused-"))
    return KERNEL_BYTES.get(kind)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--rows", type=int, default=(1 << 27) // 100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--optimizers", nargs="+", default=list(S.PAPER_SETUPS))
    ap.add_argument("--configs", nargs="*", default=[], help="valley kernel TILExWARPS variants to time")
    ap.add_argument("--fuse-update", action="store_true", help="the one-launch step (Options.fuse_update)")
    ap.add_argument("--steps-per-launch", type=int, default=S.STEPS_PER_LAUNCH, help="with --fuse-update")
    ap.add_argument("--fused-configs", nargs="*", default=[], help="fused kernel TILExWARPS variants to time")
    args = ap.parse_args()

    land = V.rotated() if args.dim == 2 else V.random_axis(args.dim)
    k = np.arange(args.rows)
    sigmas, lrs = np.linspace(0, 3, 100)[k % 100], np.logspace(-3, 0, 20)[(k // 100) % 20]
    block = S.Rows.make(0, 10.0, sigmas, lrs, 0.1)
    # packed rows are padded to a multiple of ROW_ALIGN: a chunk of that size holds them all in one
    chunk = -(-args.rows // S.ROW_ALIGN) * S.ROW_ALIGN
    opts = S.Options(device=args.device, kernels=True, pack_cells=True, chunk_rows=chunk,
                     fuse_update=args.fuse_update, steps_per_launch=args.steps_per_launch)  # fmt: skip
    per_launch = min(args.steps_per_launch, args.steps) if args.fuse_update else 1
    coords = chunk * args.dim
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    table: dict[str, dict] = {}
    for opt in args.optimizers:
        t0 = time.perf_counter()
        S.simulate(opt, block, land, max(2, per_launch), opts)  # compiles the variant that is timed
        sync()
        warm = time.perf_counter() - t0
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            S.simulate(opt, block, land, args.steps, opts)
            sync()
            wall = time.perf_counter() - t0
        rows = {}
        for ev in prof.key_averages():
            dev_us = getattr(ev, "device_time_total", 0.0) or getattr(ev, "cuda_time_total", 0.0)
            if ev.device_type != torch.autograd.DeviceType.CUDA or not dev_us:
                continue
            kind = kernel_kind(ev.key, opt)
            mean_us = dev_us / ev.count
            step_us = mean_us / per_launch if kind.startswith("fused-") else mean_us
            nbytes = kernel_bytes(kind)
            gbs = nbytes * coords / (mean_us * 1e-6) / 1e9 if nbytes else None
            rate = coords / (step_us * 1e-6)
            rows[ev.key[:60]] = {"kind": kind, "count": ev.count, "mean_us": mean_us, "GB/s": gbs,
                                 "us_per_step": step_us, "coord_steps_per_s": rate}  # fmt: skip
        table[opt] = {"warmup_s": warm, "wall_s_per_step": wall / args.steps, "kernels": rows}
        print(f"{opt}: warm-up {warm:.2f} s; {1e3 * wall / args.steps:.3f} ms/step wall "
              f"({args.rows} rows x {args.dim} dims)")  # fmt: skip
        for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["mean_us"] * kv[1]["count"]):
            bw = f"{r['GB/s']:8.0f} GB/s" if r["GB/s"] else " " * 13
            print(f"   {name:<60} x{r['count']:<5} {r['mean_us']:10.1f} us  {bw}  "
                  f"{r['us_per_step']:9.1f} us/step  {r['coord_steps_per_s']:.3e} coord-steps/s")  # fmt: skip
    step_opts = dataclasses.replace(opts, fuse_update=False)
    configs = {c: config_us(c, step_opts, block, land, args.steps) for c in args.configs}
    for c, us in configs.items():
        rate = f", {KERNEL_BYTES['valley'] * coords / (us * 1e-6) / 1e9:.0f} GB/s" if us else ""
        print(f"valley kernel, tile x warps {c}: {us:.1f} us per launch{rate}")
    fused_opts = dataclasses.replace(opts, fuse_update=True)
    fused_configs = {
        c: config_us(c, fused_opts, block, land, args.steps, "focus") for c in args.fused_configs
    }
    k = min(args.steps_per_launch, args.steps)
    for c, us in fused_configs.items():
        print(f"fused kernel (FOCUS, {k} steps a launch), tile x warps {c}: {us / k:.1f} us per step")
    if env_out := os.environ.get("OUT"):
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
        info = {"device": device, "torch": torch.__version__, "rows": args.rows, "dim": args.dim,
                "steps": args.steps, "fuse_update": args.fuse_update,
                "steps_per_launch": args.steps_per_launch, "table": table, "valley_configs_us": configs,
                "fused_configs_us_per_launch": fused_configs}  # fmt: skip
        write_json_atomic(Path(env_out) / f"toy_profile_d{args.dim}.json", info)
    return 0


def config_us(
    config: str, opts: S.Options, block: S.Rows, land: V.Valley, steps: int, opt: str = "signum"
) -> float:
    """Mean device microseconds per launch of the valley kernel (``opts.fuse_update``: of the fused
    kernel) with ``TILExWARPS`` (``TILExWARPS:precise``: with exact sines and cosines, see
    ``triton_valley.FAST_SINCOS``), running optimizer ``opt`` (0.0 without CUDA)."""
    from focus_optim.landscape import triton_valley as TV

    shape, _, math = config.lower().partition(":")
    tile, warps = (int(x) for x in shape.split("x"))
    names: tuple[str, ...] = ("FUSED_TILE", "FUSED_NUM_WARPS") if opts.fuse_update else ("TILE", "NUM_WARPS")
    names += ("FAST_SINCOS",)
    saved = tuple(getattr(TV, n) for n in names)
    for n, v in zip(names, (tile, warps, math != "precise")):
        setattr(TV, n, v)
    try:
        warm = min(opts.steps_per_launch, steps) if opts.fuse_update else 2
        S.simulate(opt, block, land, max(2, warm), opts)  # compile this variant outside the profile
        acts = [ProfilerActivity.CUDA] if opts.device.startswith("cuda") else [ProfilerActivity.CPU]
        with profile(activities=acts) as prof:
            S.simulate(opt, block, land, steps, opts)
    finally:
        for n, v in zip(names, saved):
            setattr(TV, n, v)
    want = "valley_update" if opts.fuse_update else "valley_step"
    for ev in prof.key_averages():
        dev_us = getattr(ev, "device_time_total", 0.0) or getattr(ev, "cuda_time_total", 0.0)
        if want in ev.key and ev.device_type == torch.autograd.DeviceType.CUDA and dev_us:
            return dev_us / ev.count
    return 0.0


if __name__ == "__main__":
    raise SystemExit(main())
