"""One optimizer step on FSDP2-sharded GPT-2 parameter shapes, side by side with torch's AdamW.

Run under torchrun (gloo on CPU, NCCL on CUDA)::

    torchrun --nproc-per-node 2 benchmarks/fsdp_step.py --shapes small --reps 5

Every parameter is sharded with ``fully_shard`` (dim 0 over the ranks) and holds a gradient; each
candidate's ``step()`` is timed on every rank (a barrier before each step) and the slowest rank's
median is reported, with its ratio to ``torch.optim.AdamW(foreach=True)`` measured in the same run.
Element-wise optimizers step on the local shards. Muon and ROOT with ``distributed=False``
all-gather each whole matrix and orthogonalise it on every rank; by default each matrix's row
shards go to one owner rank, which orthogonalises it and scatters the rows back
(``focus_optim.optim._owners``). The "all-gather + broadcast" rows time the earlier sharing
(``_owners.GATHER_ON_OWNER = False``: every rank gathers, the owner computes and broadcasts), and
the ``ns_steps=0`` rows isolate the communication (no Newton-Schulz iteration, only its
normalisation). Conda's ``T=1000`` rows time steps without an SVD refresh: every matrix gathered
and updated whole on every rank (``conda.ROTATE_ON_SHARDS = False``) against each rank updating
its own rows.

``--layout replicated`` times the same candidates on whole, replicated parameters instead (as
under DDP after its all-reduce); there the matrix optimizers share their work with
``distributed=True``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from focus_optim import FOCUS, make_optimizer, zero_redundancy
from focus_optim.atomic import write_json_atomic
from focus_optim.bench.step import GPT2_SMALL, QUICK, ShapeModel, gpt2_shapes
from focus_optim.optim import _dtensor, _owners, conda

CONDA_T1: dict[str, Any] = dict(update_proj_gap=1)
FOCUS_HP: dict[str, Any] = dict(lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2)
CANDIDATES = {
    "torch AdamW (foreach)": lambda m: torch.optim.AdamW(m.parameters(), lr=6e-4, foreach=True),
    "torch AdamW (fused)": lambda m: torch.optim.AdamW(m.parameters(), lr=6e-4, fused=True),
    "focus (foreach)": lambda m: FOCUS(m.parameters(), **FOCUS_HP, foreach=True),
    "focus (fused)": lambda m: FOCUS(m.parameters(), **FOCUS_HP, fused=True),
    "focus (fused, ZeRO-1)": lambda m: zero_redundancy(FOCUS(m.parameters(), **FOCUS_HP, fused=True)),
    "signum (fused)": lambda m: make_optimizer("signum", m, lr=6e-4, weight_decay=0.2, fused=True),
    "adamw, ours (foreach)": lambda m: make_optimizer("adamw", m, lr=6e-4, foreach=True),
    "lion (foreach)": lambda m: make_optimizer("lion", m, lr=1e-4, foreach=True),
    "muon (every rank every matrix)": lambda m: make_optimizer("muon", m, distributed=False),
    "muon (matrix work shared)": lambda m: make_optimizer("muon", m, distributed=SHARED),
    "muon (shared, all-gather + broadcast)": lambda m: make_optimizer("muon", m, distributed=SHARED),
    "muon ns_steps=0 (shared)": lambda m: make_optimizer("muon", m, distributed=SHARED, ns_steps=0),
    "muon ns_steps=0 (shared, all-gather + broadcast)": (
        lambda m: make_optimizer("muon", m, distributed=SHARED, ns_steps=0)
    ),
    "root (every rank every matrix)": lambda m: make_optimizer("root", m, distributed=False),
    "root (matrix work shared)": lambda m: make_optimizer("root", m, distributed=SHARED),
    "root (shared, all-gather + broadcast)": lambda m: make_optimizer("root", m, distributed=SHARED),
    # an SVD refresh every step (update_proj_gap=1), to time what sharing the refreshes saves
    "conda T=1 (every rank every SVD)": lambda m: make_optimizer("conda", m, **CONDA_T1, distributed=False),
    "conda T=1 (SVDs shared)": lambda m: make_optimizer("conda", m, **CONDA_T1, distributed=SHARED),
    "conda T=1 (SVDs shared, all-gather + broadcast)": (
        lambda m: make_optimizer("conda", m, **CONDA_T1, distributed=SHARED)
    ),
    # no refresh after the warm-up's first step: the rotations, whole on every rank or on the shards
    "conda T=1000 (every matrix whole)": lambda m: make_optimizer("conda", m, update_proj_gap=1000),
    "conda T=1000 (on the row shards)": lambda m: make_optimizer("conda", m, update_proj_gap=1000),
}
SHARED: bool | None = None  # the matrix optimizers' ``distributed`` for sharing (set by --layout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", choices=("small", "quick"), default="small")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layout", choices=("fsdp", "replicated"), default="fsdp")
    parser.add_argument("--only", nargs="*", help="substrings of candidate names")
    parser.add_argument("--json", type=Path, help="write the report here (rank 0)")
    args = parser.parse_args()
    global SHARED
    SHARED = None if args.layout == "fsdp" else True

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    shapes = gpt2_shapes(**(GPT2_SMALL if args.shapes == "small" else QUICK))

    rows: list[dict[str, Any]] = []
    for label, factory in CANDIDATES.items():
        if args.only and not any(o.lower() in label.lower() for o in args.only):
            continue
        if "ZeRO" in label and args.layout == "fsdp":  # FSDP shards the state already
            continue
        model = ShapeModel(shapes, device, torch.float32)
        grads = [p.grad for p in model.parameters()]
        if args.layout == "fsdp":
            fully_shard(model)
            for p, g in zip(model.parameters(), grads):  # a gradient sharded like its parameter
                assert isinstance(p, DTensor)  # fully_shard turned every parameter into a DTensor
                assert g is not None  # ShapeModel gives every parameter a gradient
                p.grad = distribute_tensor(g, p.device_mesh, p.placements)
        opt = factory(model)
        _owners.GATHER_ON_OWNER = "all-gather" not in label
        conda.ROTATE_ON_SHARDS = "whole" not in label
        times = []
        for i in range(args.warmup + args.reps):
            dist.barrier()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        median = torch.tensor(statistics.median(times), dtype=torch.float64, device=device)
        dist.all_reduce(median, op=dist.ReduceOp.MAX)
        state = getattr(opt, "optim", opt).state  # ZeRO: this rank's own optimizer
        nbytes = sum(
            _dtensor.local(t).numel() * t.element_size()
            for s in state.values()
            for t in s.values()
            if torch.is_tensor(t) and t.ndim > 0
        )
        state_mb = torch.tensor(nbytes / 2**20, dtype=torch.float64, device=device)
        dist.all_reduce(state_mb, op=dist.ReduceOp.MAX)
        rows.append(dict(name=label, ms=float(median) * 1e3, state_mb_per_rank=float(state_mb)))
        del model, opt

    base = next((r["ms"] for r in rows if r["name"] == "torch AdamW (foreach)"), None)
    for r in rows:
        r["x_torch_adamw_foreach"] = r["ms"] / base if base else None
    if rank == 0:
        report = dict(
            device=torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
            world_size=world,
            threads_per_rank=torch.get_num_threads(),
            torch=torch.__version__,
            date=dt.date.today().isoformat(),
            command="torchrun --nproc-per-node "
            + str(world)
            + " benchmarks/fsdp_step.py "
            + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            shapes=args.shapes,
            layout=args.layout,
            n_params=sum(torch.Size(s).numel() for _, s in shapes),
            results=rows,
        )
        for r in rows:
            ratio = r["x_torch_adamw_foreach"]
            print(
                f"{r['name']:32s} {r['ms']:10.1f} ms  state {r['state_mb_per_rank']:7.1f} MB/rank"
                + (f"  {ratio:5.2f}x" if ratio else "")
            )
        if args.json:
            write_json_atomic(args.json, report, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
