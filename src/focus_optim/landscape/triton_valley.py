"""One Triton kernel for the valley's side of a simulated step (CUDA, or ``TRITON_INTERPRET=1``).

For a block of trajectories it reads :math:`\\theta_t` once and, per row,

1. evaluates the loss, the exact gradient and the projection :math:`u` (:mod:`.valley`),
2. folds the loss and :math:`u` into the running minimum loss and maximum :math:`u`,
3. multiplies each gradient component by :math:`1 + \\sigma z` with the standard normals ``z`` of
   :func:`.rng.step_normals` (the same hashes, so the same bits; Box–Muller through Triton's
   ``log``/``sqrt``/``cos``/``sin``, which round differently from PyTorch's),
4. writes the noisy gradient, in the parameters' layout.

The optimizer step is not here: the simulator then calls ``optimizer.step()``, whose fused path is
itself one Triton kernel, so a step costs two launches and no compilation.

Layout: ``theta`` is ``[R, N]`` column-major (storage ``[N, R]``), as the simulator keeps it, so
each coordinate of a block of rows is one coalesced load. A program holds ``BLOCK_R`` rows x all
``N`` coordinates in registers, as two halves of ``BLOCK_P`` (the pair count padded to a power of
two) that pair each cosine normal with its sine; the sums over coordinates are reductions within
a row, whose order depends only on ``N``: a row gets the same numbers wherever it sits in a batch.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl
from torch import Tensor

from ..optim._kernels import Launch
from ..optim._kernels.triton_adamw import adamw_update, bias_corrections
from ..optim._kernels.triton_sign import decay_factor, sign_family_update
from . import rng

#: Elements (rows x padded coordinates) per program, and warps per program (read at every launch:
#: ``benchmarks/toy_profile.py --configs`` times alternatives).
TILE = 4096
NUM_WARPS = 4


@triton.jit
def _mix32(x):
    """``lowbias32`` on uint32 words (:func:`.rng.mix32`)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _noisy_gradients(
    x_ptr, a_ptr, sigma_ptr, keys_ptr, e_ptr, R, first_counter, c, salt1, salt2,
    N: tl.constexpr, PAIRS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """This program's rows at theta_t: both halves of theta and of the noisy gradient, with their
    offsets and masks, and each row's ``u`` and loss.

    Coordinates come in two halves, "lo" = 0 .. PAIRS-1 and "hi" = PAIRS .. N-1, so that coordinate
    p and coordinate PAIRS + p, whose normals are the cosine and the sine of Box-Muller pair p, sit
    in the same lane: each pair's hashes, log, square root, cosine and sine are computed once."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    pair = tl.arange(0, BLOCK_P)
    row_ok = rows < R
    lo_ok, hi_ok = pair < PAIRS, pair < N - PAIRS
    offs_lo = pair[:, None].to(tl.int64) * R + rows[None, :]  # [BLOCK_P, BLOCK_R]: coordinate-major
    offs_hi = offs_lo + PAIRS * R
    ok_lo = lo_ok[:, None] & row_ok[None, :]
    ok_hi = hi_ok[:, None] & row_ok[None, :]

    x_lo = tl.load(x_ptr + offs_lo, mask=ok_lo, other=0.0)
    x_hi = tl.load(x_ptr + offs_hi, mask=ok_hi, other=0.0)
    e_lo = tl.load(e_ptr + pair, mask=lo_ok, other=0.0)[:, None]
    e_hi = tl.load(e_ptr + PAIRS + pair, mask=hi_ok, other=0.0)[:, None]
    a = tl.load(a_ptr + rows, mask=row_ok, other=0.0)
    u = tl.sum(x_lo * e_lo, axis=0) + tl.sum(x_hi * e_hi, axis=0)
    v_lo = x_lo - u[None, :] * e_lo
    v_hi = x_hi - u[None, :] * e_hi
    w = tl.sum(v_lo * v_lo, axis=0) + tl.sum(v_hi * v_hi, axis=0)
    au = a * u
    loss = 0.5 * au * u * w - c * u
    along, across = (au * w - c)[None, :], (au * u)[None, :]

    counter = (first_counter + pair).to(tl.uint32, bitcast=True)
    key = tl.load(keys_ptr + rows, mask=row_ok, other=0).to(tl.uint32, bitcast=True)
    h1 = _mix32(key[None, :] ^ _mix32(counter ^ salt1.to(tl.uint32, bitcast=True))[:, None])
    h2 = _mix32(key[None, :] ^ _mix32(counter ^ salt2.to(tl.uint32, bitcast=True))[:, None])
    u1 = (h1 >> 8).to(tl.float32) * (1.0 / 16777216.0)
    phi = (h2 >> 8).to(tl.float32) * (1.0 / 16777216.0) * 6.283185307179586
    radius = tl.sqrt(-2.0 * tl.log(1.0 - u1))  # 1 - u1 is exact: u1 has 24 bits
    sigma = tl.load(sigma_ptr + rows, mask=row_ok, other=0.0)[None, :]
    z_lo, z_hi = radius * tl.cos(phi), radius * tl.sin(phi)
    g_lo = (along * e_lo + across * v_lo) * (1.0 + sigma * z_lo)
    g_hi = (along * e_hi + across * v_hi) * (1.0 + sigma * z_hi)
    return rows, row_ok, offs_lo, offs_hi, ok_lo, ok_hi, x_lo, x_hi, g_lo, g_hi, u, loss


@triton.jit
def _fold_metrics(
    rows, row_ok, u, loss, min_loss_ptr, max_u_ptr, loss_out_ptr, u_out_ptr, RECORD: tl.constexpr
):
    """Running minimum loss and maximum u; with ``RECORD`` also this step's loss and u."""
    min_loss = tl.load(min_loss_ptr + rows, mask=row_ok, other=0.0)
    max_u = tl.load(max_u_ptr + rows, mask=row_ok, other=0.0)
    tl.store(min_loss_ptr + rows, tl.minimum(min_loss, loss), mask=row_ok)
    tl.store(max_u_ptr + rows, tl.maximum(max_u, u), mask=row_ok)
    if RECORD:
        tl.store(loss_out_ptr + rows, loss, mask=row_ok)
        tl.store(u_out_ptr + rows, u, mask=row_ok)


# first_counter changes every step: left unspecialised, or Triton compiles variants for its values
# (== 1, multiple of 16, other) on the first steps of every run.
@triton.jit(do_not_specialize=["first_counter"])
def _valley_step_kernel(
    x_ptr, g_ptr, a_ptr, sigma_ptr, keys_ptr, e_ptr, min_loss_ptr, max_u_ptr, loss_out_ptr, u_out_ptr,
    R, first_counter, c, salt1, salt2,
    N: tl.constexpr, PAIRS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, RECORD: tl.constexpr,
):  # fmt: skip
    rows, row_ok, offs_lo, offs_hi, ok_lo, ok_hi, _, _, g_lo, g_hi, u, loss = _noisy_gradients(
        x_ptr,
        a_ptr,
        sigma_ptr,
        keys_ptr,
        e_ptr,
        R,
        first_counter,
        c,
        salt1,
        salt2,
        N,
        PAIRS,
        BLOCK_P,
        BLOCK_R,
    )
    tl.store(g_ptr + offs_lo, g_lo, mask=ok_lo)
    tl.store(g_ptr + offs_hi, g_hi, mask=ok_hi)
    _fold_metrics(rows, row_ok, u, loss, min_loss_ptr, max_u_ptr, loss_out_ptr, u_out_ptr, RECORD)


@triton.jit
def _apply_update(
    offs, ok, p, g, m_ptr, s_ptr, lr, wd, bc2, w1, b2, w2, gamma, bc1, bc2_sqrt, eps,
    ALGO: tl.constexpr, MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_AVG: tl.constexpr,
    DECAY: tl.constexpr, W1_HIGH: tl.constexpr,
):  # fmt: skip
    """The optimizer's own element-wise update (``ALGO`` 0: FOCUS/Signum, 1: AdamW) of one half
    tile, with its state read and written in place."""
    m = tl.load(m_ptr + offs, mask=ok, other=0.0)
    if ALGO == 0:
        if HAS_AVG:
            s = tl.load(s_ptr + offs, mask=ok, other=0.0)
        else:
            s = m  # unused
        eta_wd_hat = decay_factor(lr, wd, bc2)
        p, m, s = sign_family_update(p, g, m, s, lr, wd, eta_wd_hat, w1, b2, w2, gamma, bc2,
                                     MODE, MAXIMIZE, HAS_AVG, DECAY, W1_HIGH)  # fmt: skip
        if HAS_AVG:
            tl.store(s_ptr + offs, s, mask=ok)
    else:
        s = tl.load(s_ptr + offs, mask=ok, other=0.0)
        p, m, s = adamw_update(p, g, m, s, lr, wd, w1, b2, w2, bc1, bc2_sqrt, eps, MAXIMIZE, W1_HIGH)
        tl.store(s_ptr + offs, s, mask=ok)
    tl.store(m_ptr + offs, m, mask=ok)
    return p


@triton.jit(do_not_specialize=["first_counter"])
def _valley_update_kernel(
    x_ptr, a_ptr, sigma_ptr, keys_ptr, e_ptr, min_loss_ptr, max_u_ptr, loss_out_ptr, u_out_ptr,
    R, first_counter, c, salt1, salt2,
    m_ptr, s_ptr, lr_ptr, wd_ptr, step_ptr, bc2, w1, b2, w2, gamma, log2_b1, log2_b2, eps,
    N: tl.constexpr, PAIRS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, RECORD: tl.constexpr,
    ALGO: tl.constexpr, MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_AVG: tl.constexpr,
    DECAY: tl.constexpr, W1_HIGH: tl.constexpr,
):  # fmt: skip
    rows, row_ok, offs_lo, offs_hi, ok_lo, ok_hi, x_lo, x_hi, g_lo, g_hi, u, loss = _noisy_gradients(
        x_ptr,
        a_ptr,
        sigma_ptr,
        keys_ptr,
        e_ptr,
        R,
        first_counter,
        c,
        salt1,
        salt2,
        N,
        PAIRS,
        BLOCK_P,
        BLOCK_R,
    )
    _fold_metrics(rows, row_ok, u, loss, min_loss_ptr, max_u_ptr, loss_out_ptr, u_out_ptr, RECORD)
    lr = tl.load(lr_ptr + rows, mask=row_ok, other=0.0)[None, :]  # member = row (see valley_update_)
    wd = tl.load(wd_ptr + rows, mask=row_ok, other=0.0)[None, :]
    bc1 = 1.0
    bc2_sqrt = 1.0
    if ALGO == 1:
        bc1, bc2_sqrt = bias_corrections(tl.load(step_ptr).to(tl.float32), log2_b1, log2_b2)
    p_lo = _apply_update(offs_lo, ok_lo, x_lo, g_lo, m_ptr, s_ptr, lr, wd, bc2, w1, b2, w2, gamma, bc1,
                         bc2_sqrt, eps, ALGO, MODE, MAXIMIZE, HAS_AVG, DECAY, W1_HIGH)  # fmt: skip
    p_hi = _apply_update(offs_hi, ok_hi, x_hi, g_hi, m_ptr, s_ptr, lr, wd, bc2, w1, b2, w2, gamma, bc1,
                         bc2_sqrt, eps, ALGO, MODE, MAXIMIZE, HAS_AVG, DECAY, W1_HIGH)  # fmt: skip
    tl.store(x_ptr + offs_lo, p_lo, mask=ok_lo)
    tl.store(x_ptr + offs_hi, p_hi, mask=ok_hi)


def valley_step_(
    theta: Tensor,
    grad_out: Tensor,
    sharpness: Tensor,
    sigma: Tensor,
    keys: Tensor,
    axis: Tensor,
    min_loss: Tensor,
    max_u: Tensor,
    *,
    c: float,
    step: int,
    loss_out: Tensor | None = None,
    u_out: Tensor | None = None,
) -> None:
    """Noisy gradient of step ``step`` into ``grad_out`` and metrics at ``theta`` (all in place).

    ``theta``/``grad_out``: float32 ``[R, N]`` with storage ``[N, R]`` (``.t()`` of a contiguous
    tensor); ``sharpness``, ``sigma``, ``min_loss``, ``max_u``: float32 ``[R]``; ``keys``: int32
    ``[R]``; ``axis``: float32 ``[N]``. ``loss_out``/``u_out`` (float32 ``[R]``, both or neither):
    also store the loss and ``u`` at ``theta`` (for recorded runs).
    """
    valley, grid, meta = _valley_args("valley_step_", theta, [grad_out], sharpness, sigma, keys, axis,
                                      min_loss, max_u, c, step, loss_out, u_out)  # fmt: skip
    _valley_step_kernel[grid](theta, grad_out, *valley, **meta, num_warps=NUM_WARPS)


def valley_update_(
    theta: Tensor,
    launch: Launch,
    sharpness: Tensor,
    sigma: Tensor,
    keys: Tensor,
    axis: Tensor,
    min_loss: Tensor,
    max_u: Tensor,
    *,
    c: float,
    step: int,
    loss_out: Tensor | None = None,
    u_out: Tensor | None = None,
) -> None:
    """:func:`valley_step_` and the optimizer's update of ``theta`` in one kernel: the noisy
    gradient never goes to memory (24 bytes per coordinate-step for FOCUS and AdamW instead of 36,
    16 for Signum instead of 28, and one launch instead of two).

    ``launch``: the optimizer's own fused launch for ``theta``, recorded around ``optimizer.step()``
    by :func:`~focus_optim.optim._kernels.recorded_launches` (so the optimizer advanced its step
    counts and computed its bias corrections and hyperparameter tables); the kernel applies the
    optimizer kernels' shared element-wise update (``sign_family_update``, ``adamw_update``) with
    them, so the numbers are those of :func:`valley_step_` followed by that launch, bit for bit.
    It must be a per-row (ensemble) launch over ``theta`` alone."""
    if launch.kernel not in ("sign_family", "adamw"):
        raise ValueError(f"valley_update_ applies sign_family or adamw launches, not {launch.kernel!r}")
    params, args = launch.tensors["params"], launch.args
    n_rows = theta.shape[0]
    if len(params) != 1 or params[0] is not theta or args["members"] != n_rows or theta.stride(0) != 1:
        raise ValueError("valley_update_ needs the optimizer's per-row launch over theta alone")
    adamw = launch.kernel == "adamw"
    if not adamw and not launch.flags["MEMBER"]:
        raise ValueError("valley_update_ needs per-row (1-D) lr and weight_decay tensors")
    m = launch.tensors["exp_avgs"][0]
    s = launch.tensors["exp_avg_sqs" if adamw else "param_avgs"]
    s = s[0] if s is not None else m  # (Signum: unused)
    valley, grid, meta = _valley_args("valley_update_", theta, [m, s], sharpness, sigma, keys, axis,
                                      min_loss, max_u, c, step, loss_out, u_out)  # fmt: skip
    _valley_update_kernel[grid](
        theta,
        *valley,
        m,
        s,
        args["lr_t"],
        args["wd_t"],
        launch.tensors["state_steps"][0] if adamw else m,  # (sign family: unused)
        1.0 if adamw else args["bc2"],
        args["w1"],
        args["b2"],
        args["w2"],
        0.0 if adamw else args["gamma"],
        args["log2_b1"] if adamw else 0.0,
        args["log2_b2"] if adamw else 0.0,
        args["eps"] if adamw else 0.0,
        **meta,
        ALGO=int(adamw),
        MODE=0 if adamw else launch.flags["MODE"],
        MAXIMIZE=launch.flags["MAXIMIZE"],
        HAS_AVG=False if adamw else launch.flags["HAS_AVG"],
        DECAY=True,
        W1_HIGH=launch.flags["W1_HIGH"],
        num_warps=NUM_WARPS,
    )


def _valley_args(
    who: str,
    theta: Tensor,
    alike: list[Tensor],
    sharpness: Tensor,
    sigma: Tensor,
    keys: Tensor,
    axis: Tensor,
    min_loss: Tensor,
    max_u: Tensor,
    c: float,
    step: int,
    loss_out: Tensor | None,
    u_out: Tensor | None,
) -> tuple[list[Any], tuple[int], dict[str, Any]]:
    """The valley kernels' common arguments after ``x_ptr`` (and ``g_ptr``), grid and constexprs."""
    record = loss_out is not None
    if record != (u_out is not None):
        raise ValueError(f"{who} records loss_out and u_out together")
    n_rows, dim = theta.shape
    for t in (theta, *alike):
        if t.dtype != theta.dtype or t.stride() != (1, n_rows):
            raise ValueError(f"{who} needs column-major [R, N] tensors, got strides {t.stride()}")
    pairs = (dim + 1) // 2
    block_p = triton.next_power_of_2(pairs)
    block_r = max(16, min(1024, TILE // (2 * block_p)))
    args = [
        sharpness,
        sigma,
        keys,
        axis,
        min_loss,
        max_u,
        loss_out if record else min_loss,  # placeholders, not written, when not recording
        u_out if record else max_u,
        n_rows,
        rng.to_i32(step * pairs),  # int32 words throughout, as in .rng
        float(c),
        rng.to_i32(rng.SALT_U1),
        rng.to_i32(rng.SALT_U2),
    ]
    meta = dict(N=dim, PAIRS=pairs, BLOCK_P=block_p, BLOCK_R=block_r, RECORD=record)
    return args, (triton.cdiv(n_rows, block_r),), meta


__all__ = ["NUM_WARPS", "TILE", "valley_step_", "valley_update_"]
