"""Fused Triton kernel for the sign-momentum family (FOCUS, and Signum as its gamma=0, no-EMA case).

One launch per (param group, dtype combination, step count) walks every tensor of the list and,
per element, reads p, g, m (and the parameter EMA a) once and writes p, m (and a) once:
28 bytes per fp32 FOCUS parameter, 20 for Signum. Arithmetic is in fp32 whatever the storage.

Ensembles: with 1-D (per-member) ``lr``/``weight_decay`` the kernel reads the member's values
for each element, the member being its index along dim 0: ``(offset // stride(0)) % size(0)``
for an element at ``offset`` in the tensor's (dense, possibly permuted) storage.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .multi_tensor import block_table, member_tables, pointer_table
from .triton_blocks import member_values, role_pointer, tensor_block

BLOCK = 1024  # tuned on an H100 (benchmarks/tune_fused_focus.py): 1024 x 4 warps was fastest
NUM_WARPS = 4
MODES = {"algorithm1": 0, "reference": 1, "decoupled": 2, "coupled": 3}  # "coupled": Signum only


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _lerp(start, end, w, W_HIGH: tl.constexpr):
    # torch.lerp's two-branch formula, so results match the eager path to rounding.
    if W_HIGH:
        return end - (end - start) * (1.0 - w)
    else:
        return start + w * (end - start)


@triton.jit
def _sign_family_kernel(
    ptrs,
    numels,
    block_tensor,
    block_start,
    n_tensors,
    p_witness,
    g_witness,
    s_witness,
    lr,
    w1,
    b2,
    w2,
    gamma,
    eta_wd_hat,
    bc2,
    wd,
    lr_ptr,
    wd_ptr,
    strides0,
    members,
    MEMBER: tl.constexpr,
    MODE: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_AVG: tl.constexpr,
    DECAY: tl.constexpr,
    W1_HIGH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t, offs, mask = tensor_block(numels, block_tensor, block_start, BLOCK)
    p_ptr = role_pointer(ptrs, n_tensors, 0, t, p_witness)
    g_ptr = role_pointer(ptrs, n_tensors, 1, t, g_witness)
    m_ptr = role_pointer(ptrs, n_tensors, 2, t, s_witness)
    if MEMBER:
        lr, wd = member_values(lr_ptr, wd_ptr, strides0, members, t, offs, mask)
        eta_wd_hat = decay_factor(lr, wd, bc2)

    p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask).to(tl.float32)
    if HAS_AVG:
        a_ptr = role_pointer(ptrs, n_tensors, 3, t, s_witness)
        a = tl.load(a_ptr + offs, mask=mask).to(tl.float32)
    else:
        a = m  # unused
    p, m, a = sign_family_update(p, g, m, a, lr, wd, eta_wd_hat, w1, b2, w2, gamma, bc2,
                                 MODE, MAXIMIZE, HAS_AVG, DECAY, W1_HIGH)  # fmt: skip
    if HAS_AVG:
        tl.store(a_ptr + offs, a.to(s_witness.dtype.element_ty), mask=mask)
    tl.store(m_ptr + offs, m.to(s_witness.dtype.element_ty), mask=mask)
    tl.store(p_ptr + offs, p.to(p_witness.dtype.element_ty), mask=mask)


@triton.jit
def decay_factor(lr, wd, bc2):
    """``-lr * wd / bc2``, the coefficient of the parameter average in FOCUS's decay (per element
    when lr and wd are per member; the host computes it for scalars)."""
    return -tl.div_rn(lr * wd, bc2)


@triton.jit
def sign_family_update(
    p,
    g,
    m,
    a,
    lr,
    wd,
    eta_wd_hat,
    w1,
    b2,
    w2,
    gamma,
    bc2,
    MODE: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_AVG: tl.constexpr,
    DECAY: tl.constexpr,
    W1_HIGH: tl.constexpr,
):
    """The element-wise FOCUS / Signum update in fp32: ``(p, m, a)`` after one step (``a``, the
    parameter EMA, is returned unchanged without ``HAS_AVG``). Every Triton kernel that applies
    this update calls this function (the optimizer's multi-tensor kernel, the toy lab's fused
    step), so there is one Triton statement of it."""
    if MAXIMIZE:
        g = -g
    if DECAY and MODE == 3:  # coupled (L2) decay, inside the momentum
        g = g + wd * p
    m = _lerp(m, g, w1, W1_HIGH)
    u = _sign(m)
    if HAS_AVG:
        a = a * b2 + w2 * p  # as the per-tensor path: exactly w2 * p at the first step, FMA or not
        if DECAY and MODE == 0:
            p = p + eta_wd_hat * a
        # A comparison, not sign(p*bc2 - a): FMA contraction would turn the exact tie at
        # step 1 (a == bc2*p) into a rounding-error sign.
        pb = p * bc2
        u = u + gamma * tl.where(pb > a, 1.0, tl.where(pb < a, -1.0, 0.0))
    else:
        if DECAY and MODE == 0:
            p = p + eta_wd_hat * p
    if DECAY and MODE == 2:
        u = u + wd * p
    p = p - lr * u
    if HAS_AVG and DECAY and MODE == 1:
        p = p + eta_wd_hat * a
    return p, m, a


def sign_family_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    param_avgs: list[Tensor] | None,
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    gamma: float,
    weight_decay: float | Tensor,
    bc2: float,
    decay_mode: str,
    maximize: bool,
) -> None:
    """One launch over tensors that share device, dtypes and step count (real, each dense with the
    same strides in every role). ``lr``/``weight_decay``: numbers, or 1-D per-member tensors.

    Only ``data_ptr()``, ``numel()`` and ``stride(0)`` of each tensor are read on the host: no views
    are made.
    """
    from . import record_launch

    device = params[0].device
    member = member_tables(params, lr, weight_decay)
    if member is not None:
        lr_t, wd_t, strides0, members = member
        lr, weight_decay, decay, eta_wd_hat = 0.0, 0.0, True, 0.0
    else:
        # numbers: the callers pass numbers or 1-D tensors (fused_hparam), and there is no 1-D one
        assert not isinstance(lr, Tensor) and not isinstance(weight_decay, Tensor)
        lr_t = wd_t = strides0 = params[0]  # unused placeholders (MEMBER=False)
        members, decay = 1, weight_decay != 0.0
        eta_wd_hat = -(lr * weight_decay) / bc2
    w1, w2 = 1.0 - beta1, 1.0 - beta2
    flags = dict(MEMBER=member is not None, MODE=MODES[decay_mode], MAXIMIZE=maximize,
                 HAS_AVG=param_avgs is not None, DECAY=decay, W1_HIGH=w1 >= 0.5)  # fmt: skip
    tensors = dict(params=params, exp_avgs=exp_avgs, param_avgs=param_avgs)
    args = dict(lr=lr, lr_t=lr_t, wd=weight_decay, wd_t=wd_t, members=members, strides0=strides0, w1=w1,
                b2=beta2, w2=w2, gamma=gamma, bc2=bc2, eta_wd_hat=eta_wd_hat)  # fmt: skip
    if record_launch("sign_family", tensors, args, flags):
        return
    rows = [params, grads, exp_avgs] + ([param_avgs] if param_avgs is not None else [])
    numels, which, start = block_table(tuple(p.numel() for p in params), BLOCK, device)
    ptrs = pointer_table(rows, device)
    _sign_family_kernel[(which.numel(),)](
        ptrs,
        numels,
        which,
        start,
        len(params),
        params[0],
        grads[0],
        exp_avgs[0],
        lr,
        w1,
        beta2,
        w2,
        gamma,
        eta_wd_hat,
        bc2,
        weight_decay,
        lr_t,
        wd_t,
        strides0,
        members,
        **flags,
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )
