"""Whole-matrix work (Newton-Schulz, quantiles) done once per matrix by the ranks that share it.

Muon's and ROOT's matrix updates need each whole matrix. When several ranks hold the same
matrices (DDP replicas, or the shards of one FSDP2 mesh), every rank computing every matrix
wastes ``world_size - 1`` of the work. As in the official distributed ``Muon``, each matrix gets
one *owner* rank: the owner computes the function, then broadcasts the result, and every rank
continues with the same numbers as one process would compute.

* Owners are balanced by the Newton-Schulz cost (``rows * cols * min(rows, cols)`` per member):
  largest first, each to the least-loaded rank. The assignment depends only on the shapes, so
  every rank derives the same one without communication.
* Matrices go in buckets of at most :data:`BUCKET_BYTES` (gathered, computed and broadcast
  before the next), so a sharded model is never whole in memory at once.
* Unlike the official class, each rank keeps its own momentum (replicated under DDP, sharded
  under FSDP): state dicts, checkpoints and resume work as on one process.

``distributed`` (the optimizers' argument of that name):

* ``None`` (default): share the work of ``DTensor`` matrices over their 1-D device mesh; plain
  tensors are computed locally (sweeps under ``torchrun`` train different models per rank).
* ``True``: also plain tensors, over the default process group: for DDP, whose ranks hold the
  same parameters and, after its all-reduce, the same gradients.
* ``False``: every rank computes every matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _dtensor


def balanced_owners(costs: list[float], world_size: int) -> list[int]:
    """An owner rank per item: by decreasing cost, each to the least-loaded rank (ties: lowest)."""
    loads = [0.0] * world_size
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += costs[i]
    return owners


def newton_schulz_cost(t: Tensor) -> float:
    """Relative cost of orthogonalising ``t`` (a batch of matrices in its last two dims)."""
    return float(t.numel()) * min(t.shape[-2], t.shape[-1])


def check_distributed(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (allowed: None, True or False)")


def _process_group(tensors: list[Tensor], distributed: bool | None) -> Any:
    """The group whose ranks share these tensors' whole-matrix work, or None (compute locally)."""
    if distributed is False or not tensors:
        return None
    if _dtensor.any_dtensor(tensors):
        meshes = [t.device_mesh for t in tensors if _dtensor.is_dtensor(t)]
        mesh = meshes[0]
        same = len(meshes) == len(tensors) and all(m == mesh for m in meshes)
        return mesh.get_group() if same and mesh.ndim == 1 else None
    if distributed is None:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "distributed=True shares the matrix work over torch.distributed's default process group, "
            "which is not initialized; call torch.distributed.init_process_group first (torchrun sets it up)"
        )
    return dist.group.WORLD


#: Whole matrices held at once while sharing work: a bucket of consecutive matrices up to this
#: many bytes (at least one matrix) is gathered, computed and broadcast before the next.
BUCKET_BYTES = 256 << 20


def map_whole(
    fn: Callable[[Tensor], Tensor],
    tensors: list[Tensor],
    *,
    distributed: bool | None,
    cost: Callable[[Tensor], float] = newton_schulz_cost,
    out_dtype: torch.dtype | None = None,
    bucket_bytes: int | None = None,
) -> list[Tensor]:
    """``fn`` of each whole tensor, laid out like the tensor (its shard for a ``DTensor``).

    ``fn`` maps a whole tensor to one of the same shape and dtype ``out_dtype`` (default: the
    input's). With a process group (see the module docstring) each result is computed by its owner
    rank only and broadcast; the results are the same as computing them everywhere. At most one
    bucket of whole matrices (``bucket_bytes``, default :data:`BUCKET_BYTES`; one matrix without a
    group) exists at a time.
    """
    group = _process_group(tensors, distributed)
    owners = _owners_of(tensors, group, cost)
    out: list[Tensor] = []
    limit = (BUCKET_BYTES if bucket_bytes is None else bucket_bytes) if owners else 0
    for bucket in buckets(tensors, limit):
        wholes = [_dtensor.full(tensors[i]) for i in bucket]
        if owners:
            outs = _owned(fn, wholes, [owners[i] for i in bucket], group, out_dtype)
        else:
            outs = [fn(w) for w in wholes]
        out += [_dtensor.like(o, tensors[i]) for o, i in zip(outs, bucket)]  # a DTensor keeps a copy
    return out


def _owners_of(tensors: list[Tensor], group: Any, cost: Callable[[Tensor], float]) -> list[int] | None:
    """Each tensor's owner rank in ``group`` (balanced over the whole list), or None: no sharing."""
    if group is None:
        return None
    import torch.distributed as dist

    world = dist.get_world_size(group)
    return balanced_owners([cost(t) for t in tensors], world) if world > 1 else None


def buckets(tensors: list[Tensor], limit: int) -> list[list[int]]:
    """Indices of ``tensors`` in consecutive runs whose whole sizes add up to at most ``limit``
    bytes (each run holds at least one)."""
    runs: list[list[int]] = []
    size = 0
    for i, t in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        if not runs or size + nbytes > limit:
            runs.append([])
            size = 0
        runs[-1].append(i)
        size += nbytes
    return runs


def _owned(
    fn: Callable[[Tensor], Tensor],
    wholes: list[Tensor],
    owners: list[int],
    group: Any,
    out_dtype: torch.dtype | None,
) -> list[Tensor]:
    """``fn`` of each whole tensor, computed on its owner rank and broadcast to the others."""
    import torch.distributed as dist

    rank = dist.get_rank(group)
    outs: list[Tensor] = []
    for w, owner in zip(wholes, owners):
        if owner == rank:
            out = fn(w).contiguous()
            if out.shape != w.shape or out.dtype != (out_dtype or w.dtype):
                raise RuntimeError(
                    f"map_whole: fn gave {tuple(out.shape)} {out.dtype}, the other ranks expect "
                    f"{tuple(w.shape)} {out_dtype or w.dtype}"
                )
        else:
            out = torch.empty(w.shape, dtype=out_dtype or w.dtype, device=w.device)
        outs.append(out)
    works = [dist.broadcast(o, group=group, group_src=owner, async_op=True) for o, owner in zip(outs, owners)]
    for work in works:
        work.wait()
    return outs


__all__ = [
    "BUCKET_BYTES",
    "balanced_owners",
    "buckets",
    "check_distributed",
    "map_whole",
    "newton_schulz_cost",
]
