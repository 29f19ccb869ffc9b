"""FOCUS's fastest CPU path against torch AdamW's paths, interleaved step by step on GPT-2-small shapes.

On a shared, noisy machine a table of separate timings can mislead; here each round times one step
of every optimizer in turn, so all see the same conditions, and the medians' ratios are reported.

    PYTHONPATH=src python benchmarks/cpu_head_to_head.py [--rounds 9] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from focus_optim import FOCUS
from focus_optim.bench.reference_loop import ReferenceLoopFOCUS
from focus_optim.bench.step import GPT2_SMALL, ShapeModel, gpt2_shapes

HP: dict[str, Any] = dict(lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model = ShapeModel(gpt2_shapes(**GPT2_SMALL), "cpu", torch.float32)
    params = list(model.parameters())
    opts = {
        "focus fused (compiled)": FOCUS(params, **HP, fused=True),
        "focus single-tensor": FOCUS(params, **HP, foreach=False),
        "torch AdamW fused": torch.optim.AdamW(params, lr=6e-4, fused=True),
        "torch AdamW for-loop": torch.optim.AdamW(params, lr=6e-4, foreach=False),
        "torch AdamW foreach": torch.optim.AdamW(params, lr=6e-4, foreach=True),
        "authors' loop": ReferenceLoopFOCUS(params, **HP),
    }
    for opt in opts.values():  # state allocation and compilation stay out of the timings
        opt.step()
        opt.step()
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(args.rounds):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    base = med["focus fused (compiled)"]
    print(f"GPT-2 small shapes, fp32, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    print(f"{'optimizer':<26} {'median ms':>10} {'/ focus fused':>14}")
    for k, v in med.items():
        print(f"{k:<26} {v:>10.1f} {v / base:>13.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"median_ms": med, "rounds": args.rounds, "torch": torch.__version__}, fh, indent=1)


if __name__ == "__main__":
    main()
