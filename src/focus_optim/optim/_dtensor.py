"""Parameters sharded as ``DTensor`` (FSDP2's ``fully_shard``, tensor parallelism).

* Element-wise optimizers (FOCUS, Signum, AdamW, Lion, EXAdam, Sophia-G, and the auxiliary AdamW
  of the matrix optimizers) update each shard where it lives: the step runs on the local tensors,
  with no communication and on every path, fused included. A gradient laid out differently from
  its parameter (e.g. still ``Partial``) is redistributed to the parameter's layout first.
* Matrix optimizers (Muon, ROOT, Conda) need whole matrices for their orthogonalisation, quantiles
  and SVDs. Muon and ROOT have each matrix's rows gathered on one owner rank, which computes and
  scatters the result (:mod:`._owners`); the numbers are those of the unsharded computation.
  Conda's SVD refreshes go to owners the same way. Its update runs on each rank's rows
  (:func:`own_rows`): a tall matrix's entirely locally (a rotation on the right keeps rows
  apart), a wide one's from the all-gathered gradient and momentum and the all-gathered
  normalised rows (:func:`gather_rows`); equal to the unsharded numbers up to the rounding of
  products over fewer rows. Conda without ``ROTATE_ON_SHARDS`` gathers each matrix on every
  rank (:func:`full`), updates it whole and keeps the rank's shard (:func:`like`).

``torch.distributed.tensor`` is never imported here (it costs ~0.6 s): if nobody imported it,
no ``DTensor`` exists.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def _dtensor_type() -> type | None:
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_dtensor(t: object) -> TypeGuard[DTensor]:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def any_dtensor(tensors: list[Tensor]) -> bool:
    cls = _dtensor_type()
    return cls is not None and any(isinstance(t, cls) for t in tensors)


def local(t: Any) -> Any:
    """The local tensor of a ``DTensor`` (sharing its storage: in-place updates are the shard's);
    anything else unchanged. Call under ``torch.no_grad()``."""
    return t.to_local() if is_dtensor(t) else t


def row_sharded(t: object) -> bool:
    """A ``DTensor`` whose rows are split over a 1-D mesh (FSDP2's layout), as ``torch.chunk``
    splits them."""
    if not is_dtensor(t) or t.device_mesh.ndim != 1 or t.ndim == 0:
        return False
    from torch.distributed.tensor import Shard

    return tuple(t.placements) == (Shard(0),)


def row_split(rows: int, world: int) -> tuple[int, list[tuple[int, int]]]:
    """``torch.chunk``'s (and so ``Shard(0)``'s) split of ``rows`` over ``world`` ranks: the chunk
    size, and each rank's (first row, row count); the last ranks may get fewer rows, or none."""
    chunk = -(-rows // world)
    starts = [min(rows, r * chunk) for r in range(world)]
    return chunk, [(start, min(rows, start + chunk) - start) for start in starts]


def own_rows(t: Any) -> slice:
    """The rows of a row-sharded ``DTensor`` (:func:`row_sharded`) that this rank holds."""
    mesh = t.device_mesh
    start, count = row_split(t.shape[0], mesh.size())[1][mesh.get_local_rank()]
    return slice(start, start + count)


def gather_rows(shard: Tensor, like: Any) -> Tensor:
    """The whole tensor whose rows this rank holds in ``shard`` (a plain tensor) and the other ranks
    theirs, split as the row-sharded ``like`` is: an all-gather over ``like``'s mesh."""
    from torch.distributed.tensor import DTensor

    shape = (like.shape[0], *shard.shape[1:])
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return DTensor.from_local(
        shard,
        like.device_mesh,
        like.placements,
        run_check=False,
        shape=shape,  # type: ignore[arg-type]  # a tuple of ints works; torch annotates torch.Size
        stride=tuple(strides),
    ).full_tensor()


def local_grad(g: Tensor, p: Tensor) -> Tensor:
    """The local part of gradient ``g`` laid out as its parameter ``p``."""
    if is_dtensor(g):
        pd = cast("DTensor", p)  # a DTensor gradient belongs to a DTensor parameter
        if g.device_mesh != pd.device_mesh or g.placements != pd.placements:
            g = g.redistribute(pd.device_mesh, pd.placements)
    return local(g)


def full(t: Tensor) -> Tensor:
    """The whole tensor (an all-gather for a sharded ``DTensor``); anything else unchanged."""
    return t.full_tensor() if is_dtensor(t) else t


def like(whole: Tensor, ref: Tensor) -> Tensor:
    """``whole`` (the same on every rank) laid out as ``ref``: a ``DTensor`` with ``ref``'s mesh and
    placements, cut locally from ``whole`` (no communication); ``whole`` itself if ``ref`` is a
    plain tensor."""
    if not is_dtensor(ref):
        return whole
    from torch.distributed.tensor import DTensor, Replicate

    mesh = ref.device_mesh
    replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, ref.placements)


def store(dst: Tensor, whole: Tensor) -> None:
    """Write ``whole`` into ``dst``: into its local shard if ``dst`` is a ``DTensor``."""
    if is_dtensor(dst):
        local(dst).copy_(local(like(whole, dst)))
    else:
        dst.copy_(whole)
