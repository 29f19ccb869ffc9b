"""From a phase-diagram store to the paper's pictures: best learning rates, winners, pairs.

The paper picks each optimizer's learning rate by the mean final loss over replicates
(section 2.2: "the optimal learning rate is selected via the mean of final losses") and colours a
pixel by the optimizer with the lowest such best mean loss. Non-finite losses (diverged runs)
count as +inf, so a learning rate with any diverged replicate is never the best one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METRIC = "final_loss"


def best_lr(ds: Any, metric: str = METRIC) -> tuple[Any, Any]:
    """``(best mean loss, its lr)`` per optimizer and pixel (the lr axis reduced), by the paper's
    rule in :func:`focus_optim.selection.best_lr`. Where every lr diverged the best loss is +inf
    (it loses to any finite optimizer) and the lr NaN; pixels not computed yet are NaN."""
    from ..selection import best_lr as select

    chosen = select(ds["metrics"].sel(metric=metric))
    done = ds["cell_done"]
    return chosen["best_loss"].fillna(np.inf).where(done), chosen["best_lr"].where(done)


def winners(ds: Any, optimizers: Sequence[str] | None = None, metric: str = METRIC) -> Any:
    """Index (into ``optimizers``) of the best optimizer at each pixel; -1 where data are missing."""
    best, _ = best_lr(ds, metric)
    if optimizers is not None:
        best = best.sel(optimizer=list(optimizers))
    missing = best.isnull().any("optimizer")
    arr = best.fillna(np.inf).argmin("optimizer")
    return arr.where(~missing, -1)


def pairwise(ds: Any, first: str, second: str, metric: str = METRIC) -> Any:
    """+1 where ``first`` has the lower best mean loss, 0 where ``second`` does, NaN if missing."""
    best, _ = best_lr(ds, metric)
    a, b = best.sel(optimizer=first), best.sel(optimizer=second)
    out = (a < b).astype(float)
    return out.where(~(a.isnull() | b.isnull()))


def outer_axis(ds: Any) -> str:
    """The phase diagram's vertical axis: ``sharpness`` (2a) or ``weight_decay`` (2b, 6)."""
    for name in ("sharpness", "weight_decay"):
        if name in ds.dims:
            return name
    raise ValueError(f"not a phase-diagram store (dims {tuple(ds.dims)})")


def summary(ds: Any) -> dict[str, Any]:
    """Fractions of pixels won by each optimizer, overall and in four quadrants of the diagram
    (low/high noise x low/high outer axis), used to check that a run shows the phase structure."""
    win = winners(ds)
    names = [str(o) for o in ds["optimizer"].values]
    axis = outer_axis(ds)
    n_noise, n_outer = ds.sizes["noise"], ds.sizes[axis]
    out: dict[str, Any] = {"pixels": int((win >= 0).sum()), "overall": {}}
    for i, name in enumerate(names):
        out["overall"][name] = float((win == i).sum() / max(1, int((win >= 0).sum())))
    quads = {
        "low_noise_low_" + axis: dict(noise=slice(0, n_noise // 2), **{axis: slice(0, n_outer // 2)}),
        "low_noise_high_" + axis: dict(noise=slice(0, n_noise // 2), **{axis: slice(n_outer // 2, None)}),
        "high_noise_low_" + axis: dict(noise=slice(n_noise // 2, None), **{axis: slice(0, n_outer // 2)}),
        "high_noise_high_" + axis: dict(noise=slice(n_noise // 2, None), **{axis: slice(n_outer // 2, None)}),
    }
    for q, sel in quads.items():
        w = win.isel(**sel)
        total = max(1, int((w >= 0).sum()))
        out[q] = {name: float((w == i).sum() / total) for i, name in enumerate(names)}
    return out


def critical_noise(ds: Any, metric: str = METRIC) -> Any:
    """Per value of the outer axis, the smallest noise at which Adam is not the best optimizer
    (NaN if Adam wins at every noise level)."""
    names = [str(o) for o in ds["optimizer"].values]
    adam = names.index("adamw")
    win = winners(ds, metric=metric)
    loses = (win != adam) & (win >= 0)
    first = loses.argmax("noise")
    sigma = ds["noise"].isel(noise=first)
    return sigma.where(loses.any("noise"))


def phase_checks(ds: Any) -> dict[str, bool]:
    """The qualitative structure of the paper's Figure 2a (section 2.2-2.3), as yes/no checks:

    * ``adam_best_without_noise``: Adam wins at least 90% of the sigma = 0 pixels;
    * ``signum_family_best_at_high_noise``: at the largest noise, Signum or FOCUS wins at least
      90% of the pixels in the lower half of the sharpness range;
    * ``critical_noise_grows_with_sharpness``: the critical noise (where Adam stops winning) rises
      with sharpness (Spearman correlation > 0.7);
    * ``focus_beats_signum_when_sharp``: among pixels of the upper half of the sharpness range that
      Adam does not win, FOCUS wins more than Signum.
    """
    names = [str(o) for o in ds["optimizer"].values]
    if not {"adamw", "signum", "focus"} <= set(names) or "sharpness" not in ds.dims:
        return {}
    win = winners(ds)
    adam, signum, focus = (names.index(n) for n in ("adamw", "signum", "focus"))
    n_a = ds.sizes["sharpness"]
    zero = win.isel(noise=0)
    low_a_high_noise = win.isel(noise=-1, sharpness=slice(0, n_a // 2))
    crit = critical_noise(ds).values
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    finite = np.isfinite(crit)
    crit_filled = np.where(finite, crit, np.inf)
    rho = np.corrcoef(ranks(np.arange(n_a)), ranks(crit_filled))[0, 1] if finite.sum() > 2 else np.nan
    upper = win.isel(sharpness=slice(n_a // 2, None))
    return {
        "adam_best_without_noise": bool((zero == adam).mean() >= 0.9),
        "signum_family_best_at_high_noise": bool(
            ((low_a_high_noise == signum) | (low_a_high_noise == focus)).mean() >= 0.9
        ),
        "critical_noise_grows_with_sharpness": bool(rho > 0.7),
        "focus_beats_signum_when_sharp": bool(int((upper == focus).sum()) > int((upper == signum).sum())),
    }


__all__ = [
    "METRIC",
    "best_lr",
    "critical_noise",
    "outer_axis",
    "pairwise",
    "phase_checks",
    "summary",
    "winners",
]
