"""Checkpoints: atomic writes, ``torch.load(weights_only=True)``-loadable contents, RNG states.

A checkpoint is a dict of tensors and JSON-able values only (no pickled objects):
``model``, ``optimizer``, ``scheduler``, ``scaler`` state dicts, ``rng`` (one entry per rank:
python, numpy, torch CPU and CUDA generator states), ``loader`` (data position), ``step``,
``tokens``, ``train_time`` and the ``config`` dict.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from ..atomic import write_atomic


def save_atomic(obj: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain Python values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": [
            kind,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x
