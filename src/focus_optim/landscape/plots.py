"""The toy figures: phase diagrams (2, 6), pairwise panels (5), trajectories (1c), loss curves (4),
and the section-4 regret check. Colours and saving come from :mod:`focus_optim.plots`
(Adam orange, Signum yellow, FOCUS blue); each figure is written as PNG and PDF.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots as P
from . import analysis as A
from . import valley as V

LABELS = {"adamw": "Adam", "signum": "Signum", "focus": "FOCUS"}
AXIS_LABELS = {"sharpness": "sharpness $a$", "weight_decay": "weight decay", "noise": r"noise $\sigma$"}
MISSING = "#dddddd"


def label(name: str) -> str:
    return LABELS.get(name, name)


def _mesh(ax: Any, ds: Any, values: np.ndarray, colors: Sequence[str]) -> None:
    """Pixels coloured by category ``values [outer, noise]`` (``-1``/NaN: missing)."""
    from matplotlib.colors import ListedColormap

    axis = A.outer_axis(ds)
    cmap = ListedColormap(list(colors)).with_extremes(bad=MISSING)
    vals = np.ma.masked_invalid(np.where(values < 0, np.nan, values).astype(float))
    ax.pcolormesh(
        ds["noise"].values,
        ds[axis].values,
        vals,
        cmap=cmap,
        vmin=-0.5,
        vmax=len(colors) - 0.5,
        shading="nearest",
        rasterized=True,
    )
    if axis == "sharpness":
        ax.set_yscale("log")
    ax.set_xlabel(AXIS_LABELS["noise"])
    ax.set_ylabel(AXIS_LABELS[axis])


def _legend(ax: Any, names: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=P.color(n), label=label(n)) for n in names],
        loc="upper left",
        fontsize=7,
        framealpha=0.8,
    )


def phase_panel(ax: Any, ds: Any, title: str = "", optimizers: Sequence[str] | None = None) -> None:
    """The optimizer with the lowest best-lr mean final loss at each pixel."""
    names = list(optimizers) if optimizers is not None else [str(o) for o in ds["optimizer"].values]
    win = A.winners(ds, names).transpose(A.outer_axis(ds), "noise").values
    _mesh(ax, ds, win, [P.color(n) for n in names])
    _legend(ax, names)
    ax.set_title(title, fontsize=9)


def pair_panel(ax: Any, ds: Any, first: str, second: str, title: str = "") -> None:
    """Which of two optimizers is better at each pixel (each in its own colour)."""
    win = A.pairwise(ds, first, second).transpose(A.outer_axis(ds), "noise").values
    cat = np.where(np.isnan(win), -1, np.where(win > 0.5, 0, 1))
    _mesh(ax, ds, cat, [P.color(first), P.color(second)])
    _legend(ax, [first, second])
    ax.set_title(title or f"{label(first)} vs {label(second)}", fontsize=9)


def _fig(ncols: int, nrows: int = 1, size: tuple[float, float] = (3.6, 3.0)) -> tuple[Any, Any]:
    plt = P.pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, axes


def _save(fig: Any, out: Path, name: str, formats: tuple[str, ...]) -> list[Path]:
    fig.tight_layout()
    paths = P.save(fig, out / name, formats)
    P.pyplot().close(fig)
    return paths


def figure_phase(
    stores: Mapping[str, Any], out: Path, formats: tuple[str, ...] = ("png", "pdf")
) -> list[Path]:
    """Figure 2 (a, b) and Figure 6 (left, right): one panel per available store."""
    written: list[Path] = []
    titles = {
        "2a": "(a) weight decay 0.1",
        "2b": "(b) a = 10",
        "6l": "no rotation",
        "6r": "100-D valley",
        "6rs": "100-D valley, a = 10/99",
    }
    for name, keys in (("fig2", ("2a", "2b")), ("fig6", ("6l", "6r", "6rs"))):
        have = [k for k in keys if k in stores]
        if not have:
            continue
        fig, axes = _fig(len(have))
        for ax, k in zip(axes[0], have):
            phase_panel(ax, stores[k], titles[k])
        written += _save(fig, out, name, formats)
    return written


def figure_pairs(
    stores: Mapping[str, Any], out: Path, formats: tuple[str, ...] = ("png", "pdf")
) -> list[Path]:
    """Figure 5: every pairwise comparison, for the 2a and 2b data."""
    have = [k for k in ("2a", "2b") if k in stores]
    if not have:
        return []
    fig, axes = _fig(3, len(have))
    for row, k in enumerate(have):
        names = [str(o) for o in stores[k]["optimizer"].values]
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        for col, (a, b) in enumerate(pairs[:3]):
            pair_panel(axes[row][col], stores[k], a, b, f"({k}) {label(a)} vs {label(b)}")
    return _save(fig, out, "fig5", formats)


def figure_trajectories(
    ds: Any, out: Path, formats: tuple[str, ...] = ("png", "pdf"), replicate: int = 0
) -> list[Path]:
    """Figure 1c: the landscape (log-scaled contours) and one trajectory per optimizer."""
    cfg = _config(ds)
    land = cfg["landscape"]
    import torch

    theta = ds["theta"].sel(replicate=replicate)
    fig, axes = _fig(1, 1, (5.0, 4.2))
    ax = axes[0][0]
    lim = max(0.5, float(np.nanmax(np.abs(theta.values))) * 1.1)
    xs = np.linspace(-0.25 * lim, lim, 300)
    ys = np.linspace(-0.25 * lim, lim, 300)
    X, Y = np.meshgrid(xs, ys)
    grid = torch.tensor(np.stack([X.ravel(), Y.ravel()], -1), dtype=torch.float64)
    e = torch.tensor(land["axis"], dtype=torch.float64)
    L = V.loss(grid, cfg["sharpness"], e, land["c"]).numpy().reshape(X.shape)
    shifted = np.log10(L - L.min() + 1e-3)
    ax.contourf(X, Y, shifted, levels=30, cmap="Greys_r", alpha=0.8)
    names = [str(n) for n in ds["optimizer"].values]
    for z, name in enumerate(reversed(names)):  # the first optimizer (Adam) on top
        t = theta.sel(optimizer=name).values
        ax.plot(t[:, 0], t[:, 1], color=P.color(name), lw=0.9, label=label(name), alpha=0.9, zorder=2 + z)
        ax.plot(t[-1, 0], t[-1, 1], "o", color=P.color(name), ms=5, mec="k", mew=0.6, zorder=10 + z)
    ax.set_xlabel("$x$")
    ax.set_ylabel("$y$")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(
        f"a = {cfg['sharpness']}, c = {land['c']}, $\\sigma$ = {cfg['noise']}, lr = {cfg['lr']}, "
        f"wd = {cfg['weight_decay']}",
        fontsize=8,
    )
    return _save(fig, out, "fig1c", formats)


def figure_curves(ds: Any, out: Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Figure 4: (left) L(u, v=0) = -c u; (middle) mean loss vs step of Adam and FOCUS; (right) mean
    projection u on the valley axis vs step."""
    cfg = _config(ds)
    c = cfg["landscape"]["c"]
    fig, axes = _fig(3, 1, (4.0, 3.0))
    u = np.linspace(0, 10, 50)
    axes[0][0].plot(u, -c * u, color="k")
    axes[0][0].set_xlabel("$u$")
    axes[0][0].set_ylabel("$L(u, v=0)$")
    ax = axes[0][1]
    styles = ["-", "--", ":", "-."]
    for name in ds["optimizer"].values:
        for i, s in enumerate(ds["noise"].values):
            mean = ds["loss"].sel(optimizer=name, noise=s).mean("replicate").values
            ax.plot(
                ds["step"].values,
                mean,
                styles[i % len(styles)],
                color=P.color(str(name)),
                lw=1,
                label=f"{label(str(name))}, $\\sigma$ = {s:g}",
            )
            u_mean = ds["u"].sel(optimizer=name, noise=s).mean("replicate").values
            axes[0][2].plot(
                ds["step"].values, u_mean, styles[i % len(styles)], color=P.color(str(name)), lw=1
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over replicates)")
    ax.legend(fontsize=7)
    ax.set_title(f"a = {cfg['sharpness']}, lr = {cfg['lr']}, wd = {cfg['weight_decay']}", fontsize=8)
    axes[0][2].set_xlabel("step")
    axes[0][2].set_ylabel("$u$ (mean over replicates)")
    return _save(fig, out, "fig4", formats)


def figure_regret(result: Any, out: Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Section 4: average regret R(T)/T of FOCUS vs T (log-log) with the fitted slope."""
    fig, axes = _fig(1, 1, (4.0, 3.2))
    ax = axes[0][0]
    ax.loglog(result.T, result.avg_regret, "o", color=P.color("focus"), ms=4, label="FOCUS")
    fit = np.exp(result.intercept) * result.T**result.slope
    ax.loglog(result.T, fit, "-", color="k", lw=0.8, label=f"fit: slope {result.slope:.3f}")
    ref = fit[-1] * (result.T / result.T[-1]) ** -0.5
    ax.loglog(result.T, ref, ":", color="grey", lw=0.8, label="slope -1/2")
    ax.set_xlabel("$T$")
    ax.set_ylabel("$R(T)/T$")
    ax.legend(fontsize=8)
    return _save(fig, out, "regret", formats)


def _config(ds: Any) -> dict[str, Any]:
    import json

    return json.loads(ds.attrs["config"])


def plot_all(
    stores: Mapping[str, Any], out: str | os.PathLike[str], formats: tuple[str, ...] = ("png", "pdf")
) -> list[Path]:
    """Every figure whose data are in ``stores`` (figure key -> Dataset)."""
    out = Path(out)
    written = figure_phase(stores, out, formats) + figure_pairs(stores, out, formats)
    if "1c" in stores:
        written += figure_trajectories(stores["1c"], out, formats)
    if "4" in stores:
        written += figure_curves(stores["4"], out, formats)
    return written


__all__ = [
    "figure_curves",
    "figure_pairs",
    "figure_phase",
    "figure_regret",
    "figure_trajectories",
    "pair_panel",
    "phase_panel",
    "plot_all",
]
