"""The full paper scan of Figure 2c/2d on one GPU, timed; figures, a precision check, the authors' loop ratio.

What it does (prints a table, writes ``$OUT/mnist_gpu.json``, results and figures under the out dir):

1. ``focus-optim mnist run --preset paper`` with every-step test evaluation: 4 optimizers x 12 batch
   sizes = 48 cells, each one ensemble of 20 lrs x 3 replicates = 60 MLPs trained 400 steps, the
   10,000 test images evaluated after every step (~4e15 FLOPs), on ``--workers`` processes sharing
   the GPU (largest batch sizes first). Timed from launch to the last cell written.
2. Figure 2c/2d + ``summary.txt`` (best lr, best loss +- std, I_Signum, crossover).
3. Precision check: one cell (AdamW, batch 64) again with an fp32 test pass; the largest relative
   difference of its test losses from the scan's (``--eval-precision``) ones.
4. The authors' one-model-at-a-time loop (``mnist_authors_loop.py``) for a few steps on the same
   GPU; its per-model-step time extrapolated to the paper scan, divided by this scan's wall time.

On a GPU machine (repo copied, MNIST in ``.data/mnist``, no internet)::

    PYTHONPATH=src python benchmarks/mnist_gpu.py                  # out dir: $OUT/mnist-paper

Smoke test on a CPU: ``python benchmarks/mnist_gpu.py --device cpu --preset quick --steps 4 --workers 2``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist_authors_loop as authors
from focus_optim import load_results
from focus_optim.atomic import write_json_atomic
from focus_optim.mnist.data import load_mnist
from focus_optim.mnist.plots import plot_results
from focus_optim.mnist.scan import PRESETS, run_scan
from focus_optim.mnist.train import DeviceData


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env_out = os.environ.get("OUT")
    ap.add_argument("--out", default=str(Path(env_out) / "mnist-paper") if env_out else "runs/mnist-gpu")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=8, help="processes sharing the GPU (16 CPU cores: 8)")
    ap.add_argument("--eval-precision", default="bf16", choices=("fp32", "tf32", "bf16"))
    ap.add_argument("--train-precision", default="fp32", choices=("fp32", "tf32"))
    ap.add_argument("--data-dir", default=".data/mnist")
    ap.add_argument("--no-verify", action="store_true", help="accept any well-formed IDX set (smoke tests)")
    ap.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=None, help="override (smoke tests only)")
    ap.add_argument("--no-check", action="store_true", help="skip the precision check and the authors' loop")
    ap.add_argument(
        "--compile", default=None, help="torch.compile mode per cell (default, max-autotune-no-cudagraphs)"
    )
    ap.add_argument("--fused", action="store_true", help="eager cells with the fused optimizer step")
    ap.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="eager cells replaying forward/backward and test pass as CUDA graphs",
    )
    ap.add_argument("--fused-eval", action="store_true", help="the bf16 test pass as one Triton kernel")
    args = ap.parse_args()
    args.compile = args.compile or None  # "" (the playbook's MNIST_COMPILE=) means eager

    t_start = time.perf_counter()
    out = Path(args.out)
    data = load_mnist(
        args.data_dir, download=False, verify=not args.no_verify
    )  # fails fast, naming the missing/corrupt file
    cfg = PRESETS[args.preset].replace(
        eval_precision=args.eval_precision, train_precision=args.train_precision
    )
    if args.steps:
        cfg = cfg.replace(steps=args.steps)
    info = {
        "benchmark": "mnist_gpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "workers": args.workers,
        "compile": args.compile,
        "fused": args.fused,
        "cuda_graphs": args.cuda_graphs,
        "fused_eval": args.fused_eval,
        "preset": args.preset,
        "eval_precision": cfg.eval_precision,
        "train_precision": cfg.train_precision,
        "cells": len(cfg.optimizers) * len(cfg.batch_sizes),
        "models_per_cell": cfg.members,
        "steps": cfg.steps,
        "data": data.data_id,
    }
    print(
        f"mnist_gpu: {info['device']}, torch {info['torch']}, {info['cells']} cells x {cfg.members} models "
        f"x {cfg.steps} steps, eval {cfg.eval_precision}, train {cfg.train_precision}, "
        f"{args.workers} workers, compile {args.compile}, fused {args.fused}, "
        f"cuda graphs {args.cuda_graphs}, fused eval {args.fused_eval}"
    )

    t0 = time.perf_counter()
    report = run_scan(
        cfg,
        out,
        workers=args.workers,
        device=args.device,
        data_dir=args.data_dir,
        verify=not args.no_verify,
        progress=True,
        compile=args.compile,
        fused=args.fused,
        cuda_graphs=args.cuda_graphs,
        fused_eval=args.fused_eval,
    )
    info["scan_seconds"] = time.perf_counter() - t0
    info["cells_computed"], info["cells_skipped"] = report.computed, report.skipped
    ds = load_results(out)
    info["complete"] = bool(ds.attrs["complete"])
    plot_results(ds, out / "figures")
    summary = (out / "figures" / "summary.txt").read_text()
    print(summary, end="")

    if not args.no_check:
        info.update(precision_check(cfg, out, args))
        info.update(authors_ratio(cfg, args, info["scan_seconds"], report.computed))
    info["total_seconds"] = time.perf_counter() - t_start

    print(f"{'scan wall time (s)':<38}{info['scan_seconds']:>10.1f}   ({report.computed} cells computed)")
    for key in (
        "check_max_rel_diff_test_loss",
        "authors_ms_per_model_step",
        "authors_scan_hours",
        "speedup_vs_authors",
    ):
        if key in info:
            print(f"{key:<38}{_fmt(info[key]):>10}")
    print(f"{'total (s)':<38}{info['total_seconds']:>10.1f}")
    if env_out := os.environ.get("OUT"):
        write_json_atomic(Path(env_out) / "mnist_gpu.json", info)
        shutil.copy(out / "figures" / "summary.txt", Path(env_out) / "mnist_summary.txt")
    write_json_atomic(out / "mnist_gpu.json", info)
    return 0


def precision_check(cfg, out: Path, args: argparse.Namespace) -> dict:
    """One cell (AdamW, batch 64, else the first) recomputed with an fp32 test pass."""
    bs = 64 if 64 in cfg.batch_sizes else cfg.batch_sizes[0]
    one = cfg.replace(optimizers=(cfg.optimizers[0],), batch_sizes=(bs,), eval_precision="fp32")
    check_dir = out.parent / (out.name + "-check-fp32")
    run_scan(
        one, check_dir, device=args.device, data_dir=args.data_dir, verify=not args.no_verify, progress=False
    )
    ref = load_results(check_dir)["history"].sel(metric="test_loss")
    got = load_results(out)["history"].sel(metric="test_loss", optimizer=cfg.optimizers[0], batch_size=bs)
    ref, got = ref.values.squeeze((0, 1)), got.values
    ok = np.isfinite(ref) & np.isfinite(got) & (np.abs(ref) < 1e3)
    rel = float(np.max(np.abs(got[ok] - ref[ok]) / np.abs(ref[ok]))) if ok.any() else float("nan")
    return {"check_cell": [cfg.optimizers[0], bs], "check_max_rel_diff_test_loss": rel}


def authors_ratio(cfg, args: argparse.Namespace, scan_seconds: float, computed: int) -> dict:
    """The authors' loop on this device, extrapolated to this scan, over the scan's wall time."""
    data = DeviceData.from_mnist(
        load_mnist(args.data_dir, download=False, verify=not args.no_verify), args.device
    )
    bss = [2, 64, 1024]
    per = [authors.authors_steps(data, bs, steps=10 if args.device.startswith("cuda") else 2) for bs in bss]
    a, b = authors.fit_linear(bss, per)
    total = sum((a + b * bs) * len(cfg.optimizers) * cfg.members * cfg.steps for bs in cfg.batch_sizes)
    out = {
        "authors_ms_per_model_step": dict(zip(map(str, bss), (1e3 * p for p in per))),
        "authors_scan_hours": total / 3600,
    }
    if computed == len(cfg.optimizers) * len(cfg.batch_sizes):
        out["speedup_vs_authors"] = total / scan_seconds
    return out


def _fmt(v: object) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k}:{x:.2f}" for k, x in v.items())
    return f"{v:.4g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    raise SystemExit(main())
