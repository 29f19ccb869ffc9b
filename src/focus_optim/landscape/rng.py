"""A counter-based random number generator made of plain tensor ops.

Every random number of the toy lab is a pure function of ``(cell seed, row of the cell, step,
component)``: nothing depends on how rows are batched, chunked, sharded or ordered, and the same
code runs eagerly, inside ``torch.compile`` (fused into the update kernel) and on any device.

* :func:`mix32` is Chris Wellons' ``lowbias32`` integer hash, a bijection of 32-bit words, written
  for ``int32`` tensors (multiplication wraps modulo 2^32; right shifts are made logical by masking).
* :func:`row_keys` gives each row of a cell a distinct 32-bit key (a bijection of the row index
  for a fixed seed, so the rows of one cell never share a stream).
* :func:`normals` turns ``(key, counter)`` into standard normals by Box–Muller on two 24-bit
  uniforms, each from its own hash of the key and the counter. Counter ``t * P + j`` (``P`` pairs
  per step) is used at step ``t``; step 0 is the initial position.

This is a statistical generator for simulations, not a cryptographic one; ``tests/landscape``
checks its moments, independence across rows/steps/components and that the tensor code equals
the pure-Python reference bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
_M1 = 0x7FEB352D
_M2 = 0x846CA68B
SALT_U1 = 0x68E31DA4
SALT_U2 = 0xB5297A4D
SALT_SEED = 0x1B56C4E9
_TWO_PI = 2.0 * math.pi
_INV_2_24 = 1.0 / (1 << 24)


def to_i32(v: int) -> int:
    """A 32-bit word as the ``int32`` value with the same bits."""
    v &= MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


def mix32_py(x: int) -> int:
    """``lowbias32`` on Python ints (the reference for :func:`mix32`)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * _M1) & MASK32
    x ^= x >> 15
    x = (x * _M2) & MASK32
    x ^= x >> 16
    return x


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int32 words."""
    return (x >> k) & ((1 << (32 - k)) - 1)


def mix32(x: Tensor) -> Tensor:
    """``lowbias32`` on an ``int32`` tensor (bit patterns as in :func:`mix32_py`)."""
    x = x ^ _shr(x, 16)
    x = x * to_i32(_M1)
    x = x ^ _shr(x, 15)
    x = x * to_i32(_M2)
    return x ^ _shr(x, 16)


def seed_words(seed: int) -> tuple[int, int]:
    """Two hashed 32-bit words (as int32 values) from a non-negative seed of up to 64 bits."""
    lo, hi = seed & MASK32, (seed >> 32) & MASK32
    return to_i32(mix32_py(hi ^ SALT_SEED)), to_i32(mix32_py(lo ^ mix32_py(hi)))


def row_keys(seed: int, n: int, device: torch.device | str = "cpu", start: int = 0) -> Tensor:
    """Keys of rows ``start .. start+n-1`` of a cell with this seed (``int32 [n]``), all distinct."""
    if start < 0 or start + n > 1 << 32:
        raise ValueError(f"Invalid rows: {start}..{start + n} (allowed: within 0..2^32)")
    w1, w2 = seed_words(seed)
    rows = torch.arange(start, start + n, dtype=torch.int64, device=device)
    rows = torch.where(rows >= 1 << 31, rows - (1 << 32), rows).to(torch.int32)
    return mix32(mix32(rows + w1) ^ w2)


def uniforms24(h: Tensor) -> Tensor:
    """float32 uniforms in [0, 1) with 24 random bits from int32 hashes."""
    return _shr(h, 8).to(torch.float32) * _INV_2_24


def normals(keys: Tensor, counters: Tensor) -> Tensor:
    """Standard normals for every counter and key: ``[..., 2 * P, R]`` from int32 ``keys [R]`` and
    ``counters [..., P, 1]`` (the cosine and the sine of one Box–Muller pair per counter and key;
    coordinate-major, so that each output row is contiguous across keys)."""
    h1 = mix32(keys ^ mix32(counters ^ to_i32(SALT_U1)))
    h2 = mix32(keys ^ mix32(counters ^ to_i32(SALT_U2)))
    r = torch.sqrt(-2.0 * torch.log1p(-uniforms24(h1)))  # 1 - u1 in (0, 1]
    phi = uniforms24(h2) * _TWO_PI
    return torch.cat((r * torch.cos(phi), r * torch.sin(phi)), dim=-2)


def normals_py(key: int, counter: int) -> tuple[float, float]:
    """One pair of :func:`normals` in pure Python (float64 arithmetic, same bits in the hashes)."""
    h1 = mix32_py(key ^ mix32_py(counter ^ SALT_U1))
    h2 = mix32_py(key ^ mix32_py(counter ^ SALT_U2))
    u1, u2 = (h1 >> 8) * _INV_2_24, (h2 >> 8) * _INV_2_24
    r = math.sqrt(-2.0 * math.log1p(-u1))
    return r * math.cos(_TWO_PI * u2), r * math.sin(_TWO_PI * u2)


def step_normals(keys: Tensor, step: Tensor | int, dim: int, count: int | None = None) -> Tensor:
    """The standard normals of step ``step`` (0 = initial position): ``[R, dim]``; or, with
    ``count``, of steps ``step .. step+count-1``: ``[count, R, dim]``.

    Step ``t`` uses counters ``t * P + j`` for its ``P = ceil(dim / 2)`` Box–Muller pairs; normal ``i``
    of the step is the cosine of pair ``i`` for ``i < P`` and the sine of pair ``i - P`` otherwise.
    ``step`` may be an int32 0-d tensor (inside compiled code).
    """
    pairs = (dim + 1) // 2
    j = torch.arange(pairs, dtype=torch.int32, device=keys.device).view(pairs, 1)
    if count is None:
        z = normals(keys, j + step * pairs)
    else:
        s = torch.arange(count, dtype=torch.int32, device=keys.device).view(count, 1, 1)
        z = normals(keys, (s + step) * pairs + j)
    z = z.transpose(-1, -2)  # [..., R, 2P], column-major like the simulator's parameters
    return z if dim == 2 * pairs else z[..., :dim]


__all__ = [
    "mix32",
    "mix32_py",
    "normals",
    "normals_py",
    "row_keys",
    "seed_words",
    "step_normals",
    "to_i32",
    "uniforms24",
]
