"""``focus-optim lm compare``: validation curves of several runs and steps-to-target ratios.

For each run (a ``lm train`` output directory) the ``val`` records of ``log.jsonl`` give the
validation loss against optimizer steps, tokens and training wall time (evaluation excluded).
The figure has one panel per x-axis (the paper's Figure 3 uses steps, Figure 8 wall time).

Steps to target: the target loss is ``--target`` or the best (lowest) val loss of the reference
run (default: the first run). A run reaches it at the first evaluation whose loss is <= target;
the step (tokens, time) is linearly interpolated between that evaluation and the one before.
``step_ratio = steps(run) / steps(reference)`` and ``speedup = 1 / step_ratio``; runs that never
reach the target get ``None``. The table is printed and saved as ``compare.json``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json_atomic
from .runlog import LOG_NAME, read_records


@dataclass
class Curve:
    """A run's validation curve (evaluations in step order, non-finite losses kept as nan)."""

    label: str
    optimizer: str
    path: str
    steps: np.ndarray
    tokens: np.ndarray
    time: np.ndarray
    val_loss: np.ndarray

    @property
    def best(self) -> float:
        finite = self.val_loss[np.isfinite(self.val_loss)]
        return float(finite.min()) if finite.size else math.nan

    @property
    def final(self) -> float:
        return float(self.val_loss[-1]) if self.val_loss.size else math.nan


def load_curve(run: str | os.PathLike[str]) -> Curve:
    """Read a run directory (or its ``log.jsonl``)."""
    if Path(run).is_file() and Path(run).name != LOG_NAME:  # e.g. a glob that caught compare.json
        raise ValueError(f"{run}: not a run (a directory holding {LOG_NAME}, or that file)")
    run_dir = Path(run).parent if Path(run).is_file() else Path(run)
    by_step: dict[int, dict[str, Any]] = {}
    log, records = read_records(run)
    for lineno, rec in records:
        if rec.get("kind") == "val":
            if "step" not in rec or not _is_loss(rec.get("val_loss")):
                raise ValueError(
                    f"{log}:{lineno}: a val record needs a step and a val_loss (a number, or 'nan'/'inf')"
                )
            by_step[rec["step"]] = rec  # a resumed run may repeat a step: keep the last
    if not by_step:
        raise ValueError(f"{run}: no validation records in its log")
    recs = [by_step[s] for s in sorted(by_step)]
    label, optimizer = run_dir.name, ""
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        label, optimizer = _read_run_config(cfg_path, label)
    return Curve(
        label=label,
        optimizer=optimizer,
        path=str(run_dir),
        steps=np.array([r["step"] for r in recs], dtype=float),
        tokens=np.array([r.get("tokens", math.nan) for r in recs], dtype=float),
        time=np.array([r.get("train_time", math.nan) for r in recs], dtype=float),
        val_loss=np.array([float(r["val_loss"]) for r in recs], dtype=float),
    )


def _is_loss(value: Any) -> bool:
    """A logged loss: a number, or a non-finite one as JSON cannot hold it ('nan', 'inf')."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        float(value)
    except (ValueError, OverflowError):
        return False
    return True


def _read_run_config(path: Path, label: str) -> tuple[str, str]:
    """(label, optimizer) from a run's ``config.json`` (``label``: the default)."""
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is corrupt ({exc})") from None
    config = info.get("config", {}) if isinstance(info, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is corrupt (expected a JSON object whose 'config' is an object)")
    label, optimizer = info.get("label") or label, config.get("optimizer", "")
    if not isinstance(label, str) or not isinstance(optimizer, str):
        raise ValueError(f"{path} is corrupt (label and config.optimizer must be strings)")
    return label, optimizer


def crossing(curve: Curve, target: float) -> dict[str, float] | None:
    """Step, tokens and time at which the curve first reaches ``target`` (interpolated), or None."""
    hits = np.flatnonzero(curve.val_loss <= target)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return {"step": curve.steps[0], "tokens": curve.tokens[0], "time": curve.time[0]}
    l0, l1 = curve.val_loss[i - 1], curve.val_loss[i]
    w = 1.0 if not math.isfinite(l0) or l0 == l1 else (l0 - target) / (l0 - l1)
    return {
        k: float(a[i - 1] + w * (a[i] - a[i - 1]))
        for k, a in (("step", curve.steps), ("tokens", curve.tokens), ("time", curve.time))
    }


def compare(
    runs: list[str],
    *,
    reference: str | None = None,
    target: float | None = None,
    out_dir: str | os.PathLike[str] = ".",
    title: str | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Print the steps-to-target table, write ``compare.json`` (and ``compare.png/pdf``)."""
    curves = [load_curve(r) for r in runs]
    ref = load_curve(reference) if reference is not None else curves[0]
    if target is not None and not math.isfinite(target):
        raise ValueError(f"Invalid target: {target} (allowed: a finite val loss)")
    if target is None:
        target = ref.best
    if not math.isfinite(target):
        raise ValueError(f"reference run {ref.label} has no finite val loss; pass --target")
    ref_hit = crossing(ref, target)
    rows = []
    for c in curves:
        hit = crossing(c, target)
        ratio = hit["step"] / ref_hit["step"] if hit and ref_hit and ref_hit["step"] > 0 else None
        rows.append(
            {
                "label": c.label,
                "optimizer": c.optimizer,
                "path": c.path,
                "final_val_loss": _num(c.final),
                "best_val_loss": _num(c.best),
                "steps": int(c.steps[-1]),
                "steps_to_target": hit["step"] if hit else None,
                "tokens_to_target": _num(hit["tokens"]) if hit else None,
                "time_to_target": _num(hit["time"]) if hit else None,
                "step_ratio": ratio,
                "speedup": 1.0 / ratio if ratio else None,
            }
        )
    result = {"reference": ref.label, "target": target, "runs": rows}
    out = Path(out_dir)
    write_json_atomic(out / "compare.json", result, indent=2)
    print(format_table(result))
    if plot:
        try:
            result["figure"] = [str(p) for p in plot_curves(curves, target, out / "compare", title=title)]
        except ImportError as exc:  # matplotlib is optional
            print(f"no figure ({exc}); compare.json has the numbers")
    return result


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def format_table(result: dict[str, Any]) -> str:
    """The compare table as fixed-width text."""
    head = f"target val loss {result['target']:.4f} (best of {result['reference']})"
    cols = ("run", "final", "best", "steps", "to target", "ratio", "speedup")
    rows = [cols]
    for r in result["runs"]:
        rows.append(
            (
                r["label"],
                _fmt(r["final_val_loss"], ".4f"),
                _fmt(r["best_val_loss"], ".4f"),
                str(r["steps"]),
                _fmt(r["steps_to_target"], ".0f"),
                _fmt(r["step_ratio"], ".3f"),
                _fmt(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = [head] + [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    return "\n".join(lines)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def plot_curves(curves: list[Curve], target: float, path: Path, *, title: str | None = None) -> list[Path]:
    """Val loss vs steps, tokens and training time; one colour per optimizer (project palette)."""
    from .. import plots

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    styles = ("-", "--", ":", "-.")
    seen: dict[str, int] = {}
    finite = np.concatenate([c.val_loss[np.isfinite(c.val_loss)] for c in curves] + [np.array([target])])
    low = float(finite.min()) - 0.05
    high = min(float(finite.max()), target + 1.5) + 0.05
    for c in curves:
        key = c.optimizer or c.label
        style = styles[seen.get(key, 0) % len(styles)]
        seen[key] = seen.get(key, 0) + 1
        for ax, x in zip(axes, (c.steps, c.tokens / 1e6, c.time / 60)):
            ax.plot(x, c.val_loss, style, color=plots.color(key), label=c.label, lw=1.6)
    for ax, xlabel in zip(axes, ("optimizer steps", "tokens (millions)", "training time (minutes)")):
        ax.axhline(target, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss")
    axes[0].set_ylim(low, high)
    axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    saved = plots.save(fig, path)
    plt.close(fig)
    return saved
