"""Argument validation shared by every optimizer.

Each check raises ``ValueError`` naming the argument, the value it got and the allowed range,
so a typo in a sweep config fails at construction time instead of after an hour of NaNs.
A hyperparameter may be a float or a tensor (0-d, or 1-D over an ensemble dimension); tensors
are checked element-wise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

Number = float | int | Tensor


def _values(value: Number) -> list[float]:
    if isinstance(value, Tensor):
        if value.is_complex() or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"hyperparameter tensors must be real numbers, got dtype {value.dtype}")
        return [float(v) for v in value.detach().reshape(-1).cpu().tolist()]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number or a tensor, got {type(value).__name__}")
    return [float(value)]


def _fail(name: str, value: Number, allowed: str) -> None:
    shown = value if not isinstance(value, Tensor) else f"tensor with values {_values(value)[:4]}..."
    raise ValueError(f"Invalid {name}: {shown} (allowed: {allowed})")


def check_nonneg(name: str, value: Number) -> None:
    """``0 <= value < inf``."""
    if not all(math.isfinite(v) and v >= 0.0 for v in _values(value)):
        _fail(name, value, "finite and >= 0")


def check_positive(name: str, value: Number) -> None:
    """``0 < value < inf``."""
    if not all(math.isfinite(v) and v > 0.0 for v in _values(value)):
        _fail(name, value, "finite and > 0")


def check_finite(name: str, value: Number) -> None:
    """Any finite real number (negative allowed)."""
    if not all(math.isfinite(v) for v in _values(value)):
        _fail(name, value, "any finite number")


def check_beta(name: str, value: Number) -> None:
    """``0 <= value < 1``."""
    if not all(0.0 <= v < 1.0 for v in _values(value)):
        _fail(name, value, "0 <= beta < 1")


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
