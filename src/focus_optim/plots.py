"""Shared figure style: the paper's optimizer colours and an atomic PNG+PDF writer.

Each lab keeps its figures next to it (``landscape/plots.py``, ``mnist/plots.py``, ``lm/compare.py``)
and takes colours and saving from here, so every figure of the project looks alike.
matplotlib is imported lazily (``import focus_optim`` must stay light).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from .atomic import write_atomic

# The paper's colours (Figure 2): Adam orange, Signum yellow, FOCUS blue; then the other baselines.
COLORS: dict[str, str] = {
    "adamw": "#f28e2b",
    "adam": "#f28e2b",
    "signum": "#edc948",
    "focus": "#4e79a7",
    "lion": "#59a14f",
    "muon": "#b07aa1",
    "sophia": "#e15759",
    "conda": "#76b7b2",
    "root": "#9c755f",
    "exadam": "#ff9da7",
    "onebit_adam": "#bab0ac",
}


def color(name: str) -> str:
    """The colour of an optimizer (by registry name or a label starting with it)."""
    key = name.lower().split()[0].split("(")[0].replace("-", "_")
    for k, v in COLORS.items():
        if key.startswith(k):
            return v
    return "#7f7f7f"


def pyplot() -> Any:
    """matplotlib.pyplot with a non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | os.PathLike[str], formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``path`` with each extension, each written to a temp file then renamed."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in formats:
        target = base.with_suffix(f".{ext}")

        def write(f: IO[bytes], ext: str = ext) -> None:
            fig.savefig(f, format=ext, dpi=150, bbox_inches="tight")

        write_atomic(target, write)
        out.append(target)
    return out
