"""Whole-matrix work (Newton-Schulz, quantiles, SVDs) done once per matrix by the ranks that share it.

Muon's and ROOT's matrix updates need each whole matrix, and Conda's basis refresh its SVD.
When several ranks hold the same matrices (DDP replicas, or the shards of one FSDP2 mesh), every
rank computing every matrix wastes ``world_size - 1`` of the work. As in the official distributed
``Muon``, each matrix gets one *owner* rank: the owner computes the function and sends the result
back, and every rank continues with the same numbers as one process would compute.

* Owners are balanced by the Newton-Schulz cost (``rows * cols * min(rows, cols)`` per member):
  largest first, each to the least-loaded rank. The assignment depends only on the shapes, so
  every rank derives the same one without communication.
* Replicas (plain tensors) are whole on every rank already: the owner broadcasts its result.
* FSDP2 shards (``DTensor``, rows split over a 1-D mesh as ``torch.chunk`` does): the row
  shards are gathered on the owner only, and the owner scatters the result's rows back, so each
  rank sends and receives about ``2 / world_size`` of a matrix instead of an all-gather and a
  broadcast (``2 - 1 / world_size``), and only the owner holds it whole. A result of another
  shape (``out_shape``: Conda's basis) is broadcast whole from the owner instead. Other layouts
  gather the whole matrix on every rank, then continue as replicas.
* Matrices go in buckets of at most :data:`BUCKET_BYTES` (gathered, computed and sent back
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

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from . import _dtensor

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


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


#: Row shards of FSDP2 matrices go to their owner only, and the result's rows come back by a
#: scatter; ``False``: the all-gather and broadcast of other layouts (same numbers). Read at every
#: call; ``benchmarks/fsdp_step.py`` times both.
GATHER_ON_OWNER = True

#: Whole matrices held at once while sharing work: a bucket of consecutive matrices up to this
#: many bytes (at least one matrix) is gathered, computed and sent back before the next.
BUCKET_BYTES = 256 << 20


def map_whole(
    fn: Callable[[Tensor], Tensor],
    tensors: list[Tensor],
    *,
    distributed: bool | None,
    cost: Callable[[Tensor], float] = newton_schulz_cost,
    out_dtype: torch.dtype | None = None,
    out_shape: Callable[[Tensor], torch.Size] | None = None,
    bucket_bytes: int | None = None,
) -> list[Tensor]:
    """``fn`` of each whole tensor, laid out like the tensor (its shard for a ``DTensor``).

    ``fn`` maps a whole tensor to one of the same shape and dtype ``out_dtype`` (default: the
    input's). With a process group (see the module docstring) each result is computed by its owner
    rank only and sent back; the results are the same as computing them everywhere. At most one
    bucket of whole matrices (``bucket_bytes``, default :data:`BUCKET_BYTES`; one matrix without a
    group) exists at a time.

    ``out_shape``: ``fn``'s results have shape ``out_shape(whole)`` instead, and every rank gets
    them whole, as plain tensors (e.g. Conda's basis of a matrix).
    """
    group = _process_group(tensors, distributed)
    owners = _owners_of(tensors, group, cost)
    out: list[Tensor] = []
    limit = (BUCKET_BYTES if bucket_bytes is None else bucket_bytes) if owners else 0
    for bucket in buckets(tensors, limit):
        if owners and GATHER_ON_OWNER and all(_dtensor.row_sharded(tensors[i]) for i in bucket):
            # row_sharded held, so these are DTensors
            shards, bucket_owners = [cast("DTensor", tensors[i]) for i in bucket], [owners[i] for i in bucket]
            gathered = _gather_rows_on_owners(shards, bucket_owners, group)
            if out_shape is None:  # the result's rows go back to where they belong
                out += _scatter_rows(fn, shards, gathered, bucket_owners, group, out_dtype)
            else:  # every rank gets the result whole
                out += _owned(fn, gathered, bucket_owners, group, out_dtype, out_shape, refs=shards)
            continue
        wholes = [_dtensor.full(tensors[i]) for i in bucket]
        if owners:
            outs = _owned(fn, wholes, [owners[i] for i in bucket], group, out_dtype, out_shape)
        else:
            outs = [fn(w) for w in wholes]
        if out_shape is None:
            outs = [_dtensor.like(o, tensors[i]) for o, i in zip(outs, bucket)]  # a DTensor keeps a copy
        out += outs
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
    wholes: list[Tensor] | list[Tensor | None],
    owners: list[int],
    group: Any,
    out_dtype: torch.dtype | None,
    out_shape: Callable[[Tensor], torch.Size] | None = None,
    refs: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """``fn`` of each whole tensor, computed on its owner rank and broadcast to the others.

    A whole may be None where the rank does not own it; its ``refs`` entry (the ``DTensor``)
    then gives the shape, dtype and device to receive into."""
    import torch.distributed as dist

    rank = dist.get_rank(group)
    outs: list[Tensor] = []
    for i, (w, owner) in enumerate(zip(wholes, owners)):
        ref = w if w is not None else refs[i]  # type: ignore[index]
        shape = ref.shape if out_shape is None else torch.Size(out_shape(ref))
        dtype = out_dtype or ref.dtype
        if owner == rank:
            out = _expected(fn(w).contiguous(), shape, dtype)  # type: ignore[arg-type]
        else:
            out = torch.empty(shape, dtype=dtype, device=_dtensor.local(ref).device)
        outs.append(out)
    works = [dist.broadcast(o, group=group, group_src=owner, async_op=True) for o, owner in zip(outs, owners)]
    for work in works:
        work.wait()
    return outs


def _expected(out: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """``out``, checked to be what the other ranks allocated to receive it."""
    if out.shape != shape or out.dtype != dtype:
        raise RuntimeError(
            f"map_whole: fn gave {tuple(out.shape)} {out.dtype}, "
            f"the other ranks expect {tuple(shape)} {dtype}"
        )
    return out


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` with zero rows appended up to ``rows`` (collectives take equal-sized pieces)."""
    if t.shape[0] == rows:
        return t.contiguous()
    padded = t.new_zeros((rows, *t.shape[1:]))
    padded[: t.shape[0]] = t
    return padded


def _gather_rows_on_owners(shards: list[DTensor], owners: list[int], group: Any) -> list[Tensor | None]:
    """Each row-sharded ``DTensor`` whole on its owner rank only (``None`` on the others)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    received: list[list[Tensor] | None] = []
    works = []
    for t, owner in zip(shards, owners):
        mine = _pad_rows(t.to_local(), _dtensor.row_split(t.shape[0], world)[0])
        pieces = [torch.empty_like(mine) for _ in range(world)] if rank == owner else None
        works.append(dist.gather(mine, pieces, group=group, group_dst=owner, async_op=True))
        received.append(pieces)
    for work in works:
        work.wait()
    wholes: list[Tensor | None] = []
    for t, pieces in zip(shards, received):
        rows_of = _dtensor.row_split(t.shape[0], world)[1]
        wholes.append(None if pieces is None else torch.cat([p[:n] for p, (_, n) in zip(pieces, rows_of)]))
    return wholes


def _scatter_rows(
    fn: Callable[[Tensor], Tensor],
    shards: list[DTensor],
    wholes: list[Tensor | None],
    owners: list[int],
    group: Any,
    out_dtype: torch.dtype | None,
) -> list[Tensor]:
    """``fn`` of each whole (:func:`_gather_rows_on_owners`) computed on its owner, and its rows
    scattered back: ``DTensor`` results laid out as the row-sharded ``shards``."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    splits = [_dtensor.row_split(t.shape[0], world) for t in shards]
    outs: list[Tensor] = []
    works = []
    for t, owner, (chunk, rows_of), whole in zip(shards, owners, splits, wholes):
        dtype = out_dtype or t.dtype
        mine = torch.empty((chunk, *t.shape[1:]), dtype=dtype, device=t.to_local().device)
        sends = None
        if whole is not None:
            result = _expected(fn(whole), whole.shape, dtype)
            sends = [_pad_rows(result[start : start + n], chunk) for start, n in rows_of]
        works.append(dist.scatter(mine, sends, group=group, group_src=owner, async_op=True))
        outs.append(mine)
    for work in works:
        work.wait()
    results: list[Tensor] = []
    for t, mine, (_, rows_of) in zip(shards, outs, splits):
        results.append(
            DTensor.from_local(
                mine[: rows_of[rank][1]],
                t.device_mesh,
                t.placements,
                run_check=False,
                shape=t.shape,
                stride=t.stride(),
            )
        )
    return results


__all__ = [
    "BUCKET_BYTES",
    "GATHER_ON_OWNER",
    "balanced_owners",
    "buckets",
    "check_distributed",
    "map_whole",
    "newton_schulz_cost",
]
