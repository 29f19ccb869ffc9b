"""The authors' one-model-at-a-time loop vs this lab's ensemble, timed side by side (CPU by default).

The restatement of ``MNIST/scan-18.py`` (liuyz0/FOCUS@f5499f3): a plain ``nn.Sequential`` MLP
(:func:`focus_optim.mnist.model.reference_mlp`), ``torch.optim.AdamW`` with the bias/BN no-decay
group, a shuffling ``DataLoader`` over the training set, and after every step a full test pass with
``DataLoader(batch_size=8192)``, ``model.eval()``, ``torch.no_grad()`` and ``.item()`` per batch.
(The original also decodes PIL images through torchvision's ``ToTensor`` per sample, which this
restatement skips, so its cost is a lower bound.)

The ensemble is :func:`focus_optim.mnist.train.train_cell` with every-step test evaluation, E
members (the paper's 20 lrs x 3 replicates = 60 by default). Per batch size both are timed for a
few steps, alternately, ``--repeats`` times (minimum kept); the ensemble's per-step time is
``(T(k steps) - T(1 step)) / (k - 1)``, i.e. without its one-off setup.

The full paper scan (4 optimizers x 12 batch sizes x 60 models x 400 steps) is extrapolated with
a per-model-step time linear in the batch size, fitted to the measured batch sizes.

Usage::

    python benchmarks/mnist_authors_loop.py                     # prints a table
    OUT=/tmp/b python benchmarks/mnist_authors_loop.py          # also writes $OUT/mnist_authors_loop.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from focus_optim.atomic import write_json_atomic
from focus_optim.mnist.data import load_mnist
from focus_optim.mnist.model import reference_mlp
from focus_optim.mnist.optimizers import parse_optimizer
from focus_optim.mnist.scan import lr_grid
from focus_optim.mnist.train import DeviceData, TrainSettings, train_cell

PAPER_BATCH_SIZES = [2**k for k in range(1, 13)]
PAPER_MODEL_STEPS_PER_BS = 4 * 60 * 400  # optimizers x (lrs x replicates) x steps


def authors_steps(data: DeviceData, batch_size: int, steps: int, lr: float = 1e-3) -> float:
    """Seconds per step of the authors' loop (train step + full test pass), after one warm-up step."""
    model = reference_mlp().to(data.train_x.device)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim < 2 else decay).append(p)  # biases and BN parameters: no decay
    opt = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 1e-2}], lr=lr
    )
    train = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=batch_size, shuffle=True)
    test = DataLoader(TensorDataset(data.test_x_t.T, data.test_y), batch_size=8192, shuffle=False)
    it = iter(train)
    t0 = 0.0
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        img, label = next(it)
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(img), label)
        loss.backward()
        opt.step()
        _ = loss.item()
        model.eval()
        total, correct, n = 0.0, 0.0, 0
        with torch.no_grad():
            for timg, tlabel in test:
                out = model(timg)
                total += F.cross_entropy(out, tlabel).item() * tlabel.numel()
                correct += (out.argmax(-1) == tlabel).float().sum().item()
                n += tlabel.numel()
    return (time.perf_counter() - t0) / steps


def ensemble_step(data: DeviceData, batch_size: int, members: int, steps: int) -> float:
    """Seconds per step of the ensemble (all ``members`` models; every-step test pass), setup excluded."""
    lrs = list(np.resize(lr_grid(20), members))
    cfg = parse_optimizer("adamw")

    def run(k: int) -> float:
        t0 = time.perf_counter()
        train_cell(cfg, batch_size, lrs, data, TrainSettings(steps=k, eval_every=1), seed=0)
        return time.perf_counter() - t0

    return (run(steps) - run(1)) / (steps - 1)


def fit_linear(bs: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares ``a + b * batch_size`` through the measured points (b >= 0)."""
    A = np.stack([np.ones(len(bs)), np.asarray(bs, float)], axis=1)
    a, b = np.linalg.lstsq(A, np.asarray(seconds), rcond=None)[0]
    return float(a), float(max(b, 0.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 64, 1024])
    ap.add_argument("--members", type=int, default=60)
    ap.add_argument("--authors-steps", type=int, default=5)
    ap.add_argument("--ensemble-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (same for both)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--json", default=None, help="output JSON (default: $OUT/mnist_authors_loop.json if OUT is set)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = DeviceData.from_mnist(load_mnist(args.data_dir), args.device)

    rows = []
    for bs in args.batch_sizes:
        a_times, e_times = [], []
        for _ in range(args.repeats):
            a_times.append(authors_steps(data, bs, args.authors_steps))
            e_times.append(ensemble_step(data, bs, args.members, args.ensemble_steps))
        a, e = min(a_times), min(e_times) / args.members
        rows.append(
            {"batch_size": bs, "authors_s_per_model_step": a, "ensemble_s_per_model_step": e, "ratio": a / e}
        )

    bss = [r["batch_size"] for r in rows]
    fits = {
        k: fit_linear(bss, [r[k] for r in rows])
        for k in ("authors_s_per_model_step", "ensemble_s_per_model_step")
    }
    total = {
        k: sum((a + b * bs) * PAPER_MODEL_STEPS_PER_BS for bs in PAPER_BATCH_SIZES)
        for k, (a, b) in fits.items()
    }
    result = {
        "benchmark": "mnist_authors_loop",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "threads": args.threads,
        "torch": torch.__version__,
        "members": args.members,
        "rows": rows,
        "paper_scan_hours": {k.split("_s_")[0]: v / 3600 for k, v in total.items()},
        "paper_scan_ratio": total["authors_s_per_model_step"] / total["ensemble_s_per_model_step"],
    }
    print(
        f"device {args.device}, {args.threads} thread(s), "
        f"load avg {result['load_avg'][0]:.1f}, E={args.members}"
    )
    print(f"{'batch':>6} {'authors ms/model-step':>22} {'ensemble ms/model-step':>23} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['batch_size']:>6} {1e3 * r['authors_s_per_model_step']:>22.2f} "
            f"{1e3 * r['ensemble_s_per_model_step']:>23.2f} {r['ratio']:>6.2f}"
        )
    h = result["paper_scan_hours"]
    print(
        f"paper scan (48 cells x 60 models x 400 steps, test pass every step) on this device: "
        f"authors' loop {h['authors']:.1f} h, ensemble {h['ensemble']:.1f} h, "
        f"ratio {result['paper_scan_ratio']:.2f}"
    )
    target = args.json or (
        Path(os.environ["OUT"]) / "mnist_authors_loop.json" if os.environ.get("OUT") else None
    )
    if target:
        write_json_atomic(target, result)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
