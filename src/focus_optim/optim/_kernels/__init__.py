"""Fused optimizer paths.

* CUDA: hand-written multi-tensor Triton kernels (``triton_sign``), one launch per group.
* CPU, or CUDA without Triton: the per-tensor reference implementation compiled by
  ``torch.compile`` (Inductor emits one vectorised loop per tensor), with hyperparameters passed
  as 0-d tensors so that schedules do not trigger recompilation.

Setting ``TRITON_INTERPRET=1`` runs the Triton kernels on CPU tensors through Triton's
interpreter, which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value

from .._common import as_real


def _use_triton(device: torch.device) -> bool:
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


@functools.cache
def _compiled(fn: Callable[..., None]) -> Callable[..., None]:
    return torch.compile(fn, dynamic=True)


def fused_sign_family_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    param_avgs: list[Tensor] | None,
    state_steps: list[Tensor],
    *,
    single_fn: Callable[..., None],
    lr: float,
    beta1: float,
    beta2: float,
    gamma: float,
    weight_decay: float,
    decay_mode: str,
    maximize: bool,
) -> None:
    """Fused update for FOCUS (``param_avgs`` given) or Signum (``param_avgs=None``).

    ``single_fn`` is the optimizer's per-tensor reference implementation; it is what gets
    compiled where Triton is not used, so every path computes the same function.
    """
    triton_ok = _use_triton(params[0].device)
    if not triton_ok:
        _compiled_per_tensor(params, grads, exp_avgs, param_avgs, state_steps, single_fn=single_fn,
                             lr=lr, beta1=beta1, beta2=beta2, gamma=gamma, weight_decay=weight_decay,
                             decay_mode=decay_mode, maximize=maximize)
        return
    from .triton_sign import sign_family_

    buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, (p, g, m, s) in enumerate(zip(params, grads, exp_avgs, state_steps)):
        s += 1
        a = param_avgs[i] if param_avgs is not None else m
        contiguous = all(t.is_contiguous() for t in (p, g, m, a))
        key = (p.device, p.dtype, g.dtype, m.dtype, _get_value(s)) if contiguous else None
        buckets[key].append(i)
    for key, idx in buckets.items():
        if key is None:  # rare: non-contiguous tensors take the reference path (step already counted)
            for i in idx:
                state_steps[i] -= 1
            single_fn(*_select(idx, params, grads, exp_avgs, param_avgs, state_steps),
                      **_single_kwargs(param_avgs, lr, beta1, beta2, gamma, weight_decay, decay_mode, maximize))
            continue
        step = key[-1]
        p, g, m = ([as_real(xs[i])[0].view(-1) for i in idx] for xs in (params, grads, exp_avgs))
        a = [as_real(param_avgs[i])[0].view(-1) for i in idx] if param_avgs is not None else None
        sign_family_(p, g, m, a, lr=lr, beta1=beta1, beta2=beta2, gamma=gamma, weight_decay=weight_decay,
                     bc2=1.0 - beta2**step if param_avgs is not None else 1.0,
                     decay_mode=decay_mode, maximize=maximize)


def _select(idx: list[int], *lists: list[Tensor] | None) -> list[list[Tensor]]:
    return [[xs[i] for i in idx] for xs in lists if xs is not None]


def _single_kwargs(param_avgs, lr, beta1, beta2, gamma, weight_decay, decay_mode, maximize) -> dict[str, Any]:
    kw: dict[str, Any] = dict(lr=lr, beta1=beta1, weight_decay=weight_decay, maximize=maximize)
    if param_avgs is not None:
        kw.update(beta2=beta2, gamma=gamma, decay_mode=decay_mode)
    return kw


def _compiled_per_tensor(params, grads, exp_avgs, param_avgs, state_steps, *, single_fn, lr, beta1, beta2,
                         gamma, weight_decay, decay_mode, maximize) -> None:
    fn = _compiled(single_fn)
    kw = _single_kwargs(param_avgs, torch.tensor(lr, dtype=torch.float64), beta1, beta2, gamma,
                        torch.tensor(weight_decay, dtype=torch.float64), decay_mode, maximize)
    for i in range(len(params)):
        lists = _select([i], params, grads, exp_avgs, param_avgs, state_steps)
        flat = [[t.view(-1)] if t.is_contiguous() else [t] for (t,) in lists[:-1]]
        fn(*flat, lists[-1], **kw)
