"""Checkpoints: atomic writes, ``torch.load(weights_only=True)``-loadable contents, RNG states.

A checkpoint is a dict of tensors and JSON-able values only (no pickled objects):
``model``, ``optimizer``, ``scheduler``, ``scaler`` state dicts, ``rng`` (one entry per rank:
python, numpy, torch CPU and CUDA generator states), ``loader`` (data position), ``step``,
``tokens``, ``train_time`` and the ``config`` dict.

:func:`load` and :func:`require` raise :class:`CheckpointError` (a ValueError) naming the file
when it cannot be read as such a dict (truncated, emptied, overwritten, another program's file).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from ..atomic import write_atomic

#: A run's checkpoint file in its output directory.
CKPT_NAME = "ckpt.pt"


def save_atomic(obj: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``."""
    write_atomic(path, lambda f: torch.save(obj, f))


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt or not one this trainer wrote; the message names it."""


NOT_OURS = "not a checkpoint of focus-optim lm train"
KEEP = "it is left as it is: restore it, or train into a new --out-dir"


def load(path: str | os.PathLike[str], fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``; ``fields``: see :func:`require`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # missing, unreadable: the OS error names the file
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on garbage
        reason = str(exc).split(". ")[0].strip() or "empty or truncated"
        raise CheckpointError(
            f"{path} is corrupt or {NOT_OURS} ({type(exc).__name__}: {reason[:200]}); {KEEP}"
        ) from None
    return require(state, path, fields or {})


def require(state: Any, path: str | os.PathLike[str], fields: dict[str, Any]) -> dict[str, Any]:
    """``state`` if it is a dict holding every key of ``fields`` (dotted for nested dicts:
    ``"loader.chunks"``) with a value of that type; else a :class:`CheckpointError` naming ``path``."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is {NOT_OURS} (it holds a {type(state).__name__}, not a dict); {KEEP}")
    for key, want in fields.items():
        value: Any = state
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                held = ", ".join(map(str, list(state)[:8])) + (" ..." if len(state) > 8 else "")
                raise CheckpointError(
                    f"{path} is {NOT_OURS} (no {key!r}; it holds {held or 'nothing'}); {KEEP}"
                )
            value = value[part]
        if not isinstance(value, want) or (isinstance(value, bool) and want is int):
            raise CheckpointError(f"{path} is {NOT_OURS} ({key!r} is a {type(value).__name__}); {KEEP}")
    return state


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
