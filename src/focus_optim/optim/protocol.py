"""The training-loop protocol for optimizers that need more than ``backward(); step()``.

A lab's loop (the LM trainer, the MNIST ensembles) calls these helpers every iteration; for a
plain optimizer they are no-ops, so the loop is written once for all of them::

    opt.step(**protocol.step_kwargs(opt, tokens=tokens_in_this_step))
    if protocol.hessian_due(opt, iteration):            # Sophia-G: every k steps
        loss_hat = sampled_label_loss(model(x_fresh))   # labels drawn from the model's softmax
        loss_hat.backward(); clip_grad_norm_(...)
        protocol.update_hessian(opt)
        opt.zero_grad(set_to_none=True)
    with (model.no_sync() if not protocol.needs_grad_sync(opt) else nullcontext()):
        ...                                             # 1-bit Adam after its freeze step

Optimizers opt in by defining any of these methods:

* ``step_kwargs(tokens: int) -> dict``: extra keyword arguments for ``step`` (Sophia: ``bs``).
* ``hessian_due(iteration: int) -> bool`` and ``update_hessian()``.
* ``needs_grad_sync() -> bool``: False when the optimizer communicates by itself and DDP's
  gradient all-reduce must be skipped.
"""

from __future__ import annotations

from typing import Any

import torch


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that does the work: this rank's one inside a ``ZeroRedundancyOptimizer``
    (:func:`~focus_optim.optim.zero.zero_redundancy`)."""
    inner = getattr(optimizer, "optim", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def step_kwargs(optimizer: torch.optim.Optimizer, *, tokens: int) -> dict[str, Any]:
    fn = getattr(_inner(optimizer), "step_kwargs", None)
    return fn(tokens=tokens) if fn is not None else {}


def hessian_due(optimizer: torch.optim.Optimizer, iteration: int) -> bool:
    fn = getattr(_inner(optimizer), "hessian_due", None)
    return bool(fn(iteration)) if fn is not None else False


def update_hessian(optimizer: torch.optim.Optimizer) -> None:
    _inner(optimizer).update_hessian()  # type: ignore[attr-defined]


def needs_grad_sync(optimizer: torch.optim.Optimizer) -> bool:
    fn = getattr(_inner(optimizer), "needs_grad_sync", None)
    return bool(fn()) if fn is not None else True
