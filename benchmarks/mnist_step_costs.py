"""Bytes and FLOPs of one MNIST cell step, per operator, with no device: a roofline model of the scan.

It runs the cell's own code (``DeviceData.batch``, ``member_losses`` and its backward, the test pass
``EnsembleMLP.evaluate``) on meta tensors (shapes only, nothing computed) under a dispatch mode that
records every ATen operator's bytes moved and FLOPs:

* bytes: each input's distinct elements (a broadcast dimension counts once; the table an index op
  reads from counts as the rows it gathers) plus each output's; views move nothing;
* FLOPs: ``torch.utils.flop_counter``'s formulas (matrix products).

A modelled time per operator is ``max(bytes / BW, FLOPs / peak, floor)``, with the peak for its
dtype (fp32 without tensor cores for fp32 matrix products, bf16 tensor cores for bf16) and a
per-kernel floor. Summed over the paper scan's 48 cells x 400 steps it is a lower bound on the
scan's device time, to compare with the measured wall time, and it tells which operators are
worth removing. The optimizer step is modelled as the fused kernel's one pass over its tensors.

The defaults are H100 SXM figures measured on the lent machine (KINDS.md: 3.0 TB/s copy, 798 TFLOP/s
bf16 GEMM) and an assumed 50 TFLOP/s for fp32 matrix products (75% of the 67 TFLOP/s FP32 peak)::

    PYTHONPATH=src python benchmarks/mnist_step_costs.py
    PYTHONPATH=src python benchmarks/mnist_step_costs.py --batch-sizes 4096 --ops 12   # top operators

``--unfolded`` models the input layer as the cell ran it before 2026-11-23 (the gathered batch
copied feature-major, ``F.batch_norm``, then the linear layer, with the input-gradient GEMM that
BN's parameter gradients need) instead of BN folded into the GEMM (``Block._folded``). ``--time B``
also times both on this machine's CPU, forward + backward of batch ``B``, interleaved::

    PYTHONPATH=src python benchmarks/mnist_step_costs.py --batch-sizes 4096 --unfolded --time 1024

``--fused-eval`` also models the test pass as the fused Triton kernel (``evaluate(fused=True)``):
its host work (folding, casts) as tallied, the launch as one read of its inputs at its FLOPs.

With ``$OUT`` set, ``$OUT/mnist_step_costs.json`` holds every number.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from focus_optim.atomic import write_json_atomic
from focus_optim.mnist.model import WIDTHS, Block, EnsembleMLP
from focus_optim.mnist.scan import PRESETS
from focus_optim.mnist.train import DeviceData, member_losses

aten = torch.ops.aten
#: Operators that index into a table: the table counts as the elements gathered, not its size.
GATHERS = {aten.index.Tensor, aten.index_select.default, aten.gather.default, aten.embedding.default}
#: Operators that move no data: allocations, and a view its schema does not declare as one.
NO_TRAFFIC = {aten._unsafe_view.default, aten.empty.memory_format, aten.empty_strided.default,
              aten.empty_like.default, aten.new_empty.default, aten.new_empty_strided.default}  # fmt: skip
FUSED_STEP_WORDS = 7  # FOCUS's fused pass: param r/w, grad r, momentum r/w, parameter average r/w


@dataclass
class OpCost:
    phase: str
    op: str
    bytes: int
    flops: int
    matmul_dtype: torch.dtype | None


def distinct_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor view covers (stride-0 dimensions count once)."""
    n = math.prod(s for s, st in zip(t.shape, t.stride()) if st != 0) if t.dim() else 1
    return n * t.element_size()


class CostTally(TorchDispatchMode):
    """Records an :class:`OpCost` for every operator dispatched inside it (``phase`` labels them)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = ""
        self.ops: list[OpCost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        returns = func._schema.returns
        if func in NO_TRAFFIC or (
            returns and all(r.alias_info and not r.alias_info.is_write for r in returns)
        ):
            return out  # an allocation or a view: no data moves
        moved = sum(distinct_bytes(t) for t in outs)
        if func in GATHERS:
            moved += moved + sum(distinct_bytes(t) for t in ins[1:])  # rows read, indices
        else:
            moved += sum(distinct_bytes(t) for t in ins)
        packet = func.overloadpacket
        flops = int(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0
        dtype = ins[0].dtype if flops else None
        self.ops.append(OpCost(self.phase, str(packet).removeprefix("aten."), moved, flops, dtype))
        return out


@contextlib.contextmanager
def unfolded() -> Iterator[None]:
    """Every block as BN then linear on a contiguous input: the input layer as before the fold."""
    fold = Block.forward

    def bn_then_linear(self: Block, h: torch.Tensor, *, update_stats: bool = True) -> torch.Tensor:
        return self.linear(self.norm(h.contiguous(), update_stats=update_stats))

    Block.forward = bn_then_linear  # type: ignore[method-assign]
    try:
        yield
    finally:
        Block.forward = fold  # type: ignore[method-assign]


def time_cpu(members: int, batch: int, reps: int) -> dict[str, float]:
    """Median seconds of one training forward + backward, folded vs unfolded, interleaved."""
    torch.manual_seed(0)
    data = DeviceData(
        torch.rand(60_000, WIDTHS[0]),
        torch.randint(0, 10, (60_000,)),
        torch.rand(WIDTHS[0], 16),
        torch.randint(0, 10, (16,)),
    )
    model = EnsembleMLP(members)
    idx = torch.randint(0, 60_000, (members, batch))
    times: dict[str, list[float]] = {"folded": [], "unfolded": []}

    def once() -> float:
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        member_losses(model, *data.batch(idx)).sum().backward()
        return time.perf_counter() - t0

    for _ in range(reps + 1):  # the first round warms up
        times["folded"].append(once())
        with unfolded():
            times["unfolded"].append(once())
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def step_costs(
    members: int, batch: int, eval_precision: str, test_images: int = 10_000, fused_eval: bool = False
) -> list[OpCost]:
    """Every operator of one training step (forward, backward) and one test pass of a cell.

    ``fused_eval``: the test pass as the fused Triton kernel, whose host work (folding, casts) is
    tallied and whose launch is modelled as reading its inputs once, at its matrix products' FLOPs."""
    meta = torch.device("meta")
    data = DeviceData(
        torch.empty(60_000, WIDTHS[0], device=meta),
        torch.empty(60_000, dtype=torch.int64, device=meta),
        torch.empty(WIDTHS[0], test_images, device=meta),
        torch.empty(test_images, dtype=torch.int64, device=meta),
    )
    model = EnsembleMLP(members, device=meta)
    test_x = data.test_images(eval_precision)  # made once per cell, not per step
    idx = torch.empty(members, batch, dtype=torch.int64, device=meta)
    tally = CostTally()
    with tally:
        tally.phase = "train"
        x, y = data.batch(idx)
        member_losses(model, x, y).sum().backward()
        tally.phase = "test"
        model.eval()
        if fused_eval:
            from focus_optim.mnist.triton_eval import kernel_inputs

            layers = model.folded_layers()
            inputs = kernel_inputs(layers, test_x, data.test_y)
    if fused_eval:
        read = sum(distinct_bytes(t) for t in inputs[1:]) + 2 * WIDTHS[0] * test_images + 2 * 8 * test_images
        flops = 2 * test_images * sum(w.numel() for w, _ in layers)
        tally.ops.append(OpCost("test", "fused test pass", read, flops, torch.bfloat16))
    else:
        with tally:
            model.evaluate(test_x, data.test_y, precision=eval_precision)
    params = sum(p.numel() for p in model.parameters())
    tally.ops.append(OpCost("optimizer", "fused step", FUSED_STEP_WORDS * 4 * params, 0, None))
    return tally.ops


def modelled_seconds(op: OpCost, args: argparse.Namespace) -> float:
    peak = args.fp32_flops if op.matmul_dtype == torch.float32 else args.bf16_flops
    return max(op.bytes / args.bandwidth, op.flops / peak if op.flops else 0.0, args.floor)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper", choices=list(PRESETS))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: the preset's")
    ap.add_argument("--eval-precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s")
    ap.add_argument("--fp32-flops", type=float, default=50e12)
    ap.add_argument("--bf16-flops", type=float, default=798e12)
    ap.add_argument("--floor", type=float, default=2e-6, help="least seconds a kernel takes")
    ap.add_argument("--ops", type=int, default=0, help="list the N costliest operators of each batch size")
    ap.add_argument("--unfolded", action="store_true", help="also model the input layer before the fold")
    ap.add_argument("--fused-eval", action="store_true", help="also model the fused test pass (bf16)")
    ap.add_argument("--time", type=int, default=0, metavar="B", help="time both on the CPU at batch B")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    info: dict[str, Any] = {"args": vars(args)}
    variants = ["folded"] + ["unfolded"] * args.unfolded + ["fused_eval"] * args.fused_eval
    for variant in variants:
        print(f"--- {variant.replace('_', ' ')}" if variant == "fused_eval" else f"--- input layer {variant}")
        with unfolded() if variant == "unfolded" else contextlib.nullcontext():
            info[variant] = model_scan(args, fused_eval=variant == "fused_eval")
    if args.time:
        info["cpu_seconds"] = time_cpu(PRESETS[args.preset].members, args.time, args.reps)
        t = info["cpu_seconds"]
        print(f"CPU, {torch.get_num_threads()} threads, forward + backward at batch {args.time}, median of "
              f"{args.reps}: folded {t['folded']:.3f} s, unfolded {t['unfolded']:.3f} s "
              f"(ratio {t['unfolded'] / t['folded']:.2f})")  # fmt: skip
    if env_out := os.environ.get("OUT"):
        write_json_atomic(Path(env_out) / "mnist_step_costs.json", info)
    return 0


def model_scan(args: argparse.Namespace, fused_eval: bool = False) -> dict[str, Any]:
    """The modelled table for the preset's (or the given) batch sizes, printed and returned."""

    cfg = PRESETS[args.preset]
    members, cells_per_batch = cfg.members, len(cfg.optimizers)
    batches = args.batch_sizes or list(cfg.batch_sizes)
    rows, total = [], 0.0
    print(f"{members} members, {cfg.steps} steps, {cells_per_batch} cells per batch size; modelled per step:")
    print(f"{'batch':>6} {'train GB':>9} {'train GFLOP':>12} {'test GB':>8} {'ms train':>9} {'ms test':>8} "
          f"{'ms opt':>7} {'kernels':>8}")  # fmt: skip
    for b in batches:
        ops = step_costs(members, b, args.eval_precision, fused_eval=fused_eval)
        by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for op in ops:
            ph = by_phase[op.phase]
            ph["bytes"] += op.bytes
            ph["flops"] += op.flops
            ph["seconds"] += modelled_seconds(op, args)
            ph["kernels"] += 1
        step_s = sum(ph["seconds"] for ph in by_phase.values())
        total += step_s * cfg.steps * cells_per_batch
        tr, te, op_ = by_phase["train"], by_phase["test"], by_phase["optimizer"]
        print(f"{b:>6} {tr['bytes'] / 1e9:>9.2f} {tr['flops'] / 1e9:>12.1f} {te['bytes'] / 1e9:>8.2f} "
              f"{1e3 * tr['seconds']:>9.3f} {1e3 * te['seconds']:>8.3f} {1e3 * op_['seconds']:>7.3f} "
              f"{int(sum(ph['kernels'] for ph in by_phase.values())):>8}")  # fmt: skip
        top = sorted(ops, key=lambda o: -modelled_seconds(o, args))[: args.ops]
        for o in top:
            print(f"         {o.phase:<9} {o.op:<34} {o.bytes / 1e6:>9.1f} MB {o.flops / 1e9:>8.2f} GFLOP "
                  f"{1e6 * modelled_seconds(o, args):>8.1f} us")  # fmt: skip
        phases = {f"{k}_{p}": v for p, ph in by_phase.items() for k, v in ph.items()}
        top_ops = [o.__dict__ | {"matmul_dtype": str(o.matmul_dtype)} for o in top]
        rows.append({"batch": b, **phases, "step_seconds": step_s, "top_ops": top_ops})
    print(
        f"paper scan, modelled device time (a lower bound): {total:.1f} s "
        f"over {len(batches) * cells_per_batch} cells"
    )
    return {"members": members, "rows": rows, "scan_seconds": total}


if __name__ == "__main__":
    raise SystemExit(main())
