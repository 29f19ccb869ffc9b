"""Pieces every multi-tensor Triton kernel of the package starts from (see :mod:`.multi_tensor`)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tensor_block(numels, block_tensor, block_start, BLOCK: tl.constexpr):
    """``(t, offs, mask)``: this program's tensor index, its element offsets and their bounds."""
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    offs = tl.load(block_start + pid) + tl.arange(0, BLOCK)
    return t, offs, offs < tl.load(numels + t)


@triton.jit
def role_pointer(ptrs, n_tensors, role, t, witness):
    """Tensor ``t``'s pointer in row ``role`` of the pointer table, typed like ``witness``."""
    return tl.load(ptrs + role * n_tensors + t).to(witness.dtype)


@triton.jit
def member_values(lr_ptr, wd_ptr, strides0, members, t, offs, mask):
    """Per-element lr and weight decay of 1-D per-member hyperparameters: the member of an element
    is its index along dim 0, ``(offset // stride(0)) % size(0)`` in the tensor's dense storage."""
    member = (offs // tl.load(strides0 + t)) % members
    return tl.load(lr_ptr + member, mask=mask, other=0.0), tl.load(wd_ptr + member, mask=mask, other=0.0)
