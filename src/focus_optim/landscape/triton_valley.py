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

import triton
import triton.language as tl
from torch import Tensor

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


# first_counter changes every step: left unspecialised, or Triton compiles variants for its values
# (== 1, multiple of 16, other) on the first steps of every run.
@triton.jit(do_not_specialize=["first_counter"])
def _valley_step_kernel(
    x_ptr,
    g_ptr,
    a_ptr,
    sigma_ptr,
    keys_ptr,
    e_ptr,
    min_loss_ptr,
    max_u_ptr,
    loss_out_ptr,
    u_out_ptr,
    R,
    first_counter,
    c,
    salt1,
    salt2,
    N: tl.constexpr,
    PAIRS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_R: tl.constexpr,
    RECORD: tl.constexpr,
):
    # Coordinates in two halves: "lo" = 0 .. PAIRS-1 and "hi" = PAIRS .. N-1, so that coordinate p
    # and coordinate PAIRS + p, whose normals are the cosine and the sine of Box-Muller pair p,
    # sit in the same lane: each pair's hashes, log, square root, cosine and sine are computed once.
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
    tl.store(g_ptr + offs_lo, (along * e_lo + across * v_lo) * (1.0 + sigma * z_lo), mask=ok_lo)
    tl.store(g_ptr + offs_hi, (along * e_hi + across * v_hi) * (1.0 + sigma * z_hi), mask=ok_hi)

    min_loss = tl.load(min_loss_ptr + rows, mask=row_ok, other=0.0)
    max_u = tl.load(max_u_ptr + rows, mask=row_ok, other=0.0)
    tl.store(min_loss_ptr + rows, tl.minimum(min_loss, loss), mask=row_ok)
    tl.store(max_u_ptr + rows, tl.maximum(max_u, u), mask=row_ok)
    if RECORD:
        tl.store(loss_out_ptr + rows, loss, mask=row_ok)
        tl.store(u_out_ptr + rows, u, mask=row_ok)


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
    record = loss_out is not None
    if record != (u_out is not None):
        raise ValueError("valley_step_ records loss_out and u_out together")
    n_rows, dim = theta.shape
    for t in (theta, grad_out):
        if t.dtype != theta.dtype or t.stride() != (1, n_rows):
            raise ValueError(f"valley_step_ needs column-major [R, N] tensors, got strides {t.stride()}")
    pairs = (dim + 1) // 2
    block_p = triton.next_power_of_2(pairs)
    block_r = max(16, min(1024, TILE // (2 * block_p)))
    _valley_step_kernel[(triton.cdiv(n_rows, block_r),)](
        theta,
        grad_out,
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
        N=dim,
        PAIRS=pairs,
        BLOCK_P=block_p,
        BLOCK_R=block_r,
        RECORD=record,
        num_warps=NUM_WARPS,
    )


__all__ = ["NUM_WARPS", "TILE", "valley_step_"]
