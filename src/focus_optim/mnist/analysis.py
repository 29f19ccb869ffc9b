"""From a scan's results to Figure 2c/2d: best learning rate, I_Signum, the crossover.

Section 2.2 of the paper: "Each learning rate has a mean final loss over replicates and the best
test loss is chosen from these mean final losses of different learning rates", and
``I_Signum = (L_Adam - L_Signum) / L_Adam`` (Eq. 4) with those best losses.

Conventions (documented in ``docs/mnist.md``):

* the final loss is the test loss at the last step;
* a learning rate whose mean is not finite (a replicate diverged to inf/NaN) cannot be best;
  if none is finite the best loss is NaN;
* error bars are the standard deviation over replicates at the best lr, ``ddof=1`` (sample std;
  0 with one replicate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..selection import best_lr
from .optimizers import registry_name


def final_losses(ds: Any, metric: str = "test_loss") -> Any:
    """``history`` at the last step: DataArray ``(optimizer, batch_size, lr, replicate)``."""
    return ds["history"].sel(metric=metric).isel(step=-1, drop=True)


def improvement(best_loss: Any, optimizer: str, baseline: str) -> Any:
    """``(L_baseline - L_optimizer) / L_baseline`` over batch sizes (Eq. 4 with Adam as baseline)."""
    base = best_loss.sel(optimizer=baseline, drop=True)
    return (base - best_loss.sel(optimizer=optimizer, drop=True)) / base


def find_label(labels: Sequence[str], name: str) -> str | None:
    """The label of registry optimizer ``name``: an exact match first, else the first of that name."""
    if name in labels:
        return name
    return next((lab for lab in labels if registry_name(lab) == name), None)


def crossover(batch_sizes: Sequence[int], values: Sequence[float]) -> dict[str, Any]:
    """Where a positive-then-negative improvement changes sign.

    Returns ``{"positive_up_to": b1, "negative_from": b2}`` for the first adjacent pair of batch
    sizes with ``values >= 0`` then ``< 0`` (``None`` each if there is no such change), plus the
    batch sizes where the value is positive / negative.
    """
    v = np.asarray(values, dtype=float)
    pos = [int(b) for b, x in zip(batch_sizes, v) if np.isfinite(x) and x >= 0]
    neg = [int(b) for b, x in zip(batch_sizes, v) if np.isfinite(x) and x < 0]
    out: dict[str, Any] = {"positive_up_to": None, "negative_from": None, "positive": pos, "negative": neg}
    for i in range(len(v) - 1):
        if np.isfinite(v[i]) and np.isfinite(v[i + 1]) and v[i] >= 0 > v[i + 1]:
            out["positive_up_to"], out["negative_from"] = int(batch_sizes[i]), int(batch_sizes[i + 1])
            break
    return out


def summarize(ds: Any, *, ddof: int = 1) -> dict[str, Any]:
    """Everything Figure 2c/2d shows, as JSON-able numbers."""
    table = best_lr(final_losses(ds), ddof=ddof)
    labels = [str(x) for x in ds["optimizer"].values]
    batch_sizes = [int(b) for b in ds["batch_size"].values]
    out: dict[str, Any] = {
        "complete": bool(ds.attrs.get("complete", True)),
        "batch_sizes": batch_sizes,
        "optimizers": {},
    }
    for lab in labels:
        t = table.sel(optimizer=lab)
        out["optimizers"][lab] = {
            "best_lr": _list(t["best_lr"]),
            "best_loss": _list(t["best_loss"]),
            "best_std": _list(t["best_std"]),
        }
    adam, signum = find_label(labels, "adamw"), find_label(labels, "signum")
    if adam is not None and signum is not None:
        imp = improvement(table["best_loss"], signum, adam)
        out["I_signum"] = _list(imp)
        out["crossover"] = crossover(batch_sizes, imp.values)
        out["adam"], out["signum"] = adam, signum
    return out


def _list(da: Any) -> list[float | None]:
    return [float(x) if np.isfinite(x) else None for x in np.asarray(da.values, dtype=float)]
