"""Device-side tables that let one Triton launch walk a whole list of tensors.

A launch gets a pointer table (one row per tensor role: param, grad, state...), the numel of each
tensor and a block table mapping each program id to (tensor index, start offset). Block tables
depend only on the shapes and are cached; pointer tables are cached by the pointers themselves,
which stay fixed across steps for params and state (and usually for grads).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

_CACHE_SIZE = 64


class _LRU(OrderedDict):
    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        if len(self) > _CACHE_SIZE:
            self.popitem(last=False)
        return value


_blocks: _LRU = _LRU()
_pointers: _LRU = _LRU()


def block_table(numels: tuple[int, ...], block: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(numels int64, block -> tensor index int32, block -> start offset int64) on ``device``."""

    def make() -> tuple[Tensor, Tensor, Tensor]:
        n = torch.tensor(numels, dtype=torch.int64)
        per = (n + block - 1) // block
        which = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), per)
        first = torch.cumsum(per, 0) - per
        start = (
            torch.arange(int(per.sum()), dtype=torch.int64) - torch.repeat_interleave(first, per)
        ) * block
        return n.to(device), which.to(device), start.to(device)

    return _blocks.get_or_make((numels, block, str(device)), make)


def pointer_table(rows: list[list[Tensor]], device: torch.device) -> Tensor:
    """int64 tensor of shape (len(rows), len(rows[0])) holding ``data_ptr()`` of every tensor."""
    ptrs = tuple(t.data_ptr() for row in rows for t in row)

    def make() -> Tensor:
        host = torch.tensor(ptrs, dtype=torch.int64)
        if device.type == "cuda":
            host = host.pin_memory()
        return host.to(device, non_blocking=True)

    return _pointers.get_or_make((ptrs, str(device)), make)


_strides: _LRU = _LRU()
_constants: _LRU = _LRU()


def member_tables(
    params: list[Tensor], lr: float | Tensor, weight_decay: float | Tensor
) -> tuple[Tensor, Tensor, Tensor, int] | None:
    """For 1-D (per-member) ``lr``/``weight_decay``: (lr [E], weight decay [E], stride(0) of each
    tensor, E), all on the params' device in fp32 / int64; ``None`` when both are numbers."""
    vectors = [x for x in (lr, weight_decay) if isinstance(x, Tensor) and x.ndim == 1]
    if not vectors:
        return None
    device, members = params[0].device, vectors[0].shape[0]

    def as_vector(x: float | Tensor) -> Tensor:
        if isinstance(x, Tensor):
            if x.ndim == 1 and x.device == device and x.dtype == torch.float32 and x.is_contiguous():
                return x  # the usual case, checked first: this runs at every step
            return x.to(device=device, dtype=torch.float32).expand(members).contiguous()
        # cached: a number here is a group's fixed hyperparameter, the same at every step
        key = (float(x), members, str(device))
        return _constants.get_or_make(key, lambda: torch.full((members,), float(x), device=device))

    strides0 = tuple(p.stride(0) for p in params)
    table = _strides.get_or_make(
        (strides0, str(device)), lambda: torch.tensor(strides0, dtype=torch.int64).to(device)
    )
    return as_vector(lr), as_vector(weight_decay), table, members
