"""Optimizer state sharded over data-parallel ranks (ZeRO stage 1), with PyTorch's own
:class:`torch.distributed.optim.ZeroRedundancyOptimizer`.

``zero_redundancy(make_optimizer("focus", model, ...))`` keeps the optimizer's class, param groups
and hyperparameters. Each rank then holds the state of about ``1/world_size`` of the parameters
and updates only those, and torch broadcasts the updated parameters to the other ranks. Under DDP
every rank has the same averaged gradients, so training equals the unsharded optimizer's. For
FOCUS that is two state tensors per parameter divided over the ranks. Muon's and ROOT's
Newton-Schulz work is divided the same way, because each rank orthogonalises only its own
matrices.

* ``state_dict()`` needs ``consolidate_state_dict(to=rank)`` on every rank first. The result has
  the layout of the unsharded optimizer's: ``load_state_dict`` of the ZeRO optimizer takes it back
  (each rank keeps its part), and so does the unsharded optimizer's.
* The training-loop hooks of :mod:`~focus_optim.optim.protocol` (Sophia-G's Hessian refresh,
  step keyword arguments) reach the wrapped optimizer.
* 1-bit Adam (which communicates by itself) and ``DTensor`` parameters (FSDP2 shards the state
  already) are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _dtensor


def zero_redundancy(optimizer: torch.optim.Optimizer, **zero_kwargs: Any) -> Any:
    """``optimizer`` rebuilt as a :class:`~torch.distributed.optim.ZeroRedundancyOptimizer` over
    the default process group (or ``process_group=``), with the same class, param groups and
    hyperparameters. ``optimizer`` must not have stepped yet. ``zero_kwargs`` go to torch."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    name = type(optimizer).__name__
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "zero_redundancy shards the optimizer state over torch.distributed's process group, "
            "which is not initialized; call torch.distributed.init_process_group first (torchrun sets it up)"
        )
    if hasattr(optimizer, "needs_grad_sync"):
        raise ValueError(f"{name} exchanges its own compressed updates; it cannot be sharded with ZeRO")
    if any(optimizer.state.values()):
        raise ValueError(f"{name} has state already: wrap it before its first step")
    groups = [dict(g) for g in optimizer.param_groups]
    if _dtensor.any_dtensor([p for g in groups for p in g["params"]]):
        raise ValueError("DTensor (FSDP2) parameters: FSDP shards the optimizer state already")
    cls = type(optimizer)
    return ZeroRedundancyOptimizer(groups, optimizer_class=cls, **optimizer.defaults, **zero_kwargs)


__all__ = ["zero_redundancy"]
