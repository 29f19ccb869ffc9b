"""Cross-entropy of a linear head without materialising the full ``(N, V)`` logits.

``chunked_linear_cross_entropy(x, weight, targets, chunk_size)`` equals
``F.cross_entropy(x @ weight.T, targets)`` (mean over tokens) but walks over ``chunk_size`` rows
at a time: for each chunk it forms the logits, their log-sum-exp, the loss and, right away, the
gradients ``dL/dx = (softmax - onehot) @ W`` and ``dL/dW += (softmax - onehot)^T @ x``. Only one
chunk of logits exists at a time (``chunk_size * V`` floats instead of ``N * V``), and the
backward pass is a multiply of the stored gradients by the incoming scalar.

Under autocast the matmuls run in the autocast dtype (as ``nn.Linear`` would) and the softmax,
loss and gradient accumulation in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
        # The matmuls follow the ambient autocast (bf16 like nn.Linear); softmax and sums in >= fp32.
        acc = torch.promote_types(x.dtype, torch.float32)
        n = x.shape[0]
        loss = torch.zeros((), dtype=acc, device=x.device)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros_like(weight, dtype=acc)
        classes = torch.arange(weight.shape[0], device=x.device)
        for s in range(0, n, chunk_size):
            xs, ts = x[s : s + chunk_size], targets[s : s + chunk_size, None]
            logits = xs @ weight.t()
            lf = logits.to(acc)
            lse = torch.logsumexp(lf, dim=-1, keepdim=True)
            loss = loss + (lse - lf.gather(1, ts)).sum()
            # dloss/dlogits = softmax - onehot, one elementwise pass (fused under torch.compile)
            g = (torch.exp(lf - lse) - (classes == ts).to(acc)).to(logits.dtype)
            grad_x[s : s + chunk_size] = (g @ weight).to(x.dtype)
            grad_w += (g.t() @ xs).to(acc)
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        ctx.scale = 1.0 / n
        return loss / n

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad_x, grad_w = ctx.saved_tensors
        scale = grad_out * ctx.scale
        return grad_x * scale.to(grad_x.dtype), grad_w * scale.to(grad_w.dtype), None, None


def chunked_linear_cross_entropy(
    x: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 8192
) -> Tensor:
    """Mean cross-entropy of ``x @ weight.T`` against ``targets`` (``x``: (N, C), ``weight``: (V, C)).

    Targets must all be valid class indices (no ``ignore_index``).
    """
    if chunk_size < 1:
        raise ValueError(f"Invalid chunk_size: {chunk_size} (allowed: >= 1)")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(x, weight, targets, chunk_size)
    total = x.new_zeros((), dtype=torch.promote_types(x.dtype, torch.float32))
    for s in range(0, x.shape[0], chunk_size):  # evaluation: the loss only, chunk by chunk
        logits = (x[s : s + chunk_size] @ weight.t()).to(total.dtype)
        total = total + torch.nn.functional.cross_entropy(
            logits, targets[s : s + chunk_size], reduction="sum"
        )
    return total / x.shape[0]
