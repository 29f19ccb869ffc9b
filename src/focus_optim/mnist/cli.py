r"""``focus-optim mnist run|plot|fetch``: the batch-size scan of Figure 2c/2d.

Examples::

    focus-optim mnist run --preset quick --out runs/mnist-quick          # CPU, minutes
    focus-optim mnist run --preset paper --out runs/mnist --device cuda --workers 2 --fused --cuda-graphs \
        --eval-precision bf16
    focus-optim mnist run --preset paper --out runs/mnist --shard 0/4    # one of four processes
    focus-optim mnist plot runs/mnist
    focus-optim mnist fetch --data-dir ~/data/mnist
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..cli_types import counted, device_arg, positive_int

PRESET_NAMES = ("quick", "paper")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mnist",
        help="MNIST batch-size scan (paper Figure 2c/2d)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    msub = p.add_subparsers(dest="mnist_command", required=True)

    r = msub.add_parser("run", help="run or resume a scan (sharded with --shard i/n or torchrun)")
    r.add_argument("--preset", choices=PRESET_NAMES, default="quick")
    r.add_argument("--out", required=True, help="results directory (resumed if it exists)")
    r.add_argument("--shard", default=None, help="i/n: this process takes every n-th cell from the i-th")
    r.add_argument(
        "--device", type=device_arg, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    r.add_argument(
        "--workers",
        type=int,
        default=0,
        help="local processes sharing the work (default 0 = auto: one per CPU core on a CPU, 1 on a GPU)",
    )
    r.add_argument("--threads", type=positive_int, default=None, help="torch threads per process")
    r.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=COMPILE_MODES,
        help="run each cell's steps through torch.compile (optionally a mode; on CUDA the modes with "
        "CUDA-graph trees are refused: use --cuda-graphs); same numbers up to rounding",
    )
    r.add_argument(
        "--fused",
        action="store_true",
        help="eager optimizer steps on the fused path (FOCUS, Signum, AdamW: one Triton launch per "
        "group on CUDA); same numbers up to rounding",
    )
    r.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each cell's forward + backward and test pass as CUDA graphs (CUDA only; the eager "
        "kernels, so the same numbers; combine with --fused, not with --compile)",
    )
    r.add_argument(
        "--fused-eval",
        action="store_true",
        help="the test pass as one Triton kernel, activations on chip (CUDA with Triton, or "
        "TRITON_INTERPRET=1 for the slow CPU interpreter; needs --eval-precision bf16); same numbers up "
        "to rounding",
    )
    r.add_argument(
        "--data-dir",
        default=None,
        help="MNIST directory (default: $FOCUS_OPTIM_MNIST, "
        "../shared/data/mnist, then a cache dir; missing files are downloaded)",
    )
    r.add_argument(
        "--no-verify",
        action="store_true",
        help="accept any well-formed IDX set (not the original counts/MD5s); recorded in the results",
    )
    g = r.add_argument_group("overrides of the preset (they change the results' configuration)")
    g.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        metavar="NAME[:K=V,...]",
        help="registry names with optional hyperparameters, e.g. adamw signum focus:gamma=0.4 lion",
    )
    g.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    g.add_argument("--lrs", nargs="+", type=float, default=None, help="explicit learning rates")
    g.add_argument(
        "--num-lrs", type=positive_int, default=None, help="N learning rates in logspace(-4, 0, N)"
    )
    g.add_argument("--replicates", type=int, default=None)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--eval-every", type=int, default=None, help="test metrics every N steps (and the last)")
    g.add_argument("--eval-precision", choices=("fp32", "tf32", "bf16"), default=None)
    g.add_argument("--train-precision", choices=("fp32", "tf32"), default=None)
    g.add_argument("--eval-chunk", type=int, default=None, help="test images per pass (0: all 10,000)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument(
        "--matrix-input-layer",
        action="store_true",
        default=None,
        help="matrix-only optimizers (muon, ...) also update the 784->128 input layer",
    )
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--plot", action="store_true", help="write figures when the scan is complete")
    r.set_defaults(func=run)

    pl = msub.add_parser("plot", help="Figure 2c/2d and a summary table from one or more results directories")
    pl.add_argument("dirs", nargs="+", help="results directories of the same scan (e.g. shards)")
    pl.add_argument("--out", default=None, help="figure directory (default: <first dir>/figures)")
    pl.set_defaults(func=plot)

    f = msub.add_parser("fetch", help="download and verify the four MNIST files")
    f.add_argument("--data-dir", default=None)
    f.set_defaults(func=fetch)


def config_from_args(args: argparse.Namespace):
    """The preset with the command line's overrides."""
    from .scan import PRESETS, lr_grid

    changes = {
        "optimizers": args.optimizers,
        "batch_sizes": args.batch_sizes,
        "lrs": args.lrs if args.lrs else (lr_grid(args.num_lrs) if args.num_lrs else None),
        "replicates": args.replicates,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "eval_precision": args.eval_precision,
        "train_precision": args.train_precision,
        "eval_chunk": args.eval_chunk,
        "seed": args.seed,
        "matrix_input_layer": args.matrix_input_layer,
    }
    return PRESETS[args.preset].replace(**{k: v for k, v in changes.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from ..sweep import parse_shard
    from .scan import run_scan

    cfg = config_from_args(args)
    shard = parse_shard(args.shard)
    t0 = time.perf_counter()
    common = dict(
        shard=shard,
        device=args.device,
        data_dir=args.data_dir,
        verify=not args.no_verify,
        progress=not args.no_progress,
        threads=args.threads,
        compile=args.compile,
        fused=args.fused,
        cuda_graphs=args.cuda_graphs,
        fused_eval=args.fused_eval,
    )
    if args.workers < 0:
        raise ValueError(f"Invalid --workers: {args.workers} (allowed: 0 for auto, or >= 1)")
    report = run_scan(cfg, args.out, workers=args.workers or _auto_workers(args.device), **common)
    print(
        f"mnist: {counted(report.computed, 'cell')} computed, {report.skipped} already there, "
        f"{report.total_cells} in the scan; "
        f"{time.perf_counter() - t0:.1f} s -> {args.out}{report.remaining_note()}"
    )
    if args.plot:
        from ..sweep import load_results

        ds = load_results(args.out)
        if ds.attrs["complete"]:
            _plot(ds, Path(args.out) / "figures")
        else:
            print(f"mnist: {ds.attrs['cells_done']}/{ds.attrs['cells_total']} cells done; not plotting yet")
    return 0


def _auto_workers(device: str | None) -> int:
    """One single-threaded worker per core on a CPU (small tensors: no OpenMP barriers); 1 on a GPU
    or under torchrun (one process per rank already)."""
    import os

    from ..sweep import default_device, shard_from_env

    if shard_from_env() is not None:
        return 1
    return (os.cpu_count() or 1) if (device or default_device()) == "cpu" else 1


def plot(args: argparse.Namespace) -> int:
    from ..sweep import load_results
    from .scan import SWEEP_NAME

    ds = load_results(args.dirs)
    if ds.attrs.get("name") != SWEEP_NAME:
        raise ValueError(
            f"{args.dirs[0]} is not an MNIST scan (its sweep is {ds.attrs.get('name')!r}); "
            "`focus-optim toy plot` draws toy stores"
        )
    _plot(ds, Path(args.out) if args.out else Path(args.dirs[0]) / "figures")
    return 0


def _plot(ds, out: Path) -> None:
    from .plots import plot_results

    paths = plot_results(ds, out)
    print((out / "summary.txt").read_text(), end="")
    print("mnist: wrote " + ", ".join(str(p) for p in paths))


def fetch(args: argparse.Namespace) -> int:
    from .data import load_mnist, resolve_data_dir

    data = load_mnist(args.data_dir, verify=True, download=True)
    print(
        f"mnist: {resolve_data_dir(args.data_dir)} holds the verified MNIST files "
        f"({len(data.train_labels)} train, {len(data.test_labels)} test)"
    )
    return 0
