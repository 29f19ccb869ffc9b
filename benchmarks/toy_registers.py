"""Registers and spills of the toy lab's Triton kernels, compiled for an H100 (sm_90) without one.

A kernel whose threads each need ~250 registers runs 8 warps per SM, too few to hide the latency
of its hashes, transcendentals and cross-warp reductions; the 100-D valley kernel timed on an H100
on 2026-11-23 (4096 elements x 4 warps a program) was such a kernel. Triton ships ``ptxas``, so
the register count of any launch configuration can be read on a CPU:

1. a child process under ``TRITON_INTERPRET=1`` runs a few simulated steps through the real host
   code (``simulate`` -> ``valley_step_`` / ``valley_update_``, the optimizers' recorded launches)
   with the launches replaced by recorders, which keep each launch's argument types, constexprs
   and warp count;
2. this process compiles each recorded launch for ``cuda:90`` with Triton and reads the log of
   Triton's own ``ptxas -v`` run: registers per thread, spill stores and loads, stack frame.

::

    PYTHONPATH=src python benchmarks/toy_registers.py                     # the module's settings
    PYTHONPATH=src python benchmarks/toy_registers.py --dims 100 --step-configs 4096x4 2048x8 \\
        --fused-configs 2048x4 1024x8
    PYTHONPATH=src python benchmarks/toy_registers.py --optimizers focus --sass [--precise-sincos]

``--sass`` also counts the machine code of the fused kernel's K-step loop, and the part of it that
branches skip (the exact sine's and cosine's slow paths); ``--precise-sincos`` compiles with
``triton_valley.FAST_SINCOS`` off, for comparison.

Pointer alignment is not specialised here (a real launch may assume 16-byte alignment), which can
change the count by a few registers. With ``$OUT`` set, ``$OUT/toy_registers.json`` holds the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

CHILD = r"""
import json, sys
import numpy as np
import torch
from focus_optim.landscape import simulate as S, triton_valley as TV, valley as V

job = json.loads(sys.argv[1])
out = []
DTYPES = {torch.float32: "fp32", torch.int32: "i32", torch.int64: "i64"}

class Recorder:
    def __init__(self, name):
        self.name = name
    def __getitem__(self, grid):
        def record(*args, **kwargs):
            types = []
            for a in args:
                if isinstance(a, torch.Tensor):
                    types.append("*" + DTYPES[a.dtype])
                elif isinstance(a, bool):
                    types.append("i1")
                elif isinstance(a, int):
                    types.append("i32" if -2**31 <= a < 2**31 else "i64")
                else:
                    types.append("fp32")
            warps = kwargs.pop("num_warps")
            out.append({**meta, "kernel": self.name, "types": types, "constexprs": kwargs,
                        "num_warps": warps})
        return record

for name in ("_valley_step_kernel", "_valley_update_kernel"):
    setattr(TV, name, Recorder(name))
from focus_optim.optim._kernels import triton_adamw, triton_sign
for mod, name in ((triton_sign, "_sign_family_kernel"), (triton_adamw, "_adamw_kernel")):
    setattr(mod, name, Recorder(name))  # (the optimizers' own kernels: not compiled here)

for case in job:
    dim, opt, fused, tile, warps = case["dim"], case["optimizer"], case["fused"], case["tile"], case["warps"]
    if fused:
        TV.FUSED_TILE, TV.FUSED_NUM_WARPS = tile, warps
    else:
        TV.TILE, TV.NUM_WARPS = tile, warps
    meta = {"dim": dim, "optimizer": opt, "fused": fused, "config": f"{tile}x{warps}"}
    land = V.rotated() if dim == 2 else V.random_axis(dim)
    rows = S.Rows.make(0, 10.0, np.linspace(0, 3, 64), np.full(64, 0.01), 0.1)
    opts = S.Options(kernels=True, fuse_update=fused, steps_per_launch=2, pack_cells=True)
    S.simulate(opt, rows, land, 2, opts)
print(json.dumps([r for r in out if r["kernel"].startswith("_valley")]))
"""


def record_launches(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each case's valley-kernel launch as the host code makes it (a child under the interpreter)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"recording the launches failed:\n{proc.stderr[-3000:]}")
    launches = json.loads(proc.stdout.strip().splitlines()[-1])
    unique = {json.dumps(r, sort_keys=True): r for r in launches}  # (two steps: the same launch)
    return list(unique.values())


def ptxas_usage(launch: dict[str, Any], arch: int = 90, sass: bool = False) -> dict[str, Any]:
    """Compile one recorded launch of a valley kernel for ``cuda:arch``: :func:`kernel_usage`. The
    interpreter that recorded it runs exact sines and cosines; the GPU build takes the module's
    ``FAST_SINCOS``."""
    from focus_optim.landscape import triton_valley as TV

    fn = getattr(TV, launch["kernel"])
    constexprs = {**launch["constexprs"], "FAST_SINCOS": TV.FAST_SINCOS}
    return kernel_usage(fn, launch["types"], constexprs, {"num_warps": launch["num_warps"]}, arch, sass=sass)


def kernel_usage(
    fn: Any,
    types: list[str],
    constexprs: dict[str, Any],
    options: dict[str, Any],
    arch: int = 90,
    sass: bool = False,
) -> dict[str, Any]:
    """Compile the Triton kernel ``fn`` for ``cuda:arch`` (run-time arguments of Triton signature
    ``types``, e.g. ``"*fp32"``, ``"i32"``) and parse the log of the ``ptxas -v`` run that Triton
    itself makes (its own choice of ptxas and flags, whatever the Triton version). Needs
    ``TRITON_DUMP_PTXAS_LOG=1`` and ``TRITON_ALWAYS_COMPILE=1`` set before Triton is imported.
    ``sass``: also count the machine code of the kernel's outermost loop (:func:`loop_instructions`)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    runtime = [n for n, p in zip(fn.arg_names, fn.params) if not p.is_constexpr]
    signature = dict(zip(runtime, types))
    signature.update({n: "constexpr" for n in constexprs})
    src = ASTSource(fn, signature, constexprs=constexprs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # Triton prints ptxas's log (TRITON_DUMP_PTXAS_LOG)
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    text = log.getvalue()
    if "registers" not in text:
        raise RuntimeError(f"no ptxas log from Triton {triton.__version__}:\n{text[-2000:]}")
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, text)) else 0  # noqa: E731
    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "stack": number(r"(\d+) bytes stack frame"),
        "shared_bytes": kernel.metadata.shared,
        **(loop_instructions(kernel.asm["cubin"]) if sass else {}),
    }


def loop_instructions(cubin: bytes) -> dict[str, int]:
    """SASS instructions in the kernel's outermost loop (the longest backward branch), and of those
    the ones a taken forward branch skips (``@!P BRA``: slow paths such as the exact sine's
    Payne-Hanek range reduction, not run for the small angles here). ``loop - skipped`` estimates
    the instructions an iteration runs (per thread; MUFU ones issue at a quarter of the rate)."""
    import tempfile

    import triton

    disasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(disasm), "-c", f.name], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()
    is_instr = [bool(re.match(r"\s+/\*[0-9a-f]{4}\*/", line)) for line in lines]
    labels = {line.rstrip(":"): i for i, line in enumerate(lines) if line.startswith(".L_x")}
    loop = (0, -1)
    for i, line in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i and i - labels[m.group(1)] > loop[1] - loop[0]:
            loop = (labels[m.group(1)], i)
    skipped, seen = 0, set()
    for i in range(loop[0], loop[1] + 1):
        m = re.search(r"@!P\d BRA `\((\.L_x_\d+)\)", lines[i])
        if m and m.group(1) not in seen and labels.get(m.group(1), -1) > i:
            seen.add(m.group(1))
            skipped += sum(is_instr[i + 1 : labels[m.group(1)]])
    body = range(loop[0], loop[1] + 1)
    return {
        "loop_instructions": sum(is_instr[i] for i in body),
        "loop_skipped": skipped,
        "loop_mufu": sum(is_instr[i] and "MUFU" in lines[i] for i in body),
    }


def main() -> int:
    # Triton prints each ptxas log, and compiles even what its cache holds (which has no log).
    os.environ.update(TRITON_DUMP_PTXAS_LOG="1", TRITON_ALWAYS_COMPILE="1")
    from focus_optim.landscape import triton_valley as TV

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", nargs="+", type=int, default=[2, 100])
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "signum", "focus"])
    ap.add_argument("--step-configs", nargs="*", default=[f"{TV.TILE}x{TV.NUM_WARPS}"], help="TILExWARPS")
    ap.add_argument("--fused-configs", nargs="*", default=[f"{TV.FUSED_TILE}x{TV.FUSED_NUM_WARPS}"])
    ap.add_argument("--sass", action="store_true", help="also count the machine code of each kernel's loop")
    ap.add_argument("--precise-sincos", action="store_true", help="compile with FAST_SINCOS off")
    args = ap.parse_args()
    TV.FAST_SINCOS = not args.precise_sincos
    cases = []
    for dim in args.dims:
        for fused, configs in ((False, args.step_configs), (True, args.fused_configs)):
            for config in configs:
                tile, warps = (int(x) for x in config.lower().split("x"))
                for opt in args.optimizers if fused else args.optimizers[:1]:  # (the step kernel: one)
                    cases.append(dict(dim=dim, optimizer=opt, fused=fused, tile=tile, warps=warps))
    table = []
    for launch in record_launches(cases):
        row = {k: launch[k] for k in ("dim", "optimizer", "fused", "config", "num_warps")}
        block_r, block_p = launch["constexprs"]["BLOCK_R"], launch["constexprs"]["BLOCK_P"]
        row["block_r"] = block_r
        row["elements_per_thread"] = block_r * block_p * 2 // (32 * launch["num_warps"])
        row.update(ptxas_usage(launch, sass=args.sass))
        table.append(row)
        kind = f"fused {row['optimizer']}" if row["fused"] else "step"
        print(f"{row['dim']:>4}-D {kind:<13} {row['config']:>8} (BLOCK_R {row['block_r']:>4}, "
              f"{row['elements_per_thread']:>2}/thread): {row['registers']:>3} registers, "
              f"spills {row['spill_stores']}/{row['spill_loads']} B, stack {row['stack']} B"
              + (f"; K-step loop {row['loop_instructions']} SASS instructions, {row['loop_skipped']} of "
                 f"them skipped slow paths, {row['loop_mufu']} MUFU" if args.sass and row["fused"] else ""),
              flush=True)  # fmt: skip
    if env_out := os.environ.get("OUT"):
        from focus_optim.atomic import write_json_atomic

        info = {"arch": "sm_90", "fast_sincos": TV.FAST_SINCOS, "table": table}
        write_json_atomic(Path(env_out) / "toy_registers.json", info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
