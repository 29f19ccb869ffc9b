"""``focus-optim bench-step``: time one optimizer step on GPT-2-small parameter shapes.

Times each path of FOCUS, Signum, torch.optim.AdamW (for-loop, foreach, fused), pytorch_optimizer's
FOCUS when installed, a restatement of the authors' per-parameter loop, and (``--optimizers all``)
every registered optimizer, and reports each against the memory roofline measured in the same run:
FOCUS reads p, g, m, theta_bar and writes p, m, theta_bar, i.e. 7 * element size bytes per
parameter (28 for fp32), over the device's copy bandwidth (bytes read + written by a large copy).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TypedDict

import torch
from torch import nn

from ..atomic import write_json_atomic
from ..cli_types import device_arg, nonnegative_int, output_file, positive_int

GPT2_SMALL = dict(vocab=50257, block=1024, n_layer=12, n_embd=768)
QUICK = dict(vocab=8192, block=256, n_layer=2, n_embd=256)


class _FocusHP(TypedDict):
    """The paper's GPT-2 FOCUS hyperparameters, as keyword arguments of the FOCUS constructors."""

    lr: float
    betas: tuple[float, float]
    gamma: float
    weight_decay: float


def gpt2_shapes(vocab: int, block: int, n_layer: int, n_embd: int) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of nanoGPT's GPT-2 (no biases, tied head) — 124.4M for GPT-2 small."""
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("transformer.wte.weight", (vocab, n_embd)),
        ("transformer.wpe.weight", (block, n_embd)),
    ]
    for i in range(n_layer):
        h = f"transformer.h.{i}"
        shapes += [
            (f"{h}.ln_1.weight", (n_embd,)),
            (f"{h}.attn.c_attn.weight", (3 * n_embd, n_embd)),
            (f"{h}.attn.c_proj.weight", (n_embd, n_embd)),
            (f"{h}.ln_2.weight", (n_embd,)),
            (f"{h}.mlp.c_fc.weight", (4 * n_embd, n_embd)),
            (f"{h}.mlp.c_proj.weight", (n_embd, 4 * n_embd)),
        ]
    return [*shapes, ("transformer.ln_f.weight", (n_embd,))]


class ShapeModel(nn.Module):
    """A module holding parameters of the given shapes under their names (embeddings as nn.Embedding)."""

    def __init__(self, shapes: list[tuple[str, tuple[int, ...]]], device: str, dtype: torch.dtype) -> None:
        super().__init__()
        vocab, n_embd = shapes[0][1]
        block, n_embd_pos = shapes[1][1]
        self.wte = nn.Embedding(vocab, n_embd, device=device, dtype=dtype)
        self.wpe = nn.Embedding(block, n_embd_pos, device=device, dtype=dtype)
        self.rest = nn.ParameterDict(
            {
                n.replace(".", "_"): nn.Parameter(torch.empty(s, device=device, dtype=dtype))
                for n, s in shapes[2:]
            }
        )
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0, 0.02, generator=gen)
                p.grad = torch.randn(p.shape, generator=gen, device=device, dtype=dtype) * 1e-3


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Bytes per second moved by a large tensor copy (read + write)."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    times = _time(lambda: dst.copy_(src), device, warmup=3, reps=10 if device != "cpu" else 5)
    return 2 * nbytes / statistics.median(times)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn: Callable[[], Any], device: str, warmup: int, reps: int, inner: int = 10) -> list[float]:
    """Seconds per call: on CUDA, ``inner`` back-to-back calls between two events (steady-state
    throughput, as in a training loop where host work overlaps the GPU), ``reps`` times."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    if device.startswith("cuda"):
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3 / inner)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def candidates(include_all: bool) -> list[tuple[str, Callable[[nn.Module], torch.optim.Optimizer]]]:
    """(label, factory) for each timed optimizer; FOCUS settings are the paper's GPT-2 ones."""
    from focus_optim import FOCUS, Signum, make_optimizer
    from focus_optim.bench.reference_loop import ReferenceLoopFOCUS
    from focus_optim.optim import protocol  # noqa: F401  (import check)

    focus_hp = _FocusHP(lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2)
    out: list[tuple[str, Callable[[nn.Module], torch.optim.Optimizer]]] = [
        ("focus (single-tensor)", lambda m: FOCUS(m.parameters(), **focus_hp, foreach=False)),
        ("focus (foreach)", lambda m: FOCUS(m.parameters(), **focus_hp, foreach=True)),
        ("focus (fused)", lambda m: FOCUS(m.parameters(), **focus_hp, fused=True)),
        ("signum (foreach)", lambda m: Signum(m.parameters(), lr=6e-4, weight_decay=0.2, foreach=True)),
        ("signum (fused)", lambda m: Signum(m.parameters(), lr=6e-4, weight_decay=0.2, fused=True)),
        ("torch AdamW (for-loop)", lambda m: torch.optim.AdamW(m.parameters(), lr=6e-4, foreach=False)),
        ("torch AdamW (foreach)", lambda m: torch.optim.AdamW(m.parameters(), lr=6e-4, foreach=True)),
        ("torch AdamW (fused)", lambda m: torch.optim.AdamW(m.parameters(), lr=6e-4, fused=True)),
        ("authors' loop (reference focus.py)", lambda m: ReferenceLoopFOCUS(m.parameters(), **focus_hp)),
    ]
    try:
        import pytorch_optimizer

        out.append(("pytorch_optimizer FOCUS", lambda m: pytorch_optimizer.FOCUS(m.parameters(), **focus_hp)))
    except ImportError:
        pass
    if include_all:
        from focus_optim.optim.registry import available_optimizers

        for name in available_optimizers():
            if name in ("focus", "signum", "onebit_adam"):
                continue

            def from_registry(m: nn.Module, name: str = name) -> torch.optim.Optimizer:
                return make_optimizer(name, m)

            out.append((f"{name} (registry default)", from_registry))
    return out


def run_bench(
    *, device: str, dtype: torch.dtype, shapes_cfg: dict[str, int], reps: int, warmup: int,
    include_all: bool, only: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    from focus_optim.optim import protocol

    shapes = gpt2_shapes(**shapes_cfg)
    n_params = sum(torch.Size(s).numel() for _, s in shapes)
    elt = torch.empty((), dtype=dtype).element_size()
    bw = copy_bandwidth(device)
    roofline = 7 * elt * n_params / bw
    rows: list[dict[str, str | float | None]] = []
    rows_available = candidates(include_all)
    unmatched = [o for o in only or [] if not any(o.lower() in label.lower() for label, _ in rows_available)]
    if unmatched:
        labels = "; ".join(label for label, _ in rows_available)
        raise ValueError(
            f"--optimizers {' '.join(unmatched)}: no row matches (rows: {labels}; 'all' adds the registry)"
        )
    for label, factory in rows_available:
        if only and not any(o.lower() in label.lower() for o in only):
            continue
        model = ShapeModel(shapes, device, dtype)
        try:
            opt = factory(model)
        except Exception as exc:  # an optimizer that cannot be built here (e.g. no GPU path)
            rows.append(dict(name=label, ms=None, x_roofline=None, note=f"unavailable: {exc}"[:160]))
            continue
        kwargs = protocol.step_kwargs(opt, tokens=480 * 1024)

        def step(opt: torch.optim.Optimizer = opt, kwargs: dict[str, Any] = kwargs) -> Any:
            return opt.step(**kwargs)

        try:
            times = _time(step, device, warmup=warmup, reps=reps)
        except Exception as exc:  # keep the table going: one optimizer lacking a path is a finding
            rows.append(dict(name=label, ms=None, x_roofline=None, note=f"failed: {exc}"[:160]))
        else:
            t = statistics.median(times)
            rows.append(
                dict(
                    name=label, ms=t * 1e3, x_roofline=t / roofline, spread_ms=(max(times) - min(times)) * 1e3
                )
            )
        del model, opt
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return dict(
        device=torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        device_kind=device,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        date=dt.date.today().isoformat(),
        command="focus-optim bench-step " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        dtype=str(dtype).replace("torch.", ""),
        n_params=n_params,
        shapes=shapes_cfg,
        copy_bandwidth_GBps=bw / 1e9,
        roofline_ms=roofline * 1e3,
        roofline_bytes_per_param=7 * elt,
        results=rows,
    )


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"bench-step  {report['device']} ({report['device_kind']}, {report['threads']} threads)"
        f"  torch {report['torch']}  {report['date']}",
        f"{report['n_params'] / 1e6:.1f}M params, {report['dtype']}; copy bandwidth "
        f"{report['copy_bandwidth_GBps']:.1f} GB/s; roofline {report['roofline_ms']:.3f} ms "
        f"({report['roofline_bytes_per_param']} B/param)",
        f"{'optimizer':<38} {'ms/step':>10} {'x roofline':>11}",
    ]
    for r in report["results"]:
        if r["ms"] is None:
            lines.append(f"{r['name']:<38} {'-':>10} {'-':>11}  {r.get('note', '')}")
        else:
            lines.append(f"{r['name']:<38} {r['ms']:>10.3f} {r['x_roofline']:>10.2f}x")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-step", help="time one optimizer step on GPT-2-small shapes vs the memory roofline"
    )
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke run)")
    p.add_argument("--reps", type=positive_int, default=None, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=nonnegative_int, default=None)
    p.add_argument(
        "--optimizers",
        nargs="*",
        default=None,
        help="'all' adds every registered optimizer; other words filter the rows by name",
    )
    p.add_argument("--json", type=output_file, default=None, help="write the report here (atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cuda = args.device.startswith("cuda")
    reps = args.reps or (3 if args.quick or not cuda else 20)
    warmup = args.warmup if args.warmup is not None else (1 if not cuda else 5)
    words = args.optimizers or []
    report = run_bench(
        device=args.device,
        dtype=getattr(torch, args.dtype),
        shapes_cfg=QUICK if args.quick else GPT2_SMALL,
        reps=reps,
        warmup=warmup,
        include_all="all" in words,
        only=[w for w in words if w != "all"] or None,
    )
    print(format_table(report))
    if args.json:
        write_json_atomic(args.json, report)
    return 0
