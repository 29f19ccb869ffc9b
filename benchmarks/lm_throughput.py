"""GPT-2 124M training throughput on one GPU, and the optimizer step's share of an iteration.

Each variant runs the real training loop of ``focus-optim lm train`` (``Trainer.train_step``:
memory-mapped data through the prefetching loader, bf16 autocast, torch.compile, gradient
accumulation, grad-norm clip, fused FOCUS step) for a global batch of 64 x 1024 tokens, and
reports tokens/s and MFU (``6N + 12 L H Q T`` FLOPs per token over 989 TFLOP/s):

* ``b32`` / ``b16``: micro-batch 32 (x2 accumulation) or 16 (x4), plain ``F.cross_entropy``;
* ``b32-chunkce`` / ``b64-chunkce``: the chunked linear + cross-entropy head, which never
  materialises the full logits (and so lets a micro-batch of 64 fit without accumulation);
* ``b32-cudnn``: ``b32`` with cuDNN's attention kernel instead of torch's default choice;
* ``b64-chunkce-autotune``: ``b64-chunkce`` compiled with ``max-autotune-no-cudagraphs``;
* ``b64-chunkce-cdt``: ``b64-chunkce`` with Inductor's ``coordinate_descent_tuning``.

Variants run in that order; one that would end after ``--time-budget`` (240 s) is skipped and
reported as such, so the whole script stays under 5 minutes with cold compilation.

Then, in the same process, it times ``optimizer.step()`` on the 124M parameters for FOCUS (fused
Triton kernel and foreach) and AdamW (torch's fused kernel and foreach), and reports each as a
share of the fastest variant's iteration (and of the paper's 480 x 1024-token iteration).

Run on the GPU machine from the repository root (about 3-4 minutes, most of it compiling)::

    PYTHONPATH=src python benchmarks/lm_throughput.py

Data: ``--data-dir`` (default ``.data/lm/corpus``) is prepared first if missing, from
``.data/corpus/*.jsonl.gz`` and ``.data/tokenizers/gpt2.tiktoken``. A compact table is printed
last; with ``$OUT`` set, ``$OUT/lm_throughput.json`` holds every number.
CPU smoke test: ``--device cpu --model tiny --no-compile --data-dir DIR --steps 2``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from focus_optim import make_optimizer
from focus_optim.atomic import write_json_atomic
from focus_optim.lm.config import TrainConfig
from focus_optim.lm.model import GPT, model_config
from focus_optim.lm.train import Trainer, set_sdpa_backend

VARIANTS: dict[str, dict[str, Any]] = {  # in the order they run (the time budget may cut the last)
    "b32": {"batch_size": 32, "grad_accum": 2, "ce_chunk": 0},  # what configs/lm/fig3_base.toml uses
    "b16": {"batch_size": 16, "grad_accum": 4, "ce_chunk": 0},  # nanoGPT's shape
    "b32-chunkce": {"batch_size": 32, "grad_accum": 2, "ce_chunk": 8192},
    "b32-cudnn": {"batch_size": 32, "grad_accum": 2, "ce_chunk": 0, "sdpa_backend": "cudnn"},
    "b64-chunkce": {"batch_size": 64, "grad_accum": 1, "ce_chunk": 8192},
    # Inductor benchmarks GEMM and kernel configs at compile time (minutes longer to compile)
    "b64-chunkce-autotune": {
        "batch_size": 64, "grad_accum": 1, "ce_chunk": 8192, "compile_mode": "max-autotune-no-cudagraphs",
    },
    # Inductor tunes each generated (layer-norm, GELU, residual, loss) kernel's block sizes by
    # coordinate descent, as the nanoGPT speedruns do; GEMMs stay cuBLAS's
    "b64-chunkce-cdt": {
        "batch_size": 64, "grad_accum": 1, "ce_chunk": 8192,
        "inductor_args": {"coordinate_descent_tuning": True},
    },
}  # fmt: skip
PAPER_BATCH_TOKENS = 480 * 1024


def ensure_data(data_dir: Path, corpus: str, tokenizer: str | None) -> None:
    if (data_dir / "meta.json").exists():
        return
    from focus_optim.lm.data import prepare

    files = sorted(glob.glob(corpus))
    print(f"preparing {data_dir} from {len(files)} files ({corpus})", flush=True)
    prepare(files, data_dir, tokenizer_file=tokenizer)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(name: str, spec: dict[str, Any], args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """Warm up (compile) then time ``args.steps`` training iterations of one variant."""
    values = {
        "data_dir": str(args.data_dir),
        "out_dir": os.path.join(out_dir, name),
        "model": args.model,
        "model_args": {"ce_chunk": spec["ce_chunk"]},
        "batch_size": spec["batch_size"],
        "grad_accum": spec["grad_accum"],
        "optimizer": "focus",
        "lr": 6e-4,
        "optimizer_args": {"betas": (0.9, 0.99), "gamma": 0.2, "weight_decay": 0.2, "fused": args.fused},
        "decay_embeddings": False,
        "warmup_steps": 10,
        "max_steps": 10_000,
        "compile": not args.no_compile,
        "sdpa_backend": spec.get("sdpa_backend", "auto"),
        "compile_mode": spec.get("compile_mode", "default"),
        "inductor_args": spec.get("inductor_args", {}),
        "device": args.device,
        "dtype": args.dtype,
        "tensorboard": False,
        "progress": False,
        "peak_flops": args.peak_flops,
    }
    import torch._inductor.config as inductor_config

    # the trainer sets inductor_args process-wide: the next variant gets the values from before
    before = {key: getattr(inductor_config, key) for key in spec.get("inductor_args", {})}
    try:
        return _time_variant(name, spec, args, values)
    finally:
        for key, value in before.items():
            setattr(inductor_config, key, value)


def _time_variant(
    name: str, spec: dict[str, Any], args: argparse.Namespace, values: dict[str, Any]
) -> dict[str, Any]:
    trainer = Trainer(TrainConfig.from_dict(values))
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            loss, *_ = trainer.train_step()
            trainer.step += 1
        sync(device)
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss, *_ = trainer.train_step()
            trainer.step += 1
        sync(device)
        dt = time.perf_counter() - t0
    finally:
        trainer.loader.close()
    tok_s = args.steps * trainer.tokens_per_step / dt
    row = {
        "variant": name,
        **spec,
        "tokens_per_step": trainer.tokens_per_step,
        "iter_ms": 1e3 * dt / args.steps,
        "tok_per_s": tok_s,
        "mfu": trainer.flops_per_token * tok_s / args.peak_flops,
        "warmup_s": warmup_s,
        "loss": float(loss.item()),
        "max_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "flops_per_token": trainer.flops_per_token,
    }
    del trainer
    set_sdpa_backend("auto")
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def time_optimizers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median ``step()`` time of FOCUS and AdamW on the model's parameters with random grads."""
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.manual_seed(0)
    model = GPT(model_config(args.model)).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("focus fused", "focus", {"betas": (0.9, 0.99), "gamma": 0.2, "weight_decay": 0.2, "fused": True}),
        (
            "focus foreach",
            "focus",
            {"betas": (0.9, 0.99), "gamma": 0.2, "weight_decay": 0.2, "foreach": True},
        ),
        ("adamw fused", "adamw", {"betas": (0.9, 0.95), "weight_decay": 0.1, "fused": True}),
        ("adamw foreach", "adamw", {"betas": (0.9, 0.95), "weight_decay": 0.1, "foreach": True}),
    ]
    rows = []
    for label, name, hp in cases:
        try:
            opt = make_optimizer(name, model, decay_embeddings=False, lr=6e-4, **hp)
            times = []
            for i in range(args.opt_reps + 3):
                sync(device)
                t0 = time.perf_counter()
                opt.step()
                sync(device)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            rows.append({"optimizer": label, "step_ms": 1e3 * statistics.median(times)})
            del opt
        except Exception as exc:  # report and go on: one broken path must not hide the others
            rows.append({"optimizer": label, "step_ms": None, "error": f"{type(exc).__name__}: {exc}"})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(".data/lm/corpus"))
    ap.add_argument("--corpus", default=".data/corpus/*.jsonl.gz")
    ap.add_argument("--tokenizer-file", default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--fused", action=argparse.BooleanOptionalAction, default=True, help="fused FOCUS in the loop"
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations (the first compiles)")
    ap.add_argument("--steps", type=int, default=20, help="timed iterations per variant")
    ap.add_argument("--opt-reps", type=int, default=20)
    ap.add_argument("--peak-flops", type=float, default=989e12)
    ap.add_argument("--time-budget", type=float, default=240.0, help="skip variants that would end later (s)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    ensure_data(args.data_dir, args.corpus, args.tokenizer_file)
    if torch.cuda.is_available():
        print(
            f"{torch.cuda.get_device_name()} | torch {torch.__version__} | python {sys.version.split()[0]}",
            flush=True,
        )

    rows: list[dict[str, Any]] = []
    longest = 0.0
    with tempfile.TemporaryDirectory() as out_dir:
        for name in args.variants.split(","):
            elapsed = time.perf_counter() - t_start
            if rows and elapsed + 1.3 * longest + 20 > args.time_budget:
                rows.append({"variant": name, "skipped": "time budget"})
                continue
            t0 = time.perf_counter()
            try:
                rows.append(run_variant(name, VARIANTS[name], args, out_dir))
            except Exception as exc:  # e.g. out of memory: report it, keep the other variants
                rows.append({"variant": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                torch._dynamo.reset()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            longest = max(longest, time.perf_counter() - t0)
            print(json.dumps(rows[-1]), flush=True)
    opt_rows = time_optimizers(args)

    done = [r for r in rows if "tok_per_s" in r]
    best = max(done, key=lambda r: r["tok_per_s"]) if done else None
    if best is not None:
        for r in opt_rows:
            if r["step_ms"] is not None:
                r["pct_of_iteration"] = 100 * r["step_ms"] / best["iter_ms"]
                paper_ms = 1e3 * PAPER_BATCH_TOKENS / best["tok_per_s"]
                r["pct_of_paper_iteration"] = 100 * r["step_ms"] / paper_ms
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "model": args.model,
        "variants": rows,
        "optimizers": opt_rows,
        "best": best["variant"] if best else None,
        "seconds": time.perf_counter() - t_start,
    }
    if os.environ.get("OUT"):
        write_json_atomic(Path(os.environ["OUT"]) / "lm_throughput.json", result)
    print(format_table(result))
    return 0


def format_table(result: dict[str, Any]) -> str:
    lines = [f"GPT-2 ({result['model']}) training throughput on {result['device']}, torch {result['torch']}"]
    lines.append(
        f"{'variant':<12} {'micro x acc':>11} {'tok/s':>10} {'MFU':>6} {'iter ms':>8} {'warmup s':>8} "
        f"{'mem GB':>7} {'loss':>7}"
    )
    for r in result["variants"]:
        if "tok_per_s" not in r:
            lines.append(f"{r['variant']:<12} {r.get('skipped') or r.get('error')}")
            continue
        mem = f"{r['max_mem_gb']:.1f}" if r["max_mem_gb"] is not None else "-"
        lines.append(
            f"{r['variant']:<12} {r['batch_size']:>6} x {r['grad_accum']:<2} {r['tok_per_s']:>10,.0f} "
            f"{100 * r['mfu']:>5.1f}% {r['iter_ms']:>8.1f} {r['warmup_s']:>8.1f} {mem:>7} {r['loss']:>7.3f}"
        )
    lines.append(f"{'optimizer':<14} {'step ms':>8} {'% of iter':>10} {'% of 480x1024 iter':>19}")
    for r in result["optimizers"]:
        if r["step_ms"] is None:
            lines.append(f"{r['optimizer']:<14} {r['error'][:80]}")
            continue
        pct = r.get("pct_of_iteration", math.nan)
        paper = r.get("pct_of_paper_iteration", math.nan)
        lines.append(f"{r['optimizer']:<14} {r['step_ms']:>8.3f} {pct:>9.2f}% {paper:>18.3f}%")
    lines.append(f"total {result['seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
