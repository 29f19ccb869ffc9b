"""Figure 2c (best test loss vs batch size, std over replicates as error bars) and Figure 2d
(I_Signum vs batch size with +-5% guides), with the project's colours and atomic saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots as shared
from ..atomic import write_json_atomic, write_text_atomic
from .analysis import best_lr, final_losses, find_label, improvement, summarize


def plot_results(ds: Any, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``fig2c``, ``fig2d`` (PNG + PDF; 2d only if AdamW and Signum were scanned),
    ``summary.json`` and ``summary.txt`` into ``out_dir``; return the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt = shared.pyplot()
    table = best_lr(final_losses(ds))
    labels = [str(x) for x in ds["optimizer"].values]
    bs = np.asarray(ds["batch_size"].values, dtype=float)
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    for lab in labels:
        t = table.sel(optimizer=lab)
        if not np.isfinite(t["best_loss"].values).any():
            continue  # not one cell of it stored yet (a partial, sharded or killed scan)
        ax.errorbar(
            bs,
            t["best_loss"].values,
            yerr=t["best_std"].values,
            marker="o",
            ms=3,
            capsize=2,
            color=shared.color(lab),
            label=_pretty(lab),
        )
    drawn = bool(ax.lines)
    ax.set(yscale="log" if drawn else "linear", xlabel="batch size", ylabel="best test loss")
    _batch_axis(ax, bs, drawn)
    title = f"MNIST MLP, {ds.sizes['step']} steps"
    ax.set_title(title + ("" if ds.attrs.get("complete", True) else " (incomplete)"), fontsize=9)
    written += shared.save(fig, out / "fig2c")
    plt.close(fig)

    adam, signum = find_label(labels, "adamw"), find_label(labels, "signum")
    if adam is not None and signum is not None:
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        drawn = False
        for lab in labels:
            if lab == adam:
                continue
            main = lab == signum
            imp = improvement(table["best_loss"], lab, adam)
            if not np.isfinite(imp).any():
                continue  # no batch size where both are stored yet
            drawn = True
            ax.plot(
                bs,
                100 * imp.values,
                marker="o",
                ms=3 if main else 2,
                lw=1.6 if main else 0.8,
                alpha=1.0 if main else 0.6,
                color=shared.color(lab),
                label=("$I_\\mathrm{Signum}$" if main else f"$I$ {_pretty(lab)}"),
            )
        for y in (5, -5):
            ax.axhline(y, color="grey", ls="--", lw=0.8)
        ax.axhline(0, color="black", lw=0.5)
        ax.set(xlabel="batch size", ylabel="improvement over Adam (%)")
        _batch_axis(ax, bs, drawn)
        written += shared.save(fig, out / "fig2d")
        plt.close(fig)

    summary = summarize(ds)
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.txt", format_summary(summary))
    written += [out / "summary.json", out / "summary.txt"]
    return written


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: best lr / best loss +- std per optimizer and batch size, then I_Signum."""
    bss = summary["batch_sizes"]
    lines = [f"{'batch':>6} " + " ".join(f"{lab[:24]:>26}" for lab in summary["optimizers"])]
    for i, b in enumerate(bss):
        cells = []
        for s in summary["optimizers"].values():
            loss, std, lr = s["best_loss"][i], s["best_std"][i], s["best_lr"][i]
            cells.append(f"{loss:.4f}+-{std:.4f} @{lr:.1e}" if loss is not None else "n/a")
        lines.append(f"{b:>6} " + " ".join(f"{c:>26}" for c in cells))
    if "I_signum" in summary:
        shown = [
            f"{b}:{100 * v:+.1f}" if v is not None else f"{b}:n/a" for b, v in zip(bss, summary["I_signum"])
        ]
        lines.append("I_Signum (%): " + " ".join(shown))
        c = summary["crossover"]
        if c["negative_from"] is not None:
            lines.append(
                f"crossover: Signum better up to batch {c['positive_up_to']}, "
                f"Adam better from {c['negative_from']}"
            )
        else:
            lines.append("crossover: none (no change from Signum better to Adam better)")
    if not summary["complete"]:
        lines.append("(incomplete results: missing cells are n/a)")
    return "\n".join(lines) + "\n"


def _batch_axis(ax: Any, bs: np.ndarray, drawn: bool) -> None:
    """A log2 batch-size axis over the scanned sizes (set, not autoscaled: a partial store may
    have nothing finite to scale to); a note where no result is stored yet."""
    ax.set_xscale("log", base=2)
    ax.set_xlim(bs.min() / 1.5, bs.max() * 1.5)
    if drawn:
        ax.legend(frameon=False, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no results stored yet", transform=ax.transAxes, ha="center", color="grey")


def _pretty(label: str) -> str:
    names = {"adamw": "AdamW", "signum": "Signum", "focus": "FOCUS"}
    name, _, rest = label.partition(":")
    return names.get(name, name) + (f" ({rest.replace('gamma=', 'γ=')})" if rest else "")
