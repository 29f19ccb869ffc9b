"""Fused optimizer paths.

* CUDA: hand-written multi-tensor Triton kernels (``triton_sign``), one launch per group.
* CPU, or CUDA without Triton: the per-tensor reference implementation compiled by
  ``torch.compile`` (Inductor emits one vectorised loop per tensor), with hyperparameters passed
  as 0-d tensors so that schedules do not trigger recompilation.

Setting ``TRITON_INTERPRET=1`` runs the Triton kernels on CPU tensors through Triton's
interpreter, which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value

from .._common import as_real, is_member


@dataclasses.dataclass
class Launch:
    """A fused optimizer kernel's launch, recorded instead of run (:func:`recorded_launches`).

    ``kernel``: ``"sign_family"`` (FOCUS, Signum) or ``"adamw"``; ``tensors``: its tensor lists by
    role (``params``, ``exp_avgs``, ``param_avgs`` / ``exp_avg_sqs``, ``state_steps``); ``args``:
    the host-computed values (bias corrections, per-member ``lr_t``/``wd_t`` tables, ...);
    ``flags``: its compile-time switches."""

    kernel: str
    tensors: dict[str, Any]
    args: dict[str, Any]
    flags: dict[str, Any]


_RECORDING: list[list[Launch]] = []


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[Launch]]:
    """Inside the block, the Triton paths of the fused optimizer steps do all their host work (step
    counts, bias corrections, hyperparameter tables) but append their launch to the yielded list
    instead of running it: for a caller that applies the same element-wise update (the kernels'
    shared ``sign_family_update`` / ``adamw_update``) inside a kernel of its own, as the toy lab's
    fused step does, so that the update is still the optimizer's."""
    launches: list[Launch] = []
    _RECORDING.append(launches)
    try:
        yield launches
    finally:
        _RECORDING.pop()


def record_launch(kernel: str, tensors: dict[str, Any], args: dict[str, Any], flags: dict[str, Any]) -> bool:
    """Record this launch if inside :func:`recorded_launches` (then the caller must not launch)."""
    if not _RECORDING:
        return False
    _RECORDING[-1].append(Launch(kernel, tensors, args, flags))
    return True


def use_triton(device: torch.device) -> bool:
    """Whether the Triton kernels run here: on CUDA, or anywhere under ``TRITON_INTERPRET=1``."""
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


_ONE = torch.tensor(1.0)
STATIC_SHAPES = 6  # distinct tensor sizes per update function compiled with static shapes
_static_sizes: dict[Callable[..., None], set[int]] = {}


@functools.cache
def _compiled(fn: Callable[..., None], numel: int | None) -> Callable[..., None]:
    """``fn`` compiled for one size (``numel``), or shape-generic (``None``), as a copy of ``fn``
    with its own code object. Dynamo's recompile limit (8) counts the variants of one code object,
    so on a shared one the sizes times the variants per size (dtype, ``maximize``, hyperparameter
    values) would soon pass it and the rest would silently run eagerly, slower and rounded
    differently; each copy has the whole limit for its own variants.

    Python floats (betas, gamma) stay constants of the compiled code. Dynamo would otherwise trace
    them as float64 inputs once one has changed between calls (a state it shares between copies),
    and the shape-generic code then lost FOCUS's exact first-step tie between the parameter
    average and ``theta * bc2`` (``test_paths.py``)."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return torch._dynamo.config.patch(specialize_float=True)(torch.compile(copy, dynamic=numel is None))


def _compiled_for(fn: Callable[..., None], numel: int) -> Callable[..., None]:
    """Static-shape code (the fastest) for the first few sizes seen, shape-generic code after."""
    sizes = _static_sizes.setdefault(fn, set())
    if numel in sizes or len(sizes) < STATIC_SHAPES:
        sizes.add(numel)
        return _compiled(fn, numel)
    return _compiled(fn, None)


class _SignFamilyHparams(TypedDict):
    """The keyword arguments :func:`fused_sign_family_` passes on to each of its paths."""

    lr: float | Tensor
    beta1: float
    beta2: float
    gamma: float
    weight_decay: float | Tensor
    decay_mode: str
    maximize: bool


def fused_sign_family_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    param_avgs: list[Tensor] | None,
    state_steps: list[Tensor],
    *,
    update_fn: Callable[..., None],
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    gamma: float,
    weight_decay: float | Tensor,
    decay_mode: str,
    maximize: bool,
) -> None:
    """Fused update for FOCUS (``param_avgs`` given) or Signum (``param_avgs=None``).

    ``update_fn`` is the optimizer's element-wise update of one tensor (e.g. ``focus_update_``);
    it is what gets compiled where Triton is not used, so every path computes the same function.
    ``lr``/``weight_decay`` are numbers, or 1-D tensors with one value per ensemble member (dim 0
    of every parameter).
    """
    focus = param_avgs is not None
    # One dispatch for all the CPU step counters; a tensor `1` avoids re-wrapping the scalar per tensor.
    torch._foreach_add_(state_steps, _ONE, alpha=1.0)
    steps = torch.stack(state_steps).tolist() if len(state_steps) > 1 else [_get_value(state_steps[0])]
    rows = [params, grads, exp_avgs] + ([param_avgs] if param_avgs is not None else [])
    triton_ok = use_triton(params[0].device)
    kw: _SignFamilyHparams = dict(lr=lr, beta1=beta1, beta2=beta2, gamma=gamma, weight_decay=weight_decay,
                                  decay_mode=decay_mode, maximize=maximize)  # fmt: skip
    if triton_ok and _uniform(rows, steps):  # the common case: one launch, no per-tensor Python work
        from .triton_sign import sign_family_

        sign_family_(params, grads, exp_avgs, param_avgs, bc2=1.0 - beta2 ** steps[0] if focus else 1.0, **kw)
        return
    if is_member(lr) or is_member(weight_decay):  # ensembles off the kernel: tensor by tensor
        _per_tensor(list(range(len(params))), params, grads, exp_avgs, param_avgs, steps,
                    update_fn=update_fn, compiled=False, **kw)  # fmt: skip
        return
    buckets: dict[tuple[Any, ...] | None, list[int]] = defaultdict(list)
    for i in range(len(params)):
        tensors = [row[i] for row in rows]
        contiguous = all(t.is_contiguous() for t in tensors)
        key = (*(t.dtype for t in tensors), tensors[0].device, steps[i]) if contiguous else None
        buckets[key].append(i)
    for key, idx in buckets.items():
        if key is None or not triton_ok:
            _per_tensor(idx, params, grads, exp_avgs, param_avgs, steps, update_fn=update_fn,
                        compiled=key is not None, **kw)  # fmt: skip
            continue
        from .triton_sign import sign_family_

        p, g, m = ([as_real(xs[i])[0] for i in idx] for xs in (params, grads, exp_avgs))
        a = [as_real(param_avgs[i])[0] for i in idx] if param_avgs is not None else None
        sign_family_(p, g, m, a, bc2=1.0 - beta2 ** key[-1] if focus else 1.0, **kw)


def is_dense(t: Tensor) -> bool:
    """Whether ``t`` covers exactly ``numel`` consecutive elements of storage from ``data_ptr()``
    (contiguous, or a permutation of a contiguous layout such as a transpose)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _uniform(rows: list[list[Tensor]], steps: list[float]) -> bool:
    """Same step count and :func:`triton_walkable`."""
    return steps.count(steps[0]) == len(steps) and triton_walkable(rows)


def triton_walkable(rows: list[list[Tensor]]) -> bool:
    """Whether one multi-tensor launch can walk these rows (param, grad, states): real dtypes
    uniform per row, and each tensor dense with the same strides in every row (contiguous, or a
    permuted layout such as a transpose, which the kernel walks in storage order)."""
    for row in rows:
        if row[0].is_complex() or len({t.dtype for t in row}) != 1:
            return False
    for tensors in zip(*rows):
        if not all(t.is_contiguous() for t in tensors) and not (
            is_dense(tensors[0]) and len({t.stride() for t in tensors}) == 1
        ):
            return False
    return True


def _per_tensor(idx, params, grads, exp_avgs, param_avgs, steps, *, update_fn, compiled, lr, beta1,
                beta2, gamma, weight_decay, decay_mode, maximize) -> None:  # fmt: skip
    """``update_fn`` tensor by tensor: compiled on flat views (scalars as 0-d tensors, so a schedule
    does not recompile), or eagerly for non-contiguous tensors."""
    dt = torch.float64 if params[idx[0]].dtype == torch.float64 else torch.float32
    as_t = (lambda x: torch.tensor(x, dtype=dt)) if compiled else (lambda x: x)
    kw: dict[str, Any] = dict(lr=as_t(lr), weight_decay=as_t(weight_decay), beta1=beta1, maximize=maximize)
    if param_avgs is not None:
        kw.update(beta2=beta2, gamma=gamma, decay_mode=decay_mode)
    else:  # Signum: decoupled decay ("algorithm1" on the kernel) or coupled
        kw.update(decoupled_weight_decay=decay_mode != "coupled")
    bc2: dict[float, Any] = {}  # one scalar per distinct step count, not one per tensor
    for i in idx:
        tensors = [params[i], grads[i], exp_avgs[i]] + ([param_avgs[i]] if param_avgs is not None else [])
        if param_avgs is not None:
            if steps[i] not in bc2:
                bc2[steps[i]] = as_t(1.0 - beta2 ** steps[i])
            kw["bc2"] = bc2[steps[i]]
        if compiled:
            _compiled_for(update_fn, tensors[0].numel())(*[t.view(-1) for t in tensors], **kw)
        else:
            update_fn(*tensors, **kw)
