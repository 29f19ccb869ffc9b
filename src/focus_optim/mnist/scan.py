"""The batch-size scan of Figure 2c/2d on :mod:`focus_optim.sweep`.

Grid: outer axes ``(optimizer, batch_size)``, one cell each; inner axes ``(lr, replicate)``, all
trained as one ensemble of ``len(lrs) * replicates`` members inside the cell. One variable,
``history``, with trailing dims ``(step, metric)``; metrics are :data:`~.train.METRICS`.

Presets (:data:`PRESETS`): ``paper`` is appendix A.2 exactly (20 lrs in logspace(-4, 0) x batch
sizes 2^1..2^12 x 3 replicates x AdamW, Signum, FOCUS gamma 0.2 and 0.4; 400 steps; test metrics
every step). ``quick`` is a coarse grid for a CPU (see ``docs/mnist.md`` for its timing and the
crossover it shows).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sweep import Cell, Deferred, Shard, SweepReport, SweepSpec, default_device, run_sweep
from .data import FILES, MNIST
from .optimizers import PAPER_OPTIMIZERS, parse_optimizer
from .train import METRICS, DeviceData, TrainSettings, check_compile_mode, train_cell

SWEEP_NAME = "mnist-batch-size"


def lr_grid(count: int = 20, lo: float = -4.0, hi: float = 0.0) -> tuple[float, ...]:
    """``count`` learning rates uniform in log10 between ``10**lo`` and ``10**hi`` (the paper's grid)."""
    return tuple(float(x) for x in np.logspace(lo, hi, count))


@dataclass(frozen=True)
class ScanConfig:
    """The whole scan. Every field changes results, so all of it goes into the results' manifest
    (grid and seed as the sweep's axes, the rest as its config); a changed config refuses to write
    into an old results directory. Where and how it runs (device, shards, workers, data
    directory) is not part of it. ``data`` is filled in from the loaded files."""

    optimizers: tuple[str, ...] = PAPER_OPTIMIZERS
    batch_sizes: tuple[int, ...] = tuple(2**k for k in range(1, 13))
    lrs: tuple[float, ...] = lr_grid(20)
    replicates: int = 3
    steps: int = 400
    weight_decay: float = 1e-2
    eval_every: int = 1
    eval_precision: str = "fp32"
    train_precision: str = "fp32"
    eval_chunk: int = 0
    drop_last: bool = False
    matrix_input_layer: bool = False
    seed: int = 0
    data: str = "mnist"

    def __post_init__(self) -> None:
        for lab in self.optimizers:
            parse_optimizer(lab)  # raises on unknown names / hyperparameters
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"Invalid optimizers: {self.optimizers} (each at most once)")
        most = FILES["train_images"].count
        bs = self.batch_sizes
        if (
            not bs
            or any(not isinstance(b, int | np.integer) or isinstance(b, bool) for b in bs)
            or any(not 2 <= b <= most for b in bs)
            or len(set(bs)) != len(bs)
        ):
            raise ValueError(
                f"Invalid batch_sizes: {bs} (allowed: distinct integers in 2 .. {most}, the training images "
                "a minibatch of each member draws from)"
            )
        lrs = self.lrs
        if (
            not lrs
            or any(not isinstance(v, float | int | np.number) or isinstance(v, bool) for v in lrs)
            or any(not math.isfinite(v) or v < 0 for v in lrs)
            or len(set(lrs)) != len(lrs)
        ):
            raise ValueError(
                f"Invalid lrs: {lrs} (allowed: a non-empty list of distinct finite numbers >= 0)"
            )
        if self.replicates < 1:
            raise ValueError(f"Invalid replicates: {self.replicates} (allowed: >= 1)")
        self.settings()  # validates the training settings

    def replace(self, **changes: Any) -> ScanConfig:
        """A copy with ``changes``; unknown keys raise an error listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise ValueError(f"Unknown scan config key(s): {', '.join(unknown)}; valid: {', '.join(valid)}")
        norm: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return dataclasses.replace(self, **norm)

    def settings(self) -> TrainSettings:
        return TrainSettings(
            steps=self.steps,
            weight_decay=self.weight_decay,
            eval_every=self.eval_every,
            eval_precision=self.eval_precision,
            train_precision=self.train_precision,
            eval_chunk=self.eval_chunk,
            drop_last=self.drop_last,
            matrix_input_layer=self.matrix_input_layer,
        )

    @property
    def members(self) -> int:
        return len(self.lrs) * self.replicates

    def check_data(self, data: MNIST) -> None:
        """Check the batch sizes against the loaded training set (before any results are written)."""
        n = len(data.train_labels)
        for b in self.batch_sizes:
            if b > n:
                raise ValueError(
                    f"Invalid batch_sizes: {b} exceeds the {n} training images in {data.directory} "
                    f"(allowed: 2 .. {n})"
                )
            if not self.drop_last and n % b == 1:  # (train.DataOrder's rule, checked before the store)
                raise ValueError(
                    f"Invalid batch_sizes: {b} leaves a last batch of 1 of the {n} training images per "
                    "epoch, which batch norm cannot train on (allowed: sizes that do not, or drop_last)"
                )


PRESETS: dict[str, ScanConfig] = {
    "paper": ScanConfig(),
    # CPU-sized (docs/mnist.md has its time and crossover): AdamW vs Signum, 4 batch sizes that straddle
    # the crossover, the 5 paper lrs 1e-4 .. 4.8e-3 (every 2nd; both optima lie inside), 2 replicates,
    # test metrics at steps 200 and 400.
    "quick": ScanConfig(
        optimizers=("adamw", "signum"),
        batch_sizes=(4, 16, 64, 256),
        lrs=lr_grid(20)[0:9:2],
        replicates=2,
        eval_every=200,
    ),
}


def sweep_spec(cfg: ScanConfig) -> SweepSpec:
    """The :class:`~focus_optim.sweep.SweepSpec` of a scan."""
    grid = ("optimizers", "batch_sizes", "lrs", "replicates", "steps", "seed")
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in grid}
    return SweepSpec(
        name=SWEEP_NAME,
        outer={"optimizer": list(cfg.optimizers), "batch_size": list(cfg.batch_sizes)},
        inner={"lr": list(cfg.lrs), "replicate": list(range(cfg.replicates))},
        variables={"history": ("step", "metric")},
        extra_coords={"step": list(range(1, cfg.steps + 1)), "metric": list(METRICS)},
        config=config,
        seed=cfg.seed,
    )


_DEVICE_DATA: dict[tuple[str, bool, str], DeviceData] = {}


def make_compute(
    cfg: ScanConfig,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    compile: str | None = None,
    fused: bool = False,
    cuda_graphs: bool = False,
    fused_eval: bool = False,
):
    """``compute(cells, device)`` for :func:`~focus_optim.sweep.run_sweep` (data loaded on first use
    and kept on the device for the life of the process; ``compile``, ``fused``, ``cuda_graphs``,
    ``fused_eval``: see :func:`run_scan`)."""
    settings = cfg.settings()
    members_lr = [lr for lr in cfg.lrs for _ in range(cfg.replicates)]  # member = i_lr * R + r

    def compute(cells: list[Cell], device: str) -> list[Mapping[str, np.ndarray]]:
        data = load_data(data_dir, verify=verify)
        if data.data_id != cfg.data:
            raise ValueError(f"the scan's data is {cfg.data!r} but {data.directory} holds {data.data_id!r}")
        key = (str(data.directory.resolve()), verify, device)
        if key not in _DEVICE_DATA:
            _DEVICE_DATA[key] = DeviceData.from_mnist(data, device)
        out: list[Mapping[str, np.ndarray]] = []
        for cell in cells:
            hist = train_cell(
                parse_optimizer(cell.coords["optimizer"]),
                int(cell.coords["batch_size"]),
                members_lr,
                _DEVICE_DATA[key],
                settings,
                seed=cell.seed,
                compile=compile,
                fused=fused,
                cuda_graphs=cuda_graphs,
                fused_eval=fused_eval,
            )
            out.append({"history": hist.reshape(len(cfg.lrs), cfg.replicates, cfg.steps, len(METRICS))})
        return out

    return compute


def load_data(data_dir: str | os.PathLike[str] | None = None, *, verify: bool = True) -> MNIST:
    """:func:`~.data.load_mnist` (cached per process)."""
    from .data import load_mnist

    return load_mnist(data_dir, verify=verify)


def fused_eval_available(device: str) -> bool:
    """Whether ``fused_eval``'s Triton kernel runs on ``device``: a CUDA device with Triton
    installed, or any device under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter)."""
    import torch

    from ..optim._kernels import use_triton

    return use_triton(torch.device(device))


def run_scan(
    cfg: ScanConfig,
    out: str | os.PathLike[str],
    *,
    shard: Shard | None = None,
    device: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
    progress: bool = True,
    max_cells: int | None = None,
    threads: int | None = None,
    workers: int = 1,
    compile: str | None = None,
    fused: bool = False,
    cuda_graphs: bool = False,
    fused_eval: bool = False,
) -> SweepReport:
    """Run (or resume) this process's share of the scan into the results directory ``out``.

    With ``workers > 1`` the cells go, largest batch size first, to that many local processes
    writing into the same store (the sweep runner's workers); each keeps MNIST on its device
    between cells. On a CPU each worker gets ``cores // workers`` threads by default (several
    single-threaded processes beat one multi-threaded process on these small tensors).

    ``compile``: a ``torch.compile`` mode (``"default"``, ``"reduce-overhead"`` on CPU only,
    ...) for each cell's training and test steps (:func:`~.train.train_cell`); ``None`` runs
    eagerly. It changes how cells run, not what they compute, so it is not part of the config.
    ``fused``: eager optimizer steps on the fused path where the optimizer has one for ensembles
    (FOCUS, Signum, AdamW; one Triton launch per group on CUDA); likewise not part of the config.
    ``cuda_graphs``: each cell's training forward + backward and test pass replayed as CUDA graphs
    (:class:`~.train.CellGraphs`; the eager cell's kernels, so its numbers); CUDA only.
    ``fused_eval``: the bf16 test pass as one Triton kernel (:mod:`.triton_eval`; same numbers up
    to rounding: biases and logits stay float32); needs ``eval_precision="bf16"`` and a device the
    kernel runs on (:func:`fused_eval_available`).
    """
    device = device or default_device()
    check_compile_mode(compile, device)
    if cuda_graphs and (compile or not device.startswith("cuda")):
        why = f"compile={compile!r}" if compile else f"device {device!r}"
        raise ValueError(f"cuda_graphs needs eager cells on a CUDA device, not {why}")
    if fused_eval and cfg.eval_precision != "bf16":
        raise ValueError(f"fused_eval needs eval_precision 'bf16', not {cfg.eval_precision!r}")
    if fused_eval and not fused_eval_available(device):
        raise ValueError(
            f"fused_eval (--fused-eval) needs a CUDA device with Triton installed, or TRITON_INTERPRET=1 "
            f"for Triton's CPU interpreter (slow), not device {device!r}"
        )
    if workers > 1 and threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers) if device == "cpu" else 2
    data = load_data(data_dir, verify=verify)
    cfg.check_data(data)
    cfg = cfg.replace(data=data.data_id)  # which data, in the manifest
    return run_sweep(
        sweep_spec(cfg),
        Deferred(
            make_compute,
            cfg,
            data_dir,
            verify=verify,
            compile=compile,
            fused=fused,
            cuda_graphs=cuda_graphs,
            fused_eval=fused_eval,
        ),
        out,
        shard=shard,
        device=device,
        progress=progress,
        max_cells=max_cells,
        threads=threads,
        workers=workers,
        order=lambda cell: -int(cell.coords["batch_size"]),
    )
