"""Argument validation shared by every optimizer.

Each check raises ``ValueError`` naming the argument, the value it got and the allowed range,
so a typo in a sweep config fails at construction time instead of after an hour of NaNs.
A hyperparameter may be a float or a tensor (0-d, or 1-D over an ensemble dimension); tensors
are checked element-wise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Number = float | int | Tensor


def _values(name: str, value: Number, allowed: str) -> list[float]:
    """The real numbers in ``value``; anything else is an invalid ``name`` (e.g. a word from a
    command line such as ``weight_decay=abc``)."""
    if isinstance(value, Tensor):
        if value.is_complex() or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(
                f"Invalid {name}: a tensor of dtype {value.dtype} (allowed: real numbers, {allowed})"
            )
        return [float(v) for v in value.detach().reshape(-1).cpu().tolist()]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"Invalid {name}: {value!r} (allowed: a number or a real tensor, {allowed})")
    return [float(value)]


def _check(name: str, value: Number, allowed: str, ok: Callable[[float], bool]) -> None:
    values = _values(name, value, allowed)
    if not all(ok(v) for v in values):
        shown = value if not isinstance(value, Tensor) else f"tensor with values {values[:4]}..."
        raise ValueError(f"Invalid {name}: {shown} (allowed: {allowed})")


def check_nonneg(name: str, value: Number) -> None:
    """``0 <= value < inf``."""
    _check(name, value, "finite and >= 0", lambda v: math.isfinite(v) and v >= 0.0)


def check_positive(name: str, value: Number) -> None:
    """``0 < value < inf``."""
    _check(name, value, "finite and > 0", lambda v: math.isfinite(v) and v > 0.0)


def check_finite(name: str, value: Number) -> None:
    """Any finite real number (negative allowed)."""
    _check(name, value, "any finite number", math.isfinite)


def check_beta(name: str, value: Number) -> None:
    """``0 <= value < 1``."""
    _check(name, value, "0 <= beta < 1", lambda v: 0.0 <= v < 1.0)


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (allowed: True or False)")


def as_tuple(value: object) -> object:
    """A list or tuple as a tuple (how param groups keep ``betas``); anything else unchanged, so
    that its validator names it rather than ``tuple()`` failing with a TypeError."""
    return tuple(value) if isinstance(value, list | tuple) else value


def check_betas(name: str, betas: Sequence[Number], count: int = 2) -> None:
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != count:
        raise ValueError(
            f"Invalid {name}: {betas!r} (allowed: a tuple of {count} numbers, each 0 <= beta < 1)"
        )
    for i, b in enumerate(betas):
        check_beta(f"{name}[{i}]", b)


def check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: an integer >= {minimum})")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: one of {', '.join(map(repr, choices))})")
