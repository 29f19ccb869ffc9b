"""Trajectory-steps per second of the toy-landscape simulator vs the paper's per-trajectory loop.

All variants run in this one process, side by side (timings on a shared machine are noisy; the
ratios are what to read):

* ``scalar``: a restatement of the paper's per-trajectory Python loop (one 2-D trajectory at a
  time, plain floats, Adam / Signum / FOCUS written out), a few trajectories;
* ``eager``: the batched simulator, rows of batched tensors, no compilation;
* ``compiled``: the batched simulator with the step fused by ``torch.compile`` (compile time is
  reported separately and excluded from the rate), for several chunk sizes on CPU;
* on CUDA (when present): ``compiled`` with cells packed, the GPU layout of the sweeps, and
  ``kernels``: the hand-written Triton valley kernel plus the optimizers' fused Triton step.

Each row reports trajectory-steps/s averaged over the three optimizers. The paper's Figure 2a
needs 28.8M trajectories x 1000 steps = 2.88e10 trajectory-steps; the table extrapolates.

::

    PYTHONPATH=src python benchmarks/toy_throughput.py                 # CPU, ~2-4 min
    PYTHONPATH=src python benchmarks/toy_throughput.py --device cuda --skip-cpu   # GPU rows, ~1-2 min
    PYTHONPATH=src python benchmarks/toy_throughput.py --dim 100 --steps-per-call 1 4   # Figure 6 right

``--dim N`` times Figure 6 right's N-D valley (rates stay per trajectory; multiply by N for
coordinate-steps); ``--steps-per-call`` compares compiled calls of one and of several steps.

``--host-overhead`` times only the host work per step of the Triton step (``kernels=True``): on
CUDA the whole cost of a 64-row step, launches included; on a CPU under ``TRITON_INTERPRET=1`` the
Python around the (stubbed) launches.

With ``$OUT`` set, ``$OUT/toy_throughput.json`` holds every number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import time
from typing import Any

import numpy as np
import torch

from focus_optim.landscape import simulate as S
from focus_optim.landscape import valley as V

FIG2A_TRAJECTORY_STEPS = 96 * 100 * 20 * 50 * 3 * 1000


def scalar_loop(opt: str, a: float, sigma: float, lr: float, wd: float, steps: int, rng: Any) -> float:
    """One trajectory of the paper's loop in plain Python floats; returns the final loss."""
    cs, sn = math.cos(math.pi / 6), math.sin(math.pi / 6)
    x, y = (float(v) for v in rng.normal(0.0, 1e-4, 2))
    noise = rng.normal(1.0, sigma, (steps, 2)).tolist()
    m, s = [0.0, 0.0], [0.0, 0.0]
    for t in range(1, steps + 1):
        u, v = x * cs + y * sn, -x * sn + y * cs
        du, dv = a * u * v * v - 0.1, a * u * u * v
        g = ((du * cs - dv * sn) * noise[t - 1][0], (du * sn + dv * cs) * noise[t - 1][1])
        p = [x, y]
        for i in range(2):
            if opt == "adamw":
                p[i] *= 1 - lr * wd
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                s[i] = 0.999 * s[i] + 0.001 * g[i] ** 2
                p[i] -= lr * (m[i] / (1 - 0.9**t)) / (math.sqrt(s[i] / (1 - 0.999**t)) + 1e-8)
            elif opt == "signum":
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                p[i] -= lr * (math.copysign(1.0, m[i]) + wd * p[i])
            else:
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                s[i] = 0.9 * s[i] + 0.1 * p[i]
                d = p[i] - s[i] / (1 - 0.9**t)
                p[i] -= lr * (math.copysign(1.0, m[i]) + 0.2 * ((d > 0) - (d < 0)) + wd * p[i])
        x, y = p
    u, v = x * cs + y * sn, -x * sn + y * cs
    return 0.5 * a * u * u * v * v - 0.1 * u


def rows(n: int, seed: int = 0) -> S.Rows:
    """``n`` trajectories spread over the paper's noise and lr ranges at a = 10, wd = 0.1."""
    k = np.arange(n)
    return S.Rows.make(
        seed, 10.0, np.linspace(0, 3, 100)[k % 100], np.logspace(-3, 0, 20)[(k // 100) % 20], 0.1
    )


def time_scalar(trajectories: int, steps: int) -> float:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for opt in S.PAPER_SETUPS:
        for i in range(trajectories):
            scalar_loop(opt, 10.0, 1.0, 0.01 * (1 + i % 3), 0.1, steps, rng)
    return 3 * trajectories * steps / (time.perf_counter() - t0)


def time_batched(n: int, steps: int, opts: S.Options, land: V.Valley | None = None) -> tuple[float, float]:
    """(trajectory-steps/s over the three optimizers, seconds of compilation/warm-up)."""
    block = rows(n)
    land = land or V.rotated()
    t0 = time.perf_counter()  # compile (or warm up) outside the timed region
    for opt in S.PAPER_SETUPS:
        S.simulate(opt, block, land, max(2, opts.steps_per_call), opts)
    warm = time.perf_counter() - t0
    sync = torch.cuda.synchronize if torch.device(opts.device).type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for opt in S.PAPER_SETUPS:
        S.simulate(opt, block, land, steps, opts)
    sync()
    return 3 * n * steps / (time.perf_counter() - t0), warm


def host_overhead(device: str, steps: int = 2000) -> dict[str, float]:
    """Microseconds of host work per step of the Triton step (``kernels=True``) on a 64-row chunk,
    per optimizer, with two launches a step (``adamw``...) and with ``fuse_update`` (``adamw-fused``...:
    the optimizer's recorded steps, one launch per ``STEPS_PER_LAUNCH``).

    On CUDA the GPU work of 64 rows is negligible, so this is the whole host cost of a step,
    launches included; a step is GPU-bound when its chunk's GPU time exceeds it. Under
    ``TRITON_INTERPRET=1`` on a CPU the three kernels are replaced by no-ops, which leaves the
    Python work around them (the launches themselves excluded)."""
    from stub_launches import stubbed_launches

    stub = stubbed_launches() if torch.device(device).type != "cuda" else contextlib.nullcontext()
    with stub:
        out = {}
        block = rows(64)
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        for fused in (False, True):
            opts = S.Options(device=device, kernels=True, fuse_update=fused)
            for opt in S.PAPER_SETUPS:
                S.simulate(opt, block, V.rotated(), 10, opts)
                sync()
                t0 = time.perf_counter()
                S.simulate(opt, block, V.rotated(), steps, opts)
                sync()
                out[opt + ("-fused" if fused else "")] = (time.perf_counter() - t0) / steps * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--steps", type=int, default=200, help="steps per batched trajectory (rates are per step)"
    )
    ap.add_argument("--scalar-trajectories", type=int, default=4)
    ap.add_argument("--chunks", type=int, nargs="+", default=[4096, 16384, 65536], help="CPU chunk sizes")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--gpu-rows", type=int, default=9_600_000, help="rows per optimizer on CUDA (Fig. 2a: 9.6M)"
    )
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--dim", type=int, default=2, help="2: the paper's valley; N > 2: Figure 6 right's")
    ap.add_argument(
        "--steps-per-call", type=int, nargs="+", default=[1], help="compiled steps per call to compare"
    )
    ap.add_argument("--skip-cpu", action="store_true", help="only the scalar baseline and the GPU rows")
    ap.add_argument(
        "--host-overhead",
        action="store_true",
        help="only the host work per step of the Triton step (CUDA; or stubbed launches under "
        "TRITON_INTERPRET=1 on a CPU)",
    )
    args = ap.parse_args()
    if args.host_overhead:
        us = host_overhead(args.device)
        for opt, v in us.items():
            print(f"{opt:<14s} {v:8.1f} us of host work per Triton step ({args.device})")
        if out := os.environ.get("OUT"):
            with open(os.path.join(out, "toy_host_overhead.json"), "w") as fh:
                json.dump(
                    {"device": args.device, "torch": torch.__version__, "us_per_step": us}, fh, indent=1
                )
        return 0

    results: list[dict[str, Any]] = []
    land = V.rotated() if args.dim == 2 else V.random_axis(args.dim)

    def add(name: str, rate: float, **kw: Any) -> None:
        row = {
            "variant": name,
            "traj_steps_per_s": rate,
            "fig2a_seconds": FIG2A_TRAJECTORY_STEPS / rate,
            **kw,
        }
        results.append(row)
        extra = " ".join(f"{k}={v}" for k, v in kw.items())
        print(
            f"{name:<34s} {rate:>12.3e} traj-steps/s  fig2a {row['fig2a_seconds']:>10.1f} s  {extra}",
            flush=True,
        )

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    add("scalar (paper loop, 1 thread)", time_scalar(args.scalar_trajectories, 1000), threads=1)
    for threads in [] if args.skip_cpu else args.threads:
        torch.set_num_threads(threads)
        for chunk in args.chunks:
            rate, _ = time_batched(chunk, args.steps, S.Options(compile=False, chunk_rows=chunk), land)
            add(f"eager cpu chunk={chunk} t={threads}", rate, threads=threads, chunk=chunk)
        if not args.no_compile and S.compile_available(torch.device("cpu")):
            for chunk in args.chunks:
                for k in args.steps_per_call:
                    opts = S.Options(compile=True, chunk_rows=chunk, steps_per_call=k)
                    rate, warm = time_batched(chunk, args.steps, opts, land)
                    add(
                        f"compiled cpu chunk={chunk} t={threads}" + (f" k={k}" if k != 1 else ""),
                        rate,
                        threads=threads,
                        chunk=chunk,
                        steps_per_call=k,
                        compile_s=round(warm, 1),
                    )
    torch.set_num_threads(before)
    if args.device.startswith("cuda") and torch.cuda.is_available():
        n_gpu = max(64, args.gpu_rows * 2 // args.dim)  # the same coordinates as 2-D rows
        variants = [(True, k) for k in ([] if args.no_compile else args.steps_per_call)] + [(False, 1)]
        for comp, k in variants:
            n = n_gpu if comp else n_gpu // 4
            opts = S.Options(device=args.device, compile=comp, pack_cells=True, steps_per_call=k)
            rate, warm = time_batched(n, args.steps, opts, land)
            name = f"{'compiled' if comp else 'eager'} cuda rows={n}" + (f" k={k}" if k != 1 else "")
            add(name, rate, compile_s=round(warm, 1), rows=n, steps_per_call=k)
        if S.kernels_available(torch.device(args.device)):
            for fuse in (False, True):
                opts = S.Options(device=args.device, kernels=True, pack_cells=True, fuse_update=fuse)
                rate, warm = time_batched(n_gpu, args.steps, opts, land)
                name = "kernels-fused" if fuse else "kernels"
                add(f"{name} cuda rows={n_gpu}", rate, compile_s=round(warm, 1), rows=n_gpu)
    scalar = results[0]["traj_steps_per_s"]
    for dev in ("cpu", "cuda") if args.dim == 2 else ():  # the paper's loop is 2-D
        rates = [r["traj_steps_per_s"] for r in results if f" {dev} " in r["variant"]]
        if rates:
            print(f"best {dev} batched / scalar loop: {max(rates) / scalar:.0f}x")
    info = {
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "steps": args.steps,
        "dim": args.dim,
        "results": results,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "toy_throughput.json"), "w") as fh:
            json.dump(info, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
