"""The ensemble's bf16 test pass as one Triton kernel (CUDA, or ``TRITON_INTERPRET=1``).

For member ``e`` and a block of ``BLOCK_N`` test images, one program runs the whole folded MLP
(:meth:`~.model.EnsembleMLP.folded_layers`: every eval-mode BN folded into the next linear layer)
with the activations on chip:

.. math::
    h_1 = \\mathrm{relu}(A_1 x + c_1), \\quad h_{l+1} = \\mathrm{relu}(A_{l+1} h_l + c_{l+1}), \\quad
    z = A_L h_{L-1} + c_L

then each image's cross-entropy :math:`\\log\\sum_k e^{z_k} - z_y` and whether :math:`\\arg\\max_k z_k
= y`, summed over the block into one partial sum per (member, block), which torch adds up (a fixed
order: the result does not depend on the launch). Weights, images and activations are bfloat16 and
every product accumulates in float32, as in the cuBLAS test pass of ``precision="bf16"``; biases and
logits stay float32 (there they are rounded to bf16 by the GEMMs). What it saves: the cuBLAS pass
writes and reads back every layer's ``(E, width, N)`` activations and applies each ReLU as a
separate pass, ~3.7 GB a step for the paper's 60 members and 10,000 images, where this kernel
reads the images and weights (~30 MB) and is bound by its matrix products.

Grid: members fastest, so the programs in flight share an image block (and it stays in L2).
Under the interpreter (whose ``tl.dot`` mishandles bf16 operands) the operands are widened to
float32 first: the same products, exact in float32, with float32 sums.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_N = 128  # images per program
BLOCK_K = 64  # input features per step of the first layer's product
NUM_WARPS = 8
NUM_STAGES = 3


@triton.jit
def _dot(a, b, acc, WIDEN: tl.constexpr):
    if WIDEN:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _relu_bias(acc, bias_ptr, rows):
    return tl.maximum(acc + tl.load(bias_ptr + rows)[:, None], 0.0).to(tl.bfloat16)


@triton.jit
def _mlp_eval_kernel(
    x_ptr, w_in_ptr, b_in_ptr, w_hid_ptr, b_hid_ptr, w_out_ptr, b_out_ptr, labels_ptr, loss_ptr, correct_ptr,
    N, C, E, BLOCKS,
    K: tl.constexpr, HIDDEN_LAYERS: tl.constexpr, H: tl.constexpr, CP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    """x ``(K, N)`` bf16 (feature-major images); ``w_in (E, H, K)``, ``w_hid (HIDDEN_LAYERS, E, H, H)``,
    ``w_out (E, C, H)`` bf16; biases float32 ``(E, H)``, ``(HIDDEN_LAYERS, E, H)``, ``(E, C)``;
    labels int64 ``(N,)``; outputs float32 ``(E, BLOCKS)``. ``K`` is a compile-time constant (the
    interpreter cannot loop over a range with a run-time bound under numpy 2.4)."""
    e = tl.program_id(0)
    blk = tl.program_id(1)
    n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = tl.arange(0, H)

    acc = tl.zeros((H, BLOCK_N), dtype=tl.float32)
    w_in = w_in_ptr + e.to(tl.int64) * H * K
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        w = tl.load(w_in + rows[:, None] * K + k[None, :], mask=k_ok[None, :], other=0.0)
        x = tl.load(
            x_ptr + k[:, None].to(tl.int64) * N + n[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0
        )
        acc = _dot(w, x, acc, WIDEN)
    h = _relu_bias(acc, b_in_ptr + e * H, rows)

    for layer in tl.static_range(HIDDEN_LAYERS):
        member = layer * E + e
        w = tl.load(w_hid_ptr + member.to(tl.int64) * H * H + rows[:, None] * H + rows[None, :])
        acc = _dot(w, h, tl.zeros((H, BLOCK_N), dtype=tl.float32), WIDEN)
        h = _relu_bias(acc, b_hid_ptr + member * H, rows)

    cls = tl.arange(0, CP)
    c_ok = cls < C
    w = tl.load(w_out_ptr + e * C * H + cls[:, None] * H + rows[None, :], mask=c_ok[:, None], other=0.0)
    z = _dot(w, h, tl.zeros((CP, BLOCK_N), dtype=tl.float32), WIDEN)
    z = z + tl.load(b_out_ptr + e * C + cls, mask=c_ok, other=0.0)[:, None]
    z = tl.where(c_ok[:, None], z, float("-inf"))
    top = tl.max(z, axis=0)
    lse = top + tl.log(tl.sum(tl.exp(z - top[None, :]), axis=0))
    label = tl.load(labels_ptr + n, mask=n_ok, other=0).to(tl.int32)
    target = tl.sum(tl.where(cls[:, None] == label[None, :], z, 0.0), axis=0)
    # the first class that attains the maximum, as torch.argmax
    pred = tl.min(tl.where(z == top[None, :], cls[:, None], CP), axis=0)
    loss = tl.where(n_ok, lse - target, 0.0)
    hit = tl.where(n_ok & (pred == label), 1.0, 0.0)
    tl.store(loss_ptr + e * BLOCKS + blk, tl.sum(loss, axis=0))
    tl.store(correct_ptr + e * BLOCKS + blk, tl.sum(hit, axis=0))


def supported(widths: tuple[int, ...]) -> bool:
    """Whether the kernel takes these layer widths: equal hidden widths, a power of two from 16 to
    128, at least one hidden-to-hidden layer, and at most 128 classes."""
    hidden = widths[1:-1]
    h = hidden[0] if hidden else 0
    return (
        len(hidden) >= 2
        and all(w == h for w in hidden)
        and 16 <= h <= 128
        and h & (h - 1) == 0
        and widths[-1] <= 128
    )


def kernel_inputs(layers: list[tuple[Tensor, Tensor]], x_t: Tensor, labels: Tensor) -> list[Tensor]:
    """The kernel's tensor arguments from :func:`mlp_eval`'s (its per-call host work)."""
    (w_in, b_in), *hidden, (w_out, b_out) = layers
    if x_t.shape[0] < w_in.shape[2]:
        raise ValueError(f"test images have {x_t.shape[0]} features, the input layer takes {w_in.shape[2]}")
    bf16 = torch.bfloat16
    return [
        x_t.to(bf16).contiguous(),
        w_in.to(bf16).contiguous(),
        b_in.float().contiguous(),
        torch.stack([w for w, _ in hidden]).to(bf16),
        torch.stack([b for _, b in hidden]).float(),
        w_out.to(bf16).contiguous(),
        b_out.float().contiguous(),
        labels.contiguous(),
    ]


def mlp_eval(layers: list[tuple[Tensor, Tensor]], x_t: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and accuracy ``(E,)`` float32 of every member on the test images.

    ``layers``: per layer ``(A (E, out, in), c (E, out))``, eval-mode BNs folded in (float32);
    ``x_t``: ``(in, N)`` test images, feature-major, or :meth:`~.model.EnsembleMLP.augment_inputs`'s
    ``(pad(in + 1), N)`` (rows past ``in`` are not read); ``labels``: ``(N,)``. On a device the
    kernel cannot run on (a CPU without ``TRITON_INTERPRET=1``) a ``ValueError`` says so."""
    from ..optim._kernels import use_triton

    if not use_triton(x_t.device):
        raise ValueError(
            f"fused test pass: the Triton kernel runs on a CUDA device, or under TRITON_INTERPRET=1 "
            f"(Triton's CPU interpreter), not on device {str(x_t.device)!r}"
        )
    tensors = kernel_inputs(layers, x_t, labels)
    E, H, K = layers[0][0].shape
    C, N = layers[-1][0].shape[1], x_t.shape[1]
    blocks = triton.cdiv(N, BLOCK_N)
    loss = torch.empty(E, blocks, dtype=torch.float32, device=x_t.device)
    correct = torch.empty_like(loss)
    _mlp_eval_kernel[(E, blocks)](
        *tensors, loss, correct, N, C, E, blocks,
        K=K, HIDDEN_LAYERS=len(layers) - 2, H=H, CP=max(16, triton.next_power_of_2(C)),
        BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, WIDEN=os.environ.get("TRITON_INTERPRET", "0") == "1",
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )  # fmt: skip
    return loss.sum(1) / N, correct.sum(1) / N
