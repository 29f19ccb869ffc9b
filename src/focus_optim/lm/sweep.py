"""``focus-optim lm sweep``: optimizers x learning rates x seeds of one GPT-2 training config.

Each (optimizer, lr, replicate) is a complete ``focus-optim lm train`` run of the base config with
that optimizer, peak lr and seed (``seed + replicate``), in ``OUT/runs/<label>_lr<lr>_r<rep>``,
through :func:`focus_optim.compare.compare` and so through the labs' one sweep runner:

* results (final val loss, training time, the val curve at every evaluation) are stored per run in
  ``OUT`` and load with :func:`focus_optim.load_results`; ``focus-optim compare summary|plot OUT``
  ranks the optimizers by their best lr;
* a killed sweep resumes with the same command: stored runs are skipped and an interrupted run
  continues from its last checkpoint (``ckpt_interval``), so only the steps since are redone;
* ``--workers N`` (local processes), ``--shard i/n`` or ``torchrun`` spreads the runs: under
  torchrun every rank trains its own runs on its own GPU (one process per run, no DDP), which is
  how small models fill a node or a cluster.

A run that stops on a non-finite loss is a result, stored as val loss ``inf`` (its lr can then
never be the best). Optimizers are ``NAME:KEY=VALUE,...`` (as in the MNIST lab, e.g.
``"focus:betas=(0.9,0.99),gamma=0.2,weight_decay=0.2"``), each starting from its registry
defaults. Each run sets its own ``optimizer``, ``lr``, ``optimizer_args``, ``out_dir`` and ``name``
(:data:`SET_PER_RUN`): the base config file's values of them are ignored, and ``--set`` of one is an
error (:func:`check_overrides`), as it would have no effect; ``seed`` is the first replicate's.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compare import Trial, compare
from ..optim.registry import parse_optimizer_spec
from .config import TrainConfig

METRICS = ("val_loss", "best_val_loss", "train_time")
REPLACED = ("optimizer", "lr", "optimizer_args", "seed", "out_dir", "name")
#: Where each run's value of a key it sets comes from (``seed``: ``seed + replicate``).
SET_PER_RUN = {
    "optimizer": "--optimizers",
    "lr": "--lrs",
    "optimizer_args": "--optimizers NAME:KEY=VALUE,...",
    "out_dir": "OUT/runs/<label>_lr<lr>_r<replicate>, from --out",
    "name": "the optimizer label, lr and replicate",
}


def check_overrides(overrides: Sequence[str]) -> None:
    """A ValueError for a ``key=value`` override of a key each run sets itself (:data:`SET_PER_RUN`):
    the sweep would drop it silently. Check the overrides against the config first (``load_config``)."""
    for item in overrides:
        head = item.partition("=")[0].strip().replace("-", "_").partition(".")[0]
        if head in SET_PER_RUN:
            raise ValueError(
                f"--set {item}: lm sweep sets {head} for each run (from {SET_PER_RUN[head]}); "
                "drop this override"
            )


def eval_steps(cfg: TrainConfig) -> list[int]:
    """The steps at which a run of ``cfg`` evaluates (start, every ``eval_interval``, the end)."""
    every = range(cfg.eval_interval, cfg.max_steps, cfg.eval_interval) if cfg.eval_interval > 0 else ()
    return sorted({0, *every, cfg.max_steps})


@dataclass
class TrainRun:
    """One training run of a sweep (the picklable ``train`` function given to ``compare``)."""

    base: dict[str, Any]
    root: str

    def __call__(self, trial: Trial) -> dict[str, Any]:
        from .compare import load_curve
        from .train import NonFiniteLossError, Trainer

        run_dir = Path(self.root) / "runs" / f"{trial.label}_lr{trial.lr:g}_r{trial.replicate}"
        values = {
            **self.base,
            "optimizer": trial.optimizer,
            "lr": trial.lr,
            "optimizer_args": dict(trial.hparams),
            "seed": trial.seed,
            "out_dir": str(run_dir),
            "name": f"{trial.label} lr={trial.lr:g} r{trial.replicate}",
        }
        if values.get("device", "auto") == "auto":
            values["device"] = trial.device
        cfg = TrainConfig.from_dict(values)
        try:
            with _one_process():
                summary = Trainer(cfg, resume=(run_dir / "ckpt.pt").exists()).run()
            final, train_time = float(summary["val_loss"]), float(summary["train_time"])
        except NonFiniteLossError:
            final, train_time = math.inf, math.nan
        curve = load_curve(run_dir)
        by_step = dict(zip(curve.steps.astype(int).tolist(), curve.val_loss.tolist()))
        vals = [by_step.get(s, math.nan) for s in eval_steps(cfg)]
        finite = [v for v in vals if math.isfinite(v)]
        return {
            "val_loss": final,
            "best_val_loss": min(finite) if finite else math.inf,
            "train_time": train_time,
            "val_curve": vals,
        }


def sweep(
    base: TrainConfig,
    optimizers: Sequence[str],
    lrs: Sequence[float],
    out: str | os.PathLike[str],
    *,
    replicates: int = 1,
    shard: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Any:
    """Run (or resume) the sweep; return the results as an ``xarray.Dataset`` (see the module)."""
    runs = {}
    for label in optimizers:
        spec, hparams = parse_optimizer_spec(label, reserved=("lr",), why="is swept (--lrs)")
        if label.strip() in runs:
            raise ValueError(f"Duplicate optimizer label {label.strip()!r}")
        runs[label.strip()] = {"optimizer": spec.name, **hparams}
    values = {k: v for k, v in base.to_dict().items() if k not in REPLACED}
    values["progress"] = False
    return compare(
        TrainRun(values, str(out)),
        runs,
        lrs,
        out=out,
        replicates=replicates,
        metrics=METRICS,
        curves=["val_curve"],
        points=eval_steps(base),
        point_label="step",
        name="lm-sweep",
        config={"train": values},
        base_seed=base.seed,
        shard=shard,
        workers=workers,
        progress=progress,
    )


@contextlib.contextmanager
def _one_process() -> Iterator[None]:
    """Hide torchrun's world from the trainer: under a sweep each rank trains its own runs."""
    saved = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


__all__ = ["METRICS", "SET_PER_RUN", "TrainRun", "check_overrides", "eval_steps", "sweep"]
