"""Picking each optimizer's learning rate from a sweep, the way the paper does.

Section 2.2 of the paper: "Each learning rate has a mean final loss over replicates and the best
test loss is chosen from these mean final losses of different learning rates". Shared by the MNIST
lab (Figure 2c/2d) and :mod:`focus_optim.compare` (optimizers on a user's own problem).

Conventions:

* a learning rate whose mean is not finite (a replicate diverged to inf/NaN) cannot be best;
  if none is finite the best value is NaN;
* the spread is the standard deviation over replicates at the best lr, ``ddof=1`` by default
  (sample std; 0 with one replicate).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def best_lr(final: Any, *, ddof: int = 1) -> Any:
    """Best lr per (optimizer, batch_size) by the mean over replicates of the final loss.

    Args:
        final: DataArray with dims ``(..., lr, replicate)``.

    Returns:
        ``xarray.Dataset`` with ``best_lr``, ``best_loss`` (the mean at the best lr), ``best_std``
        (std over replicates there) and ``mean_loss`` (every lr).
    """
    import xarray as xr

    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN runs are expected (divergence)
        mean = final.mean("replicate", skipna=False)
        score = mean.where(np.isfinite(mean), np.inf)
        idx = score.argmin("lr")
        ok = np.isfinite(score.min("lr"))
        n = final.sizes["replicate"]
        std = final.std("replicate", ddof=ddof, skipna=False) if n > ddof else xr.zeros_like(mean)
    return xr.Dataset(
        {
            "best_lr": final["lr"].isel(lr=idx, drop=True).where(ok),
            "best_loss": mean.isel(lr=idx, drop=True).where(ok),
            "best_std": std.isel(lr=idx, drop=True).where(ok),
            "mean_loss": mean,
        }
    )


__all__ = ["best_lr"]
