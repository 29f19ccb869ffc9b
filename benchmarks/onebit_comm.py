"""1-bit Adam vs DDP + AdamW: bytes sent per step and wall time per step, same model and steps.

For each world size ``n`` in ``--nproc`` the script spawns ``n`` ranks (``torch.multiprocessing``,
a free port on 127.0.0.1) and trains the same MLP (``--width``, ``--depth``; ~depth x width^2
parameters) on synthetic regression data with

* ``ddp_adamw``: DDP (fp32 gradient all-reduce every step) + AdamW;
* ``onebit_adam``: DDP + 1-bit Adam, warm-up of ``--warmup`` steps (DDP all-reduce), then the
  compression stage, where the loop runs backward under ``model.no_sync()`` as
  ``protocol.needs_grad_sync`` asks and the optimizer exchanges the 1-bit momentum.

Only the ``--steps`` steps after the warm-up are timed (median per rank, the slowest rank
reported). Bytes are those one rank sends per step: for DDP the ring all-reduce model
``2(n-1)/n * 4 * numel``; for 1-bit Adam ``comm_stats["bytes_sent"]`` (the two compressed
phases, counted as described in ``focus_optim.optim._comm``). ``comm ms`` times the
communication alone on the same parameters: one fp32 ``all_reduce`` of all gradients vs one
``compressed_allreduce_`` of all momenta (compression arithmetic included).

CPU (gloo), a quick run::

    PYTHONPATH=src python benchmarks/onebit_comm.py --nproc 2,4

GPU (NCCL): each rank uses ``cuda:(rank % device_count)``. NCCL refuses two ranks on one GPU
("Duplicate GPU detected"), so on a one-GPU machine ``--backend nccl --nproc 2`` records the
error and the GPU figure needs >= 2 GPUs; ``--backend gloo --device cuda`` runs the ranks on one
GPU with gloo (phase 1 then falls back to all-gather, gloo has no CUDA all-to-all)::

    PYTHONPATH=src python benchmarks/onebit_comm.py --backend nccl --nproc 2 --width 4096 --depth 8

Prints a table; writes ``$OUT/onebit_comm.json`` if ``OUT`` is set (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from focus_optim import make_optimizer
from focus_optim.optim import OneBitAdam, _comm, protocol

METHODS = ("ddp_adamw", "onebit_adam")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(width: int, depth: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(32, width), nn.GELU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_method(method: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    rank, n = dist.get_rank(), dist.get_world_size()
    net = _model(args.width, args.depth, device)
    model = nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )
    if method == "ddp_adamw":
        opt = make_optimizer("adamw", model, lr=1e-3, weight_decay=0.0)
    else:
        opt = make_optimizer("onebit_adam", model, lr=1e-3, freeze_step=args.warmup)
    gen = torch.Generator(device="cpu").manual_seed(1000 + rank)
    numel = sum(p.numel() for p in net.parameters())
    times, sent = [], []
    for step in range(args.warmup + args.steps):
        x = torch.randn(args.batch, 32, generator=gen).to(device)
        y = x[:, :1].sin()
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with nullcontext() if protocol.needs_grad_sync(opt) else model.no_sync():
            nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            if method == "ddp_adamw":
                sent.append(_comm.ring_allreduce_bytes(numel, n))
            else:
                stats = cast(OneBitAdam, opt).comm_stats  # make_optimizer("onebit_adam", ...) above
                assert stats["phase"] == "compressed", stats
                sent.append(stats["bytes_sent"])
    return {
        "numel": numel,
        "step_ms": 1e3 * statistics.median(times),
        "bytes_per_step": statistics.mean(sent),
        "phase1": getattr(opt, "comm_stats", {}).get("phase1", "all_reduce"),
        "comm_ms": _comm_only(method, net, device, args.comm_reps),
    }


def _comm_only(method: str, net: nn.Module, device: torch.device, reps: int) -> float:
    """Median ms of the communication alone: fp32 all_reduce of all gradients, or one compressed
    all-reduce of all momenta (the optimizer's bucketed call, compression included)."""
    n = dist.get_world_size()
    params = [p.detach() for p in net.parameters()]
    bufs = [torch.randn_like(p) for p in params]
    if method == "onebit_adam":
        lps = [_comm.padded_numel(p.numel(), n) for p in params]
        werr = [torch.zeros(lp, device=device) for lp in lps]
        serr = [torch.zeros(lp // n, device=device) for lp in lps]
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        if method == "ddp_adamw":
            flat = torch.cat([b.reshape(-1) for b in bufs])
            dist.all_reduce(flat)
        else:
            _comm.compressed_allreduce_(bufs, werr, serr)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _worker(rank: int, n: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    torch.set_num_threads(max(1, args.threads))
    result: dict[str, Any] = {}
    try:
        if args.device == "cuda":
            device = torch.device("cuda", rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n)
        for method in METHODS:
            result[method] = _run_method(method, args, device)
            dist.barrier()
    except Exception as exc:  # recorded (e.g. NCCL's duplicate-GPU refusal), reported by the parent
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def bench(n: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.spawn(_worker, args=(n, _free_port(), args, tmp), nprocs=n, join=False)
        deadline = time.monotonic() + args.timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    if proc.is_alive():
                        proc.terminate()
                return {"world_size": n, "error": f"timed out after {args.timeout} s"}
        ranks: list[dict[str, Any]] = []
        for r in range(n):
            path = Path(tmp) / f"rank{r}.pt"
            ranks.append(torch.load(path, weights_only=True) if path.exists() else {"error": "no result"})
    errors = [r["error"] for r in ranks if "error" in r]
    if errors:
        return {"world_size": n, "error": errors[0], "traceback": ranks[0].get("traceback", "")}
    out: dict[str, Any] = {"world_size": n}
    for method in METHODS:
        per_rank = [r[method] for r in ranks]
        out[method] = {
            "numel": per_rank[0]["numel"],
            "bytes_per_step": per_rank[0]["bytes_per_step"],
            "step_ms": max(r["step_ms"] for r in per_rank),
            "comm_ms": max(r["comm_ms"] for r in per_rank),
            "phase1": per_rank[0]["phase1"],
        }
    return out


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'n':>2} {'method':<12} {'params':>9} {'bytes/step/rank':>16} "
        f"{'vs fp32':>8} {'step ms':>8} {'comm ms':>8}  phase 1"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        if "error" in res:
            lines.append(f"{res['world_size']:>2} error: {res['error'].splitlines()[0][:100]}")
            continue
        ref = res["ddp_adamw"]["bytes_per_step"]
        for method in METHODS:
            r = res[method]
            lines.append(
                f"{res['world_size']:>2} {method:<12} {r['numel']:>9,} {r['bytes_per_step']:>16,.0f} "
                f"{r['bytes_per_step'] / ref:>8.4f} {r['step_ms']:>8.2f} {r['comm_ms']:>8.2f}  {r['phase1']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", default="2,4", help="comma-separated world sizes (default 2,4)")
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    ap.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda for nccl, else cpu"
    )
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=5, help="1-bit Adam freeze_step; these steps are not timed")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after the warm-up)")
    ap.add_argument("--comm-reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per world size")
    ap.add_argument("--json", default=None, help="output path (default: $OUT/onebit_comm.json if OUT is set)")
    args = ap.parse_args(argv)
    args.device = args.device or ("cuda" if args.backend == "nccl" else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1

    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results = [bench(int(n), args) for n in args.nproc.split(",")]
    meta = {
        "date": started,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
        **{k: v for k, v in vars(args).items() if k not in ("json",)},
    }
    print(f"# {meta['date']}  backend={args.backend} device={args.device} torch={meta['torch']}")
    print(table(results))
    for res in results:
        if "error" in res and args.backend == "nccl" and meta["gpu_count"] < res["world_size"]:
            print(
                f"note: n={res['world_size']} needs {res['world_size']} GPUs for NCCL "
                f"({meta['gpu_count']} visible); NCCL does not put two ranks on one GPU"
            )
    out_path = args.json or (
        os.path.join(os.environ["OUT"], "onebit_comm.json") if os.environ.get("OUT") else None
    )
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{out_path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        os.replace(tmp, out_path)
        print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
