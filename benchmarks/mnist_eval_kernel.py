"""The MNIST cell's test pass: the cuBLAS bf16 pass against the fused Triton kernel, side by side.

One test pass of the paper scan (60 members, all 10,000 test images, after every training step)
is ~219 GFLOP of bf16 products; the cuBLAS pass also writes and reads back every layer's
activations (~3.7 GB, ``benchmarks/mnist_step_costs.py``), the fused kernel
(``focus_optim.mnist.triton_eval``) keeps them on chip. On CUDA this times, in one process and
interleaved, the cuBLAS pass (all images at once, and in chunks that may stay in L2) and the fused
kernel under each ``--configs`` entry ``BLOCK_NxWARPSxSTAGES``, and checks each against the fp32
pass::

    PYTHONPATH=src python benchmarks/mnist_eval_kernel.py                # CUDA, ~1 min

``--registers`` compiles the configs for an H100 (sm_90) without one and prints registers,
spills and shared memory per program from Triton's own ptxas log::

    PYTHONPATH=src python benchmarks/mnist_eval_kernel.py --registers    # CPU

With ``$OUT`` set, ``$OUT/mnist_eval_kernel.json`` holds every number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from focus_optim.atomic import write_json_atomic

CONFIGS = ["128x8x3", "64x8x3", "128x4x3", "64x4x4", "128x8x4"]


def parse_config(text: str) -> tuple[int, int, int]:
    block_n, warps, stages = (int(v) for v in text.split("x"))
    return block_n, warps, stages


def registers(configs: list[str]) -> list[dict[str, Any]]:
    os.environ.update(TRITON_DUMP_PTXAS_LOG="1", TRITON_ALWAYS_COMPILE="1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from focus_optim.mnist import triton_eval as T
    from toy_registers import kernel_usage

    types = ["*bf16", "*bf16", "*fp32", "*bf16", "*fp32", "*bf16", "*fp32", "*i64", "*fp32", "*fp32"]
    types += ["i32"] * 4
    rows = []
    for text in configs:
        block_n, warps, stages = parse_config(text)
        constexprs = dict(
            K=784, HIDDEN_LAYERS=4, H=128, CP=16, BLOCK_N=block_n, BLOCK_K=T.BLOCK_K, WIDEN=False
        )
        usage = kernel_usage(
            T._mlp_eval_kernel, types, constexprs, {"num_warps": warps, "num_stages": stages}
        )
        rows.append({"config": text, **usage})
        spills = f"{usage['spill_stores']}/{usage['spill_loads']} B"
        print(f"{text:>10}: {usage['registers']} registers, spills {spills}, "
              f"{usage['shared_bytes'] / 1024:.0f} KiB shared")  # fmt: skip
    return rows


def cuda_times(args: argparse.Namespace) -> dict[str, Any]:
    from focus_optim.mnist import triton_eval as T
    from focus_optim.mnist.model import EnsembleMLP

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = EnsembleMLP(args.members, device=device).eval()
    with torch.no_grad():
        for b in model.all_blocks():
            b.norm.running_var.uniform_(0.5, 2.0)
            b.norm.running_mean.uniform_(-0.1, 0.1)
    x_t = torch.rand(784, args.images, device=device)
    labels = torch.randint(0, 10, (args.images,), device=device)
    aug = EnsembleMLP.augment_inputs(x_t, torch.bfloat16)  # what a cell caches
    ref_loss = model.evaluate(x_t, labels)[0]
    flops = 2 * args.images * sum(w.shape[0] * w.shape[1] * w.shape[2] for w, _ in model.folded_layers())

    cases: dict[str, Any] = {"cublas": lambda: model.evaluate(aug, labels, precision="bf16")}
    for chunk in args.chunks:
        cases[f"cublas chunk {chunk}"] = lambda c=chunk: model.evaluate(
            aug, labels, precision="bf16", chunk=c
        )

    def fused(config: str) -> Any:
        def run() -> Any:
            T.BLOCK_N, T.NUM_WARPS, T.NUM_STAGES = parse_config(config)
            return model.evaluate(aug, labels, precision="bf16", fused=True)

        return run

    for config in args.configs:
        cases[f"fused {config}"] = fused(config)
    times: dict[str, list[float]] = {name: [] for name in cases}
    errors = {}
    for name, fn in cases.items():  # warm up (compile), and the error against fp32
        errors[name] = (fn()[0] - ref_loss).abs().max().item()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(args.reps):
        for name, fn in cases.items():
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / 1e3)
    rows = []
    base = statistics.median(times["cublas"])
    print(f"test pass: {args.members} members x {args.images} images, {flops / 1e9:.0f} GFLOP, "
          f"median of {args.reps}, {torch.cuda.get_device_name()}")  # fmt: skip
    for name in cases:
        t = statistics.median(times[name])
        row = {"case": name, "ms": 1e3 * t, "tflops": flops / t / 1e12, "vs_cublas": base / t,
               "max_loss_error_vs_fp32": errors[name]}  # fmt: skip
        rows.append(row)
        print(f"{name:>22}: {row['ms']:7.3f} ms  {row['tflops']:6.1f} TFLOP/s  {row['vs_cublas']:5.2f}x  "
              f"|loss - fp32| {row['max_loss_error_vs_fp32']:.1e}")  # fmt: skip
    return {"device": torch.cuda.get_device_name(), "gflop": flops / 1e9, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS, help="BLOCK_NxWARPSxSTAGES")
    ap.add_argument("--registers", action="store_true", help="compile for sm_90 and report (no GPU needed)")
    ap.add_argument("--members", type=int, default=60)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--chunks", type=int, nargs="*", default=[2000, 1000])
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    info: dict[str, Any] = {"args": vars(args)}
    if args.registers:
        info["registers"] = registers(args.configs)
    elif torch.cuda.is_available():
        info["cuda"] = cuda_times(args)
    else:
        print("mnist_eval_kernel: no CUDA device (use --registers on a CPU)", file=sys.stderr)
        return 2
    if env_out := os.environ.get("OUT"):
        write_json_atomic(Path(env_out) / "mnist_eval_kernel.json", info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
