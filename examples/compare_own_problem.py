"""Compare FOCUS with its alternatives on your own problem: a template.

Replace ``train`` with your training run (keep its signature: a ``Trial`` in, a dict of numbers
out). Here it is a small student MLP fitting a fixed random teacher MLP on noisy data, which runs
anywhere in seconds. Every (optimizer, lr, replicate) is one run, stored in ``--out`` as it
finishes; a killed comparison resumes with the same command, and the runs spread over processes
(``--workers``), cluster array jobs (``--shard i/n``) or GPUs (``torchrun``, automatically)::

    python examples/compare_own_problem.py --out runs/compare --plot
    python examples/compare_own_problem.py --out runs/compare --shard 0/4   # job 0 of 4, etc.
    torchrun --nproc_per_node 4 examples/compare_own_problem.py --out runs/compare

The summary prints each optimizer's best lr (by the mean final validation loss over replicates,
as the paper picks them) and ``--plot`` draws the lr sweep and the curves at the best lrs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import nn

from focus_optim.compare import Trial, best_lr, compare, plot

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {"betas": (0.9, 0.999), "weight_decay": 0.01},
    "signum": {"momentum": 0.9, "weight_decay": 0.01},
    "focus": {"betas": (0.9, 0.99), "gamma": 0.2, "weight_decay": 0.01},
    "lion": {"betas": (0.9, 0.99), "weight_decay": 0.01},
}
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
POINTS = 20


def mlp(width: int) -> nn.Module:
    layers = [nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)]
    return nn.Sequential(*layers)


def train(trial: Trial, steps: int = 500, batch: int = 32) -> dict[str, object]:
    """One run: fit a teacher; report the final validation loss and a validation-loss curve."""
    dev = torch.device(trial.device)
    gen = torch.Generator().manual_seed(0)  # the problem: the same teacher and data for every run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = mlp(64)
    x_train, x_val = torch.randn(4096, 16, generator=gen), torch.randn(1024, 16, generator=gen)
    with torch.no_grad():
        scale = teacher(x_train).std()  # targets of unit variance, then label noise of std 0.3
        y_train = teacher(x_train) / scale + 0.3 * torch.randn(4096, 1, generator=gen)
        y_val = teacher(x_val) / scale
    x_train, y_train, x_val, y_val = (t.to(dev) for t in (x_train, y_train, x_val, y_val))

    torch.manual_seed(trial.seed)  # the run: same init and batches for every optimizer and lr
    model = mlp(128).to(dev)
    opt = trial.make_optimizer(model)
    batches = torch.randint(0, 4096, (steps, batch), generator=torch.Generator().manual_seed(trial.seed))
    curve = []
    for step in range(steps):
        idx = batches[step].to(dev)
        loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % (steps // POINTS) == 0:
            with torch.no_grad():
                curve.append(float(nn.functional.mse_loss(model(x_val), y_val)))
    return {"val_loss": curve[-1], "train_loss": float(loss.detach()), "val_curve": curve}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="results directory (resumed if it exists)")
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    ap.add_argument("--lrs", nargs="+", type=float, default=LRS)
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--shard", default=None, help="i/n: every n-th run, from the i-th (default: torchrun's)")
    ap.add_argument("--workers", type=int, default=1, help="local processes")
    ap.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    ap.add_argument("--plot", action="store_true", help="draw OUT/compare.png when every run is stored")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.steps < POINTS or args.steps % POINTS:
        ap.error(f"--steps must be a multiple of {POINTS}")
    ds = compare(
        _Train(args.steps),
        {k: OPTIMIZERS[k] for k in args.optimizers},
        args.lrs,
        out=args.out,
        replicates=args.replicates,
        metrics=["val_loss", "train_loss"],
        curves=["val_curve"],
        points=POINTS,
        config={"problem": "teacher-student MLP", "steps": args.steps},
        shard=args.shard,
        device=args.device,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(f"{ds.attrs['cells_done']}/{ds.attrs['cells_total']} runs stored in {args.out}")
    if not ds.attrs["complete"]:  # other shards are still running
        print(f"when every shard is done: focus-optim compare summary {args.out}")
        return 0
    table = best_lr(ds, "val_loss")
    for label in table["optimizer"].values:
        t = table.sel(optimizer=label)
        best, std = float(t["best"]), float(t["best_std"])
        print(f"{label:>8s}: best lr {float(t['best_lr']):.0e}  val loss {best:.4f} ± {std:.4f}")
    if args.plot:
        print("plot:", *plot(ds, "val_loss", f"{args.out}/compare"))
    return 0


class _Train:
    """``train`` with this run's step count (a picklable callable, for ``--workers``)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __call__(self, trial: Trial) -> dict[str, object]:
        return train(trial, steps=self.steps)


if __name__ == "__main__":
    sys.exit(main())
