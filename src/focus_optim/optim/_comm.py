r"""Communication layer of 1-bit Adam: the error-compensated, two-stage 1-bit all-reduce.

Source: DeepSpeed ``deepspeed/runtime/comm/nccl.py`` (``NcclBackend.compressed_allreduce``),
restated in ``specs/optimizers.md`` §4.3. For one tensor of :math:`L` elements on :math:`n`
workers, zero-padded to :math:`L'` (a multiple of :math:`n\cdot\operatorname{lcm}(n, 8)`, so that
each of the :math:`n` chunks packs into whole bytes):

.. math::
    x_j &= m_j + \delta_j, \qquad s_j = \lVert x_j\rVert_2/\sqrt{L'}, \qquad
        \delta_j \leftarrow x_j - s_j\,\sigma(x_j)
        \quad\text{(worker } j\text{; } \sigma(x) = +1 \text{ for } x \ge 0 \text{, else } -1)\\
    y_i &= \tfrac1n \textstyle\sum_j s_j\,\sigma(x_j)[\text{chunk } i] + \bar\delta_i, \qquad
        \bar s_i = \lVert y_i\rVert_2/\sqrt{L'/n}, \qquad
        \bar\delta_i \leftarrow y_i - \bar s_i\,\sigma(y_i)
        \quad\text{(server } i \text{ owns chunk } i)\\
    \tilde m &= \operatorname{concat}_i\ \bar s_i\,\sigma(y_i)
        \quad\text{(un-padded; the same on every worker)}

Signs travel packed 8 per byte (most significant bit first, as ``numpy.packbits``; bit 1 means
+1, so zero maps to +1), scales as float32.

Wire format (bytes are those of the reference's four collectives, in two messages):

* phase 1: one ``all_to_all_single``: worker ``j`` sends to worker ``i`` the :math:`K` worker
  scales of this step's :math:`K` tensors (bit-cast to ``4K`` bytes; the reference all-gathers
  them separately, with the same byte count) followed by chunk ``i`` of every tensor's packed
  signs. Where the backend has no all-to-all (``phase1="all_gather"``) every worker all-gathers
  the whole message instead and keeps its part (``n`` times the phase-1 bytes);
* phase 2: one ``all_gather`` of each server's ``K`` scales and packed chunks.

Byte accounting (bytes *sent* by one rank; an all-to-all sends ``n-1`` of its ``n`` parts, an
all-gather sends the rank's part to ``n-1`` peers, a ring all-reduce of ``N`` bytes sends
:math:`2(n-1)/n\cdot N`):

.. math::
    \text{compressed} = 2(n-1)\Bigl(4K + \textstyle\sum_k L'_k/(8n)\Bigr),\qquad
    \text{fp32 all-reduce} = \tfrac{2(n-1)}{n}\,4\textstyle\sum_k L_k,

a ratio of about 1/32 for large tensors.

:func:`simulated_compressed_allreduce` runs the same arithmetic for ``n`` simulated workers on
one device, op for op, so its result is bit-identical to :func:`compressed_allreduce_` run by
``n`` processes on the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

Phase1 = Literal["auto", "all_to_all", "all_gather"]
PHASE1_MODES: tuple[str, ...] = ("auto", "all_to_all", "all_gather")
SCALE_BYTES = 4  # float32 scales


# --- sizes and byte accounting ------------------------------------------------------------------
def padded_numel(numel: int, world_size: int) -> int:
    """``numel`` rounded up to a multiple of ``n * lcm(n, 8)`` (DeepSpeed's ``corrected_tensor_size``)."""
    unit = world_size * math.lcm(world_size, 8)
    return -(-numel // unit) * unit


def ring_allreduce_bytes(numel: int, world_size: int, element_size: int = 4) -> int:
    """Bytes one rank sends in a ring all-reduce of ``numel`` elements: ``2(n-1)/n * size``."""
    return 2 * (world_size - 1) * numel * element_size // world_size


def compressed_allreduce_bytes(
    padded_numels: Sequence[int], world_size: int, phase1: str = "all_to_all"
) -> int:
    """Bytes one rank sends in one :func:`compressed_allreduce_` of tensors padded to ``padded_numels``."""
    n = world_size
    if n <= 1 or not padded_numels:
        return 0
    part = SCALE_BYTES * len(padded_numels) + sum(lp // (8 * n) for lp in padded_numels)
    phase1_bytes = (n - 1) * part if phase1 == "all_to_all" else (n - 1) * n * part
    return phase1_bytes + (n - 1) * part


# --- sign packing ---------------------------------------------------------------------------------
_SIGN_TABLES: dict[torch.device, Tensor] = {}


def _sign_table(device: torch.device) -> Tensor:
    """``(256, 8)`` float32: row ``b`` holds the ±1 signs that byte ``b`` encodes, MSB first."""
    table = _SIGN_TABLES.get(device)
    if table is None:
        shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)
        bits = (torch.arange(256, dtype=torch.uint8, device=device).unsqueeze(-1) >> shifts) & 1
        table = _SIGN_TABLES[device] = bits.float().add_(-0.5).mul_(2.0)
    return table


def pack_signs(x: Tensor) -> Tensor:
    """Signs of ``x`` (numel a multiple of 8) as uint8, 8 per byte, MSB first; bit 1 = ``x >= 0``."""
    return pack_bits(x >= 0)


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor (numel a multiple of 8) packed 8 per byte, most significant bit first."""
    bits = mask.reshape(-1, 8).view(torch.uint8)
    out = bits[:, 0] << 7
    for k in range(1, 8):  # 7 strided passes over numel/8 bytes: cheaper than a reduction over dim 1
        out.bitwise_or_(bits[:, k] << (7 - k))
    return out


def unpack_signs(packed: Tensor) -> Tensor:
    """Inverse of :func:`pack_signs` along the last dim: ``(..., B)`` uint8 -> ``(..., 8B)`` float ±1."""
    signs = _sign_table(packed.device)[packed.reshape(-1).long()]
    return signs.reshape(*packed.shape[:-1], 8 * packed.shape[-1])


def _scaled_signs(mask: Tensor, scale: Tensor) -> Tensor:
    """``s σ``: ``+s`` where ``mask`` (``x >= 0``, zero included), ``-s`` elsewhere; exact, as
    ``2s - s = s`` and ``0 - s = -s`` in floating point."""
    return mask.float().mul_(2 * scale).sub_(scale)


# --- the three arithmetic stages (shared by the real and the simulated all-reduce) --------------
def compress_worker_(m: Tensor, worker_error: Tensor, world_size: int) -> tuple[Tensor, Tensor]:
    """Worker side: ``x = m + δ`` (``m`` zero-padded to ``L'``), scale ``‖x‖/sqrt(L')``, ``δ ← x - s σ(x)``.

    Returns the packed signs as ``(n, L'/(8n))`` uint8 (row ``i`` = chunk ``i``) and the scale
    as a 1-element float32 tensor. ``worker_error`` (``L'`` float32) is updated in place.
    """
    x = worker_error.clone()
    x[: m.numel()].add_(m.reshape(-1))
    scale = torch.linalg.vector_norm(x) / math.sqrt(x.numel())
    mask = x >= 0
    torch.sub(x, _scaled_signs(mask, scale), out=worker_error)
    return pack_bits(mask).view(world_size, -1), scale.reshape(1)


def server_reduce_(bits: Tensor, scales: Tensor, server_error: Tensor) -> tuple[Tensor, Tensor]:
    """Server side for one chunk: ``y = (1/n) Σ_j s_j σ_j + δ̄``, ``s̄ = ‖y‖/sqrt(len)``, ``δ̄ ← y - s̄ σ(y)``.

    ``bits``: ``(n, C/8)`` packed signs received from the ``n`` workers; ``scales``: their ``n``
    scales. Returns the packed ``σ(y)`` (``C/8`` bytes) and ``s̄`` (1 element).
    """
    n = bits.shape[0]
    y = unpack_signs(bits).mul_(scales.reshape(n, 1).mul(1 / n)).sum(0)
    y.add_(server_error)
    scale = torch.linalg.vector_norm(y) / math.sqrt(y.numel())
    mask = y >= 0
    torch.sub(y, _scaled_signs(mask, scale), out=server_error)
    return pack_bits(mask), scale.reshape(1)


def decode(bits: Tensor, scales: Tensor) -> Tensor:
    """``concat_i s̄_i σ(y_i)``: ``(n, C/8)`` packed chunks and ``n`` scales -> ``(n*C,)`` float32."""
    n = bits.shape[0]
    return unpack_signs(bits).mul_(scales.reshape(n, 1)).reshape(-1)


# --- simulated workers ------------------------------------------------------------------------------
def simulated_compressed_allreduce(
    worker_inputs: Tensor | Sequence[Tensor], worker_error: Tensor, server_error: Tensor
) -> Tensor:
    """The n-worker compressed all-reduce of one tensor, on one device.

    Args:
        worker_inputs: ``n`` tensors of one shape (or a tensor with the workers along dim 0).
        worker_error: ``(n, L')`` float32, row ``j`` = worker ``j``'s δ (updated in place).
        server_error: ``(L',)`` float32, chunk ``i`` = server ``i``'s δ̄ (updated in place).

    Returns the compressed average with the inputs' shape (float32).
    """
    n = len(worker_inputs)
    shape = worker_inputs[0].shape
    lp = worker_error.shape[1]
    chunk = lp // n
    packed, wscales = [], []
    for j in range(n):
        bits, scale = compress_worker_(worker_inputs[j], worker_error[j], n)
        packed.append(bits)
        wscales.append(scale)
    worker_scales = torch.cat(wscales)
    server_bits, server_scales = [], []
    for i in range(n):
        recv = torch.stack([packed[j][i] for j in range(n)])
        bits, scale = server_reduce_(recv, worker_scales, server_error[i * chunk : (i + 1) * chunk])
        server_bits.append(bits)
        server_scales.append(scale)
    out = decode(torch.stack(server_bits), torch.cat(server_scales))
    return out[: shape.numel()].view(shape)


# --- real workers over torch.distributed ---------------------------------------------------------
_A2A_BROKEN: set[str] = set()  # backends whose all_to_all_single raised; they use the all-gather path


def resolve_phase1(phase1: str, group: dist.ProcessGroup | None, device: torch.device) -> str:
    """The phase-1 collective to use: ``"all_to_all"`` where the backend has it, else ``"all_gather"``."""
    if phase1 != "auto":
        return phase1
    backend = str(dist.get_backend(group))
    if backend in _A2A_BROKEN or (backend == "gloo" and device.type != "cpu"):
        return "all_gather"
    return "all_to_all"


def _phase1_exchange(
    send: Tensor, group: dist.ProcessGroup | None, mode: str, rank: int
) -> tuple[Tensor, str]:
    """``send``: ``(n, P)``, row ``i`` for worker ``i``. Returns ``(n, P)``, row ``j`` from worker ``j``."""
    n = send.shape[0]
    if mode == "all_to_all":
        recv = torch.empty_like(send)
        try:
            dist.all_to_all_single(recv, send, group=group)
            return recv, mode
        except (RuntimeError, NotImplementedError):  # a backend without all-to-all fails on every rank
            _A2A_BROKEN.add(str(dist.get_backend(group)))
    gathered = torch.empty((n, *send.shape), dtype=send.dtype, device=send.device)
    dist.all_gather(list(gathered.unbind(0)), send, group=group)
    return gathered[:, rank].contiguous(), "all_gather"


def compressed_allreduce_(
    tensors: Sequence[Tensor],
    worker_errors: Sequence[Tensor],
    server_errors: Sequence[Tensor],
    *,
    group: dist.ProcessGroup | None = None,
    phase1: str = "auto",
) -> tuple[int, str]:
    """Replace every tensor by its compressed average over the ranks of ``group``, in place.

    All tensors must live on one device; each keeps its own worker scale and server scale (one
    collective per phase carries all of them). ``worker_errors[k]`` has ``L'_k`` elements,
    ``server_errors[k]`` has ``L'_k / n``; both float32, updated in place.

    Returns ``(bytes sent by this rank, phase-1 collective used)``.
    """
    n = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if not tensors:
        return 0, "none"
    device = tensors[0].device
    mode = resolve_phase1(phase1, group, device)
    lps = [e.numel() for e in worker_errors]
    widths = [lp // (8 * n) for lp in lps]
    offsets = [0]
    for w in widths:
        offsets.append(offsets[-1] + w)
    k_scale_bytes = SCALE_BYTES * len(tensors)

    # phase 1: worker compression, all-to-all of (scales | chunk i of every tensor)
    send = torch.empty(n, k_scale_bytes + offsets[-1], dtype=torch.uint8, device=device)
    scales = torch.empty(len(tensors), dtype=torch.float32, device=device)
    for k, (t, err) in enumerate(zip(tensors, worker_errors)):
        bits, scales[k : k + 1] = compress_worker_(t, err, n)
        send[:, k_scale_bytes + offsets[k] : k_scale_bytes + offsets[k + 1]] = bits
    send[:, :k_scale_bytes] = scales.view(torch.uint8)
    recv, mode = _phase1_exchange(send, group, mode, rank)
    worker_scales = recv[:, :k_scale_bytes].contiguous().view(torch.float32)  # (n, K)

    # server compression of our chunk; phase 2: all-gather of (server scales | server chunks)
    send2 = torch.empty(k_scale_bytes + offsets[-1], dtype=torch.uint8, device=device)
    server_scales = torch.empty(len(tensors), dtype=torch.float32, device=device)
    for k, serr in enumerate(server_errors):
        lo, hi = k_scale_bytes + offsets[k], k_scale_bytes + offsets[k + 1]
        send2[lo:hi], server_scales[k : k + 1] = server_reduce_(recv[:, lo:hi], worker_scales[:, k], serr)
    send2[:k_scale_bytes] = server_scales.view(torch.uint8)
    gathered = torch.empty(n, send2.numel(), dtype=torch.uint8, device=device)
    dist.all_gather(list(gathered.unbind(0)), send2, group=group)
    all_server_scales = gathered[:, :k_scale_bytes].contiguous().view(torch.float32)  # (n, K)

    for k, t in enumerate(tensors):
        lo, hi = k_scale_bytes + offsets[k], k_scale_bytes + offsets[k + 1]
        out = decode(gathered[:, lo:hi], all_server_scales[:, k])
        t.copy_(out[: t.numel()].view_as(t))
    return compressed_allreduce_bytes(lps, n, mode), mode


def allreduce_mean_(tensors: Sequence[Tensor], group: dist.ProcessGroup | None = None) -> int:
    """Average tensors over ``group`` in place (sum, then ``* 1/n`` as DeepSpeed); one all-reduce
    per (device, dtype) bucket. Returns the bytes one rank sends (ring model)."""
    n = dist.get_world_size(group)
    if n <= 1 or not tensors:
        return 0
    buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        buckets.setdefault((t.device, t.dtype), []).append(t)
    sent = 0
    for (_device, dtype), ts in buckets.items():
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat, group=group)
        flat.mul_(1 / n)
        offset = 0
        for t in ts:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        sent += ring_allreduce_bytes(flat.numel(), n, torch.empty((), dtype=dtype).element_size())
    return sent


__all__ = [
    "PHASE1_MODES",
    "allreduce_mean_",
    "compress_worker_",
    "compressed_allreduce_",
    "compressed_allreduce_bytes",
    "decode",
    "pack_bits",
    "pack_signs",
    "padded_numel",
    "ring_allreduce_bytes",
    "server_reduce_",
    "simulated_compressed_allreduce",
    "unpack_signs",
]
