"""Triton kernels for the toy lab's steps (CUDA, or ``TRITON_INTERPRET=1``).

For a block of trajectories the valley's side of a step reads :math:`\\theta_t` once and, per row,

1. evaluates the loss, the exact gradient and the projection :math:`u` (:mod:`.valley`),
2. folds the loss and :math:`u` into the running minimum loss and maximum :math:`u`,
3. multiplies each gradient component by :math:`1 + \\sigma z` with the standard normals ``z`` of
   :func:`.rng.step_normals` (the same hashes, so the same uniforms; Box–Muller through Triton's
   ``log``/``sqrt``, which round differently from PyTorch's, and, compiled for a GPU, the
   hardware's approximate ``cos``/``sin`` (:data:`FAST_SINCOS`), within ~1e-6 of the exact
   values on the angle's range ``[0, 2 pi)``).

Two ways to pair it with the optimizer:

* :func:`valley_step_` writes the noisy gradient, in the parameters' layout, and the simulator then
  calls ``optimizer.step()``, whose fused path is itself one Triton kernel: two launches a step.
* :func:`valley_update_` runs ``K`` whole steps in one launch: the optimizer's recorded launches
  (its host work done by ``optimizer.step()``) are applied in the kernel through the update
  functions the optimizer's own kernels call, with theta and the state kept in registers from the
  first step to the last.

Layout: ``theta`` is ``[R, N]`` column-major (storage ``[N, R]``), as the simulator keeps it, so
each coordinate of a block of rows is one coalesced load. A program holds ``BLOCK_R`` rows x all
``N`` coordinates in registers, as two halves of ``BLOCK_P`` (the pair count padded to a power of
two) that pair each cosine normal with its sine; the sums over coordinates are reductions within
a row, whose order depends only on ``N``: a row gets the same numbers wherever it sits in a batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from ..optim._kernels import Launch
from ..optim._kernels.triton_adamw import adamw_update, bias_corrections
from ..optim._kernels.triton_sign import decay_factor, sign_family_update
from . import rng

#: Elements (rows x padded coordinates) per program, and warps per program, of
#: :func:`valley_step_`'s kernel (read at every launch: ``benchmarks/toy_profile.py --configs``
#: times alternatives). Registers per thread grow with the elements each thread holds,
#: ``TILE / (32 * NUM_WARPS)``; compiled for sm_90 by ptxas (``benchmarks/toy_registers.py``) the
#: kernel needs ~63 registers at 8 elements (100-D and 2-D), and 232 (100-D) at the 32 of the
#: 4096 x 4 timed on an H100 on 2026-11-23, which left it 8 warps per SM and 0.79 TB/s.
TILE = 2048
NUM_WARPS = 8
#: The same for :func:`valley_update_`'s kernel, which also holds the optimizer's state across
#: steps: 4 elements a thread, 57-75 registers (2-D) and 64 (100-D), against 124-250 at 8-16.
FUSED_TILE = 1024
FUSED_NUM_WARPS = 8
#: Fewest rows per program (at 100-D, 8 rows x 64 pairs x 2 halves = 1024 elements).
MIN_BLOCK_R = 8
#: Box–Muller's cosine and sine as the GPU's approximate instructions (``cos.approx``/``sin.approx``,
#: absolute error below 2**-20.5 on the angle's range) instead of libdevice's correctly rounded
#: ones. Compiled for sm_90, that takes the fused 100-D kernel's loop from ~410 executed
#: instructions to ~300 with Triton 3.6, 368 to 303 with 3.9 (the exact functions' range
#: reduction; ``benchmarks/toy_registers.py --sass``). The log stays exact: near 1 the
#: approximate one errs by more than ``log(1 - u)`` itself. Not in the interpreter, which runs the
#: exact functions. Read at every launch.
FAST_SINCOS = True


@triton.jit
def _mix32(x):
    """``lowbias32`` on uint32 words (:func:`.rng.mix32`)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _row_block(R, N: tl.constexpr, PAIRS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr):
    """This program's rows and both halves of their coordinates: offsets and masks.

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
    return rows, row_ok, pair, lo_ok, hi_ok, offs_lo, offs_hi, ok_lo, ok_hi


@triton.jit
def _load_halves(ptr, offs_lo, offs_hi, ok_lo, ok_hi):
    return tl.load(ptr + offs_lo, mask=ok_lo, other=0.0), tl.load(ptr + offs_hi, mask=ok_hi, other=0.0)


@triton.jit
def _store_halves(ptr, lo, hi, offs_lo, offs_hi, ok_lo, ok_hi):
    tl.store(ptr + offs_lo, lo, mask=ok_lo)
    tl.store(ptr + offs_hi, hi, mask=ok_hi)


@triton.jit
def _noisy_gradient(x_lo, x_hi, e_lo, e_hi, a, sigma, key, pair, counter0, c, salt1, salt2,
                    FAST_SINCOS: tl.constexpr):  # fmt: skip
    """At theta = (x_lo, x_hi) (registers): the noisy gradient's halves, each row's ``u`` and loss.

    ``counter0``: uint32 counter of this step's first pair (``step * PAIRS``); ``key``: uint32
    row keys; ``salt1``/``salt2``: uint32."""
    # One reduction over pairs per sum (the halves added first): at 100-D a row's pairs span
    # warps, and each cross-warp reduction costs shared-memory round trips and barriers.
    u = tl.sum(x_lo * e_lo + x_hi * e_hi, axis=0)
    v_lo = x_lo - u[None, :] * e_lo
    v_hi = x_hi - u[None, :] * e_hi
    w = tl.sum(v_lo * v_lo + v_hi * v_hi, axis=0)
    au = a * u
    loss = 0.5 * au * u * w - c * u
    along, across = (au * w - c)[None, :], (au * u)[None, :]

    counter = counter0 + pair.to(tl.uint32)
    h1 = _mix32(key[None, :] ^ _mix32(counter ^ salt1)[:, None])
    h2 = _mix32(key[None, :] ^ _mix32(counter ^ salt2)[:, None])
    u1 = (h1 >> 8).to(tl.float32) * (1.0 / 16777216.0)
    phi = (h2 >> 8).to(tl.float32) * (1.0 / 16777216.0) * 6.283185307179586
    radius = tl.sqrt(-2.0 * tl.log(1.0 - u1))  # 1 - u1 is exact: u1 has 24 bits
    if FAST_SINCOS:
        z_lo, z_hi = radius * libdevice.fast_cosf(phi), radius * libdevice.fast_sinf(phi)
    else:
        z_lo, z_hi = radius * tl.cos(phi), radius * tl.sin(phi)
    g_lo = (along * e_lo + across * v_lo) * (1.0 + sigma[None, :] * z_lo)
    g_hi = (along * e_hi + across * v_hi) * (1.0 + sigma[None, :] * z_hi)
    return g_lo, g_hi, u, loss


@triton.jit
def _row_constants(a_ptr, sigma_ptr, keys_ptr, e_ptr, rows, row_ok, pair, lo_ok, hi_ok, salt1, salt2,
                   PAIRS: tl.constexpr):  # fmt: skip
    """What a row's steps share: the axis halves, sharpness, noise level and key, and the salts."""
    e_lo = tl.load(e_ptr + pair, mask=lo_ok, other=0.0)[:, None]
    e_hi = tl.load(e_ptr + PAIRS + pair, mask=hi_ok, other=0.0)[:, None]
    a = tl.load(a_ptr + rows, mask=row_ok, other=0.0)
    sigma = tl.load(sigma_ptr + rows, mask=row_ok, other=0.0)
    key = tl.load(keys_ptr + rows, mask=row_ok, other=0).to(tl.uint32, bitcast=True)
    return e_lo, e_hi, a, sigma, key, salt1.to(tl.uint32, bitcast=True), salt2.to(tl.uint32, bitcast=True)


# first_counter changes every step: left unspecialised, or Triton compiles variants for its values
# (== 1, multiple of 16, other) on the first steps of every run.
@triton.jit(do_not_specialize=["first_counter"])
def _valley_step_kernel(
    x_ptr, g_ptr, a_ptr, sigma_ptr, keys_ptr, e_ptr, min_loss_ptr, max_u_ptr, loss_out_ptr, u_out_ptr,
    R, first_counter, c, salt1, salt2,
    N: tl.constexpr, PAIRS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, RECORD: tl.constexpr,
    FAST_SINCOS: tl.constexpr,
):  # fmt: skip
    rows, row_ok, pair, lo_ok, hi_ok, offs_lo, offs_hi, ok_lo, ok_hi = _row_block(
        R, N, PAIRS, BLOCK_P, BLOCK_R
    )
    e_lo, e_hi, a, sigma, key, salt1, salt2 = _row_constants(
        a_ptr, sigma_ptr, keys_ptr, e_ptr, rows, row_ok, pair, lo_ok, hi_ok, salt1, salt2, PAIRS
    )
    x_lo, x_hi = _load_halves(x_ptr, offs_lo, offs_hi, ok_lo, ok_hi)
    counter0 = first_counter.to(tl.uint32, bitcast=True)
    g_lo, g_hi, u, loss = _noisy_gradient(
        x_lo, x_hi, e_lo, e_hi, a, sigma, key, pair, counter0, c, salt1, salt2, FAST_SINCOS
    )
    _store_halves(g_ptr, g_lo, g_hi, offs_lo, offs_hi, ok_lo, ok_hi)
    min_loss = tl.load(min_loss_ptr + rows, mask=row_ok, other=0.0)
    max_u = tl.load(max_u_ptr + rows, mask=row_ok, other=0.0)
    tl.store(min_loss_ptr + rows, tl.minimum(min_loss, loss), mask=row_ok)
    tl.store(max_u_ptr + rows, tl.maximum(max_u, u), mask=row_ok)
    if RECORD:
        tl.store(loss_out_ptr + rows, loss, mask=row_ok)
        tl.store(u_out_ptr + rows, u, mask=row_ok)


@triton.jit
def _sign_family_halves(x_lo, x_hi, g_lo, g_hi, m_lo, m_hi, s_lo, s_hi, lr, wd, bc2, w1, b2, w2, gamma,
                        MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_AVG: tl.constexpr,
                        DECAY: tl.constexpr, W1_HIGH: tl.constexpr):  # fmt: skip
    """The optimizer's FOCUS / Signum update (``sign_family_update``) of both halves."""
    eta_wd_hat = decay_factor(lr, wd, bc2)
    x_lo, m_lo, s_lo = sign_family_update(x_lo, g_lo, m_lo, s_lo, lr, wd, eta_wd_hat, w1, b2, w2, gamma, bc2,
                                          MODE, MAXIMIZE, HAS_AVG, DECAY, W1_HIGH)  # fmt: skip
    x_hi, m_hi, s_hi = sign_family_update(x_hi, g_hi, m_hi, s_hi, lr, wd, eta_wd_hat, w1, b2, w2, gamma, bc2,
                                          MODE, MAXIMIZE, HAS_AVG, DECAY, W1_HIGH)  # fmt: skip
    return x_lo, x_hi, m_lo, m_hi, s_lo, s_hi


@triton.jit(do_not_specialize=["first_counter"])
def _valley_update_kernel(
    x_ptr, a_ptr, sigma_ptr, keys_ptr, e_ptr, min_loss_ptr, max_u_ptr, loss_out_ptr, u_out_ptr,
    R, first_counter, c, salt1, salt2,
    m_ptr, s_ptr, lr_ptr, wd_ptr, step_ptr, bc2_ptr, w1, b2, w2, gamma, log2_b1, log2_b2, eps,
    N: tl.constexpr, PAIRS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, RECORD: tl.constexpr,
    ALGO: tl.constexpr, MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_AVG: tl.constexpr,
    DECAY: tl.constexpr, W1_HIGH: tl.constexpr, K: tl.constexpr, FAST_SINCOS: tl.constexpr,
):  # fmt: skip
    """``K`` whole steps of a block of rows, theta and the optimizer state held in registers
    throughout: read once, written once."""
    rows, row_ok, pair, lo_ok, hi_ok, offs_lo, offs_hi, ok_lo, ok_hi = _row_block(
        R, N, PAIRS, BLOCK_P, BLOCK_R
    )
    e_lo, e_hi, a, sigma, key, salt1, salt2 = _row_constants(
        a_ptr, sigma_ptr, keys_ptr, e_ptr, rows, row_ok, pair, lo_ok, hi_ok, salt1, salt2, PAIRS
    )
    lr = tl.load(lr_ptr + rows, mask=row_ok, other=0.0)[None, :]  # member = row (see valley_update_)
    wd = tl.load(wd_ptr + rows, mask=row_ok, other=0.0)[None, :]
    min_loss = tl.load(min_loss_ptr + rows, mask=row_ok, other=0.0)
    max_u = tl.load(max_u_ptr + rows, mask=row_ok, other=0.0)
    x_lo, x_hi = _load_halves(x_ptr, offs_lo, offs_hi, ok_lo, ok_hi)
    m_lo, m_hi = _load_halves(m_ptr, offs_lo, offs_hi, ok_lo, ok_hi)
    s_lo, s_hi = m_lo, m_hi  # (Signum: no second state)
    if ALGO == 1 or HAS_AVG:
        s_lo, s_hi = _load_halves(s_ptr, offs_lo, offs_hi, ok_lo, ok_hi)
    last_step = 0.0
    if ALGO == 1:  # the optimizer advanced its device step count K times while recording
        last_step = tl.load(step_ptr).to(tl.float32)
    first = first_counter.to(tl.uint32, bitcast=True)
    for k in range(K):
        counter0 = first + tl.cast(k * PAIRS, tl.uint32)
        g_lo, g_hi, u, loss = _noisy_gradient(x_lo, x_hi, e_lo, e_hi, a, sigma, key, pair, counter0, c,
                                              salt1, salt2, FAST_SINCOS)  # fmt: skip
        min_loss = tl.minimum(min_loss, loss)
        max_u = tl.maximum(max_u, u)
        if RECORD:
            tl.store(loss_out_ptr + tl.cast(k, tl.int64) * R + rows, loss, mask=row_ok)
            tl.store(u_out_ptr + tl.cast(k, tl.int64) * R + rows, u, mask=row_ok)
        if ALGO == 0:
            bc2 = tl.load(bc2_ptr + k)
            if HAS_AVG:
                x_lo, x_hi, m_lo, m_hi, s_lo, s_hi = _sign_family_halves(
                    x_lo, x_hi, g_lo, g_hi, m_lo, m_hi, s_lo, s_hi, lr, wd, bc2, w1, b2, w2, gamma,
                    MODE, MAXIMIZE, HAS_AVG, DECAY, W1_HIGH,
                )  # fmt: skip
            else:
                x_lo, x_hi, m_lo, m_hi, _, _ = _sign_family_halves(
                    x_lo, x_hi, g_lo, g_hi, m_lo, m_hi, m_lo, m_hi, lr, wd, bc2, w1, b2, w2, gamma,
                    MODE, MAXIMIZE, HAS_AVG, DECAY, W1_HIGH,
                )  # fmt: skip
        else:
            bc1, bc2_sqrt = bias_corrections(last_step - (K - 1 - k), log2_b1, log2_b2)
            x_lo, m_lo, s_lo = adamw_update(x_lo, g_lo, m_lo, s_lo, lr, wd, w1, b2, w2, bc1, bc2_sqrt, eps,
                                            MAXIMIZE, W1_HIGH)  # fmt: skip
            x_hi, m_hi, s_hi = adamw_update(x_hi, g_hi, m_hi, s_hi, lr, wd, w1, b2, w2, bc1, bc2_sqrt, eps,
                                            MAXIMIZE, W1_HIGH)  # fmt: skip
    tl.store(min_loss_ptr + rows, min_loss, mask=row_ok)
    tl.store(max_u_ptr + rows, max_u, mask=row_ok)
    _store_halves(x_ptr, x_lo, x_hi, offs_lo, offs_hi, ok_lo, ok_hi)
    _store_halves(m_ptr, m_lo, m_hi, offs_lo, offs_hi, ok_lo, ok_hi)
    if ALGO == 1 or HAS_AVG:
        _store_halves(s_ptr, s_lo, s_hi, offs_lo, offs_hi, ok_lo, ok_hi)


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
                                      min_loss, max_u, c, step, loss_out, u_out, TILE)  # fmt: skip
    _valley_step_kernel[grid](theta, grad_out, *valley, **meta, num_warps=NUM_WARPS)


def valley_update_(
    theta: Tensor,
    launches: Launch | Sequence[Launch],
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
    """``K = len(launches)`` whole steps (steps ``step`` .. ``step + K - 1``) in one kernel: for
    each, :func:`valley_step_` and the optimizer's update of ``theta``, with theta and the
    optimizer's state held in registers from the first step to the last. The noisy gradient never
    goes to memory, and theta and the state are read and written once per launch, not per step
    (two launches a step move 36 bytes per coordinate-step for FOCUS and AdamW, 28 for Signum).

    ``launches``: the optimizer's own fused launches for ``theta``, one per step, recorded around
    ``K`` calls of ``optimizer.step()`` by :func:`~focus_optim.optim._kernels.recorded_launches`
    (so the optimizer advanced its step counts and computed its bias corrections and hyperparameter
    tables for every step); the kernel applies the optimizer kernels' shared element-wise update
    (``sign_family_update``, ``adamw_update``) with them, so the numbers are those of
    :func:`valley_step_` followed by each launch, bit for bit. They must be per-row (ensemble)
    launches over ``theta`` alone that differ only in their per-step bias correction.
    ``loss_out``/``u_out``: ``[K, R]`` (or ``[R]`` for ``K = 1``), each step's loss and ``u``."""
    launches = [launches] if isinstance(launches, Launch) else list(launches)
    if not launches:
        raise ValueError("valley_update_ needs at least one recorded launch")
    launch = launches[0]
    if launch.kernel not in ("sign_family", "adamw"):
        raise ValueError(f"valley_update_ applies sign_family or adamw launches, not {launch.kernel!r}")
    params, args = launch.tensors["params"], launch.args
    n_rows = theta.shape[0]
    if len(params) != 1 or params[0] is not theta or args["members"] != n_rows or theta.stride(0) != 1:
        raise ValueError("valley_update_ needs the optimizer's per-row launch over theta alone")
    adamw = launch.kernel == "adamw"
    if not adamw and not launch.flags["MEMBER"]:
        raise ValueError("valley_update_ needs per-row (1-D) lr and weight_decay tensors")
    for other in launches[1:]:
        _check_same_launch(launch, other)
    m = launch.tensors["exp_avgs"][0]
    s = launch.tensors["exp_avg_sqs" if adamw else "param_avgs"]
    s = s[0] if s is not None else m  # (Signum: unused)
    if adamw:
        bc2 = m  # (unused: the kernel forms AdamW's bias corrections from the device step count)
    else:
        bc2 = torch.tensor([x.args["bc2"] for x in launches], dtype=torch.float32).to(theta.device)
    valley, grid, meta = _valley_args("valley_update_", theta, [m, s], sharpness, sigma, keys, axis,
                                      min_loss, max_u, c, step, loss_out, u_out, FUSED_TILE)  # fmt: skip
    _valley_update_kernel[grid](
        theta,
        *valley,
        m,
        s,
        args["lr_t"],
        args["wd_t"],
        launch.tensors["state_steps"][0] if adamw else m,  # (sign family: unused)
        bc2,
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
        K=len(launches),
        num_warps=FUSED_NUM_WARPS,
    )


#: Launch arguments that change from step to step (the sign family's bias correction of the
#: parameter average, and the decay coefficient formed from it for scalar hyperparameters).
PER_STEP_ARGS = ("bc2", "eta_wd_hat")


def _check_same_launch(first: Launch, other: Launch) -> None:
    """``other`` is ``first`` at a later step: same kernel, flags, tensors, and arguments apart
    from :data:`PER_STEP_ARGS` (so one kernel may apply both)."""
    same = other.kernel == first.kernel and other.flags == first.flags
    same = same and other.tensors.keys() == first.tensors.keys()
    for role, tensors in first.tensors.items():
        theirs = other.tensors[role]
        if tensors is None or theirs is None:
            same = same and tensors is theirs
        else:
            same = same and len(tensors) == len(theirs) and all(a is b for a, b in zip(tensors, theirs))
    for key, value in first.args.items():
        if key in PER_STEP_ARGS:
            continue
        theirs = other.args.get(key)
        same = same and (value is theirs if isinstance(value, Tensor) else value == theirs)
    if not same:
        raise ValueError(
            "valley_update_ applies launches that differ only in "
            f"{', '.join(PER_STEP_ARGS)} (a schedule or a changed param group needs one launch a step)"
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
    tile: int,
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
    block_r = max(MIN_BLOCK_R, min(1024, tile // (2 * block_p)))
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
    fast = FAST_SINCOS and os.environ.get("TRITON_INTERPRET", "0") != "1"
    meta = dict(N=dim, PAIRS=pairs, BLOCK_P=block_p, BLOCK_R=block_r, RECORD=record, FAST_SINCOS=fast)
    return args, (triton.cdiv(n_rows, block_r),), meta


__all__ = [
    "FAST_SINCOS",
    "FUSED_NUM_WARPS",
    "FUSED_TILE",
    "MIN_BLOCK_R",
    "NUM_WARPS",
    "PER_STEP_ARGS",
    "TILE",
    "valley_step_",
    "valley_update_",
]
