"""Argument validation shared by every optimizer.

Each check raises ``ValueError`` naming the argument, the value it got and the allowed range,
so a typo in a sweep config fails at construction time instead of after an hour of NaNs.
A hyperparameter may be a float or a tensor (0-d, or 1-D over an ensemble dimension); tensors
are checked element-wise, by tensor operations (one pass, one device sync).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Number = float | int | Tensor
#: Upper bound on inner iteration counts (Muon's ``ns_steps``, ROOT's ``root_steps``; the papers
#: use 5 to 10): a typo such as ``1e30`` should fail at construction, not hang in ``step``.
MAX_ITERATIONS = 1000


def _real(name: str, value: Number, allowed: str) -> float | Tensor:
    """``value`` as a float, or as a real floating-point tensor (integer tensors as float32);
    anything else is an invalid ``name`` (e.g. a word from a command line such as
    ``weight_decay=abc``)."""
    if isinstance(value, Tensor):
        if value.is_complex() or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(
                f"Invalid {name}: a tensor of dtype {value.dtype} (allowed: real numbers, {allowed})"
            )
        return value.detach() if value.is_floating_point() else value.detach().float()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"Invalid {name}: {value!r} (allowed: a number or a real tensor, {allowed})")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        # torch takes a Python int scalar as int64; a larger one would overflow in ``step``
        raise ValueError(f"Invalid {name}: {value} (allowed: {allowed}; an int within int64, or a float)")
    return float(value)


def _check(name: str, value: Number, allowed: str, ok: Callable[[Any], Any]) -> None:
    """``ok``: the allowed set as a predicate written with comparisons and ``_isfinite``, so that
    it applies to a float and, element-wise in one pass, to a tensor (an ensemble's per-member
    values can number millions: the toy lab has one per trajectory)."""
    real = _real(name, value, allowed)
    if isinstance(real, Tensor):
        bad = ~ok(real)
        if bool(bad.any()):
            shown = real[bad].reshape(-1)[:4].cpu().tolist()
            raise ValueError(f"Invalid {name}: tensor with values {shown}... (allowed: {allowed})")
    elif not ok(real):
        raise ValueError(f"Invalid {name}: {value} (allowed: {allowed})")


def _isfinite(x: float | Tensor) -> Any:
    return torch.isfinite(x) if isinstance(x, Tensor) else math.isfinite(x)


def check_nonneg(name: str, value: Number) -> None:
    """``0 <= value < inf``."""
    _check(name, value, "finite and >= 0", lambda v: _isfinite(v) & (v >= 0.0))


def check_positive(name: str, value: Number) -> None:
    """``0 < value < inf``."""
    _check(name, value, "finite and > 0", lambda v: _isfinite(v) & (v > 0.0))


def check_finite(name: str, value: Number) -> None:
    """Any finite real number (negative allowed)."""
    _check(name, value, "any finite number", _isfinite)


def check_beta(name: str, value: Number) -> None:
    """``0 <= value < 1``."""
    _check(name, value, "0 <= beta < 1", lambda v: (v >= 0.0) & (v < 1.0))


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


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """An ``int`` (not a bool) in ``[minimum, maximum]``."""
    too_big = maximum is not None and isinstance(value, int) and value > maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or too_big:
        allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {allowed})")


def check_scalar_tensors(name: str, value: object, per_member: bool) -> None:
    """A tensor hyperparameter (or a tensor inside a tuple such as ``betas``) is 0-d, or 1-D where
    ``per_member`` (one value per ensemble member; the group's parameters check its length)."""
    items = value if isinstance(value, tuple) else (value,)
    for i, v in enumerate(items):
        if not isinstance(v, Tensor) or v.ndim == 0 or (per_member and v.ndim == 1):
            continue
        shown = f"{name}[{i}]" if isinstance(value, tuple) else name
        allowed = "a number, a 0-d tensor" + (
            " or a 1-D tensor with one value per ensemble member along dim 0" if per_member else ""
        )
        raise ValueError(f"Invalid {shown}: a tensor of shape {tuple(v.shape)} (allowed: {allowed})")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: one of {', '.join(map(repr, choices))})")
