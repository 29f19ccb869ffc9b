"""Where the first toy figure of a process spends its time: stack samples of a cold run.

On the H100 (2026-11-23) the paper's Figure 2a on the Triton step took 31-35 s as the first figure
of a process and 3.1-3.3 s when run again in the same process, and still 28.5 s in a new process
whose Triton cache was warm, so most of the difference is not kernel compilation. This script
runs ``focus-optim toy run`` in this process twice (cold, then warm), sampling the main thread's
stack every ``--interval`` seconds during the cold run (a thread reading ``sys._current_frames``:
no profiler overhead on the sampled code), and prints the functions of this project, Triton and
PyTorch that the samples sit in most.

``--stub-kernels`` (on a CPU, under ``TRITON_INTERPRET=1``) replaces the Triton launches with
no-ops and batches the cells as on a GPU (cells packed, ~2**24 trajectories per call), so that
what remains is the host's side of a GPU run. That is how the cause was found on 2026-11-23:
validating the per-trajectory ``lr``/``weight_decay`` tensors of each optimizer element by element
in Python (9.6M values per optimizer), once per workspace, so only in a process's first figure.

::

    PYTHONPATH=src python benchmarks/toy_first_use.py                       # CUDA, paper 2a, ~40 s
    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/toy_first_use.py --device cpu --stub-kernels
                                                                            # CPU, paper 2a, host only
    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/toy_first_use.py --device cpu --preset quick \
        --figure 1c                                                         # CPU, ~2 min

With ``$OUT`` set, the raw samples go to ``$OUT/toy_first_use_stacks.txt`` and the summary to
``$OUT/toy_first_use.json``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from focus_optim.atomic import write_json_atomic
from focus_optim.cli import main as cli_main

PACKAGES = ("focus_optim", "triton", "torch")


class StackSampler(threading.Thread):
    """Every ``interval`` seconds, the stack of thread ``target`` (innermost frame last)."""

    def __init__(self, target: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.target, self.interval = target, interval
        self.samples: list[list[traceback.FrameSummary]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            frame = sys._current_frames().get(self.target)
            if frame is not None:
                self.samples.append(traceback.extract_stack(frame))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def summarize(samples: list[list[traceback.FrameSummary]], top: int = 25) -> list[tuple[str, int]]:
    """Per sample, the innermost frame of each of :data:`PACKAGES`; counted over samples."""
    counts: collections.Counter[str] = collections.Counter()
    for stack in samples:
        seen = set()
        for fr in reversed(stack):
            pkg = next((p for p in PACKAGES if f"/{p}/" in fr.filename), None)
            if pkg is None or pkg in seen:
                continue
            seen.add(pkg)
            counts[f"{pkg}: {Path(fr.filename).name}:{fr.lineno} {fr.name}"] += 1
    return counts.most_common(top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--figure", default="2a")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between stack samples")
    ap.add_argument("--kernels", default="separate", choices=["separate", "fused"], help="the Triton step")
    ap.add_argument(
        "--stub-kernels",
        action="store_true",
        help="Triton launches as no-ops and cells batched as on a GPU: the host's side of a GPU run",
    )
    args = ap.parse_args()
    stub: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    extra: list[str] = []
    if args.stub_kernels:
        import torch

        from focus_optim.landscape import figures as F
        from focus_optim.landscape import simulate as S
        from stub_launches import stubbed_launches

        fig = F.figure(args.figure)
        if fig.build is None:
            ap.error(f"--stub-kernels: figure {fig.key} is made from other figures' data, it has no sweep")
        spec = fig.build(args.preset, ["adamw", "signum", "focus"])
        chunk = S.default_chunk_rows(torch.device("cuda"), spec.config["landscape"]["dim"])
        extra = ["--batch-cells", str(F.batch_cells(spec, "cuda")), "--chunk-rows", str(chunk)]
        stub = stubbed_launches()
        as_on_a_gpu = F._sim_options
        F._sim_options = lambda *a, **k: dataclasses.replace(as_on_a_gpu(*a, **k), pack_cells=True)
    env_out = os.environ.get("OUT")
    work = Path(tempfile.mkdtemp(prefix="toy-first-use-"))
    stacks = Path(env_out or tempfile.gettempdir()) / "toy_first_use_stacks.txt"
    seconds: dict[str, float] = {}
    sampler = StackSampler(threading.get_ident(), args.interval)
    try:
        with stub:
            for label in ("cold", "warm"):
                cmd = ["toy", "run", "--figure", args.figure, "--preset", args.preset,
                       "--device", args.device, "--kernels", args.kernels, "--out", str(work / label),
                       "--no-progress", *extra]  # fmt: skip
                if label == "cold":
                    sampler.start()
                t0 = time.perf_counter()
                try:
                    rc = cli_main(cmd)
                finally:
                    if label == "cold":
                        sampler.stop()
                seconds[label] = time.perf_counter() - t0
                if rc:
                    raise SystemExit(f"toy run failed ({rc})")
                print(f"{args.figure} {label}: {seconds[label]:.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stacks.parent.mkdir(parents=True, exist_ok=True)
    with open(stacks, "w") as fh:
        for i, stack in enumerate(sampler.samples):
            fh.write(
                f"--- sample {i} (t = {(i + 1) * args.interval:.1f} s)\n"
                + "".join(traceback.format_list(stack))
            )
    top = summarize(sampler.samples)
    print(f"{len(sampler.samples)} samples of the cold run; where they sit (innermost frame per package):")
    for where, n in top:
        print(f"  {n:5d}  {where}")
    if env_out:
        info = {"figure": args.figure, "preset": args.preset, "device": args.device, "seconds": seconds,
                "samples": len(sampler.samples), "interval_s": args.interval, "top": top}  # fmt: skip
        write_json_atomic(Path(env_out) / "toy_first_use.json", info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
