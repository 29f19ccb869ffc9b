"""Fused Triton kernel for AdamW with per-member (ensemble) ``lr``/``weight_decay``.

PyTorch's fused AdamW takes one learning rate per launch; ensembles (one lr and weight decay per
member along dim 0, as the labs use them) run here instead, with torch.optim's conventions:

.. math::
    \\theta \\leftarrow \\theta(1-\\eta\\lambda);\\quad m \\leftarrow \\operatorname{lerp}(m, g, 1-\\beta_1);
    \\quad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2;\\quad
    \\theta \\leftarrow \\theta - \\frac{\\eta}{1-\\beta_1^t}\\,
    \\frac{m}{\\sqrt{v}/\\sqrt{1-\\beta_2^t} + \\epsilon}

One launch walks every tensor of a group and reads p, g, m, v once and writes p, m, v once (28
bytes per fp32 element). The step counts stay on the device (the fused path's convention), so a
step never waits for the GPU: each block reads its tensor's count and forms the bias corrections
as ``exp2(t * log2(beta))``. Arithmetic is in fp32 whatever the storage.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from .multi_tensor import block_table, member_tables, pointer_table
from .triton_blocks import member_values, role_pointer, tensor_block
from .triton_sign import BLOCK, NUM_WARPS, _lerp


@triton.jit
def _adamw_kernel(
    ptrs,
    numels,
    block_tensor,
    block_start,
    n_tensors,
    p_witness,
    g_witness,
    s_witness,
    t_witness,
    lr_ptr,
    wd_ptr,
    strides0,
    members,
    w1,
    b2,
    w2,
    log2_b1,
    log2_b2,
    eps,
    MAXIMIZE: tl.constexpr,
    W1_HIGH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t, offs, mask = tensor_block(numels, block_tensor, block_start, BLOCK)
    p_ptr = role_pointer(ptrs, n_tensors, 0, t, p_witness)
    g_ptr = role_pointer(ptrs, n_tensors, 1, t, g_witness)
    m_ptr = role_pointer(ptrs, n_tensors, 2, t, s_witness)
    v_ptr = role_pointer(ptrs, n_tensors, 3, t, s_witness)
    step = tl.load(role_pointer(ptrs, n_tensors, 4, t, t_witness)).to(tl.float32)
    lr, wd = member_values(lr_ptr, wd_ptr, strides0, members, t, offs, mask)
    bc1, bc2_sqrt = bias_corrections(step, log2_b1, log2_b2)

    p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)
    p, m, v = adamw_update(p, g, m, v, lr, wd, w1, b2, w2, bc1, bc2_sqrt, eps, MAXIMIZE, W1_HIGH)
    tl.store(m_ptr + offs, m.to(s_witness.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(s_witness.dtype.element_ty), mask=mask)
    tl.store(p_ptr + offs, p.to(p_witness.dtype.element_ty), mask=mask)


@triton.jit
def bias_corrections(step, log2_b1, log2_b2):
    """``(1 - beta1^t, sqrt(1 - beta2^t))`` from the step count ``t`` (fp32) and ``log2`` of the betas."""
    return 1.0 - tl.exp2(step * log2_b1), tl.sqrt_rn(1.0 - tl.exp2(step * log2_b2))


@triton.jit
def adamw_update(
    p, g, m, v, lr, wd, w1, b2, w2, bc1, bc2_sqrt, eps, MAXIMIZE: tl.constexpr, W1_HIGH: tl.constexpr
):
    """The element-wise AdamW update in fp32 (torch.optim's conventions): ``(p, m, v)`` after one
    step, given the bias corrections ``bc1 = 1 - beta1^t`` and ``bc2_sqrt = sqrt(1 - beta2^t)``.
    Shared by every Triton kernel that applies it (see :func:`.triton_sign.sign_family_update`)."""
    if MAXIMIZE:
        g = -g
    p = p * (1.0 - lr * wd)
    m = _lerp(m, g, w1, W1_HIGH)
    v = v * b2 + w2 * (g * g)
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    p = p - tl.div_rn(m, denom) * tl.div_rn(lr, bc1)
    return p, m, v


def adamw_ensemble_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float | Tensor,
    maximize: bool,
) -> None:
    """One launch over tensors that share device and dtypes (real, each dense with the same strides
    in every role), with 1-D per-member ``lr`` and/or ``weight_decay``. The step counts (device
    tensors) must already hold this step's value."""
    from . import record_launch

    device = params[0].device
    member = member_tables(params, lr, weight_decay)
    if member is None:
        raise ValueError("adamw_ensemble_ needs a 1-D (per-member) lr or weight_decay")
    lr_t, wd_t, strides0, members = member
    w1 = 1.0 - beta1
    log2_b1 = math.log2(beta1) if beta1 > 0 else -math.inf
    log2_b2 = math.log2(beta2) if beta2 > 0 else -math.inf
    flags = dict(MAXIMIZE=maximize, W1_HIGH=w1 >= 0.5)
    tensors = dict(params=params, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, state_steps=state_steps)
    args = dict(lr_t=lr_t, wd_t=wd_t, members=members, strides0=strides0, w1=w1, b2=beta2, w2=1.0 - beta2,
                log2_b1=log2_b1, log2_b2=log2_b2, eps=eps)  # fmt: skip
    if record_launch("adamw", tensors, args, flags):
        return
    numels, which, start = block_table(tuple(p.numel() for p in params), BLOCK, device)
    ptrs = pointer_table([params, grads, exp_avgs, exp_avg_sqs, state_steps], device)
    _adamw_kernel[(which.numel(),)](
        ptrs,
        numels,
        which,
        start,
        len(params),
        params[0],
        grads[0],
        exp_avgs[0],
        state_steps[0],
        lr_t,
        wd_t,
        strides0,
        members,
        w1,
        beta2,
        1.0 - beta2,
        log2_b1,
        log2_b2,
        eps,
        **flags,
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )
