"""Time the fused FOCUS Triton kernel for a few launch configurations on GPT-2-small shapes.

Run on a GPU: ``PYTHONPATH=src python benchmarks/tune_fused_focus.py``. Prints ms/step and the
ratio to the copy-bandwidth roofline (28 B/param for fp32) for each (BLOCK, num_warps), next to
torch's fused AdamW in the same process.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch

from focus_optim import FOCUS
from focus_optim.bench.step import GPT2_SMALL, ShapeModel, _time, copy_bandwidth, gpt2_shapes
from focus_optim.optim._kernels import triton_sign


def main() -> None:
    device = "cuda"
    shapes = gpt2_shapes(**GPT2_SMALL)
    bw = copy_bandwidth(device)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = ShapeModel(shapes, device, dtype)
        n = sum(p.numel() for p in model.parameters())
        roof = 7 * torch.empty((), dtype=dtype).element_size() * n / bw
        adamw = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=True)
        t = statistics.median(_time(adamw.step, device, warmup=5, reps=20))
        rows.append(dict(dtype=str(dtype), config="torch fused AdamW", ms=t * 1e3, x=t / roof))
        del adamw
        # host-side cost of one fused step (no GPU sync inside the loop, measured after a sync)
        opt = FOCUS(model.parameters(), lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2, fused=True)
        opt.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            opt.step()
        host = (time.perf_counter() - t0) / 20
        torch.cuda.synchronize()
        rows.append(
            dict(dtype=str(dtype), config="focus fused: host time per step", ms=host * 1e3, x=host / roof)
        )
        del opt
        for block, warps in [(512, 2), (1024, 2), (1024, 4), (2048, 4), (2048, 8), (4096, 8)]:
            triton_sign.BLOCK, triton_sign.NUM_WARPS = block, warps
            opt = FOCUS(
                model.parameters(), lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2, fused=True
            )
            t = statistics.median(_time(opt.step, device, warmup=5, reps=20))
            rows.append(dict(dtype=str(dtype), config=f"focus fused BLOCK={block} warps={warps}", ms=t * 1e3,
                             x=t / roof))  # fmt: skip
            del opt
        del model
        torch.cuda.empty_cache()
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s on {torch.cuda.get_device_name()}")
    for r in rows:
        print(f"{r['dtype']:<16} {r['config']:<40} {r['ms']:8.3f} ms {r['x']:6.2f}x roofline")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "tune_fused_focus.json"), "w") as fh:
            json.dump(dict(bandwidth=bw, rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
