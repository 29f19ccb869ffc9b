"""The paper's MNIST MLP (appendix A.2) as one module holding E independent members.

Layer order (A.2: "batch normalization applied before each linear layer"; the authors'
``MNIST/scan-18.py`` in liuyz0/FOCUS@f5499f3 confirms it)::

    BN(784) -> Linear(784,128) -> ReLU -> [BN(128) -> Linear(128,128) -> ReLU] x 4
            -> BN(128) -> Linear(128,10)                      (logits; cross-entropy outside)

i.e. six BN layers, the first one normalising the raw pixels, and no activation after the last
linear layer. BN is PyTorch's ``BatchNorm1d`` (eps 1e-5, momentum 0.1, batch statistics in
training, running statistics at test time); linear layers have biases and PyTorch's default init.

Ensemble layout: every parameter has a leading member dim ``E`` (linear weights ``(E, out, in)``,
biases and BN parameters ``(E, features)``); member ``e`` is exactly the model whose parameters are
slice ``e``. Activations are kept feature-major, ``(E, features, batch)``, so that

* a linear layer is one ``torch.baddbmm`` over members,
* batch norm is one native ``batch_norm`` call on the view ``(1, E*features, batch)`` (per
  member and feature, statistics over the batch; fused forward and backward),
* the test pass (:meth:`EnsembleMLP.evaluate`) folds each eval-mode BN into the next linear layer
  and runs the first layer, which all members apply to the same images, as one GEMM
  ``(E*128, 784) @ (784, N)``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS: tuple[int, ...] = (784, 128, 128, 128, 128, 128, 10)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
PRECISIONS = ("fp32", "tf32", "bf16")


class EnsembleBatchNorm(nn.Module):
    """``BatchNorm1d(features)`` for E members: parameters and running stats of shape ``(E, features)``."""

    def __init__(self, members: int, features: int, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.members, self.features = members, features
        self.weight = nn.Parameter(torch.ones(members, features, device=device))
        self.bias = nn.Parameter(torch.zeros(members, features, device=device))
        self.register_buffer("running_mean", torch.zeros(members, features, device=device))
        self.register_buffer("running_var", torch.ones(members, features, device=device))

    def forward(self, h: Tensor, *, update_stats: bool = True) -> Tensor:
        """``h``: ``(E, features, batch)``. In training, batch statistics (running stats updated
        unless ``update_stats=False``); in eval mode, the running statistics."""
        E, C, B = h.shape
        track = update_stats or not self.training
        out = F.batch_norm(
            h.reshape(1, E * C, B),
            self.running_mean.view(-1) if track else None,
            self.running_var.view(-1) if track else None,
            self.weight.view(-1),
            self.bias.view(-1),
            self.training,
            BN_MOMENTUM,
            BN_EPS,
        )
        return out.view(E, C, B)

    @torch.no_grad()
    def affine(self) -> tuple[Tensor, Tensor]:
        """Eval-mode BN as ``x * scale + shift``, each ``(E, features)``."""
        scale = self.weight * torch.rsqrt(self.running_var + BN_EPS)
        return scale, self.bias - self.running_mean * scale


class EnsembleLinear(nn.Module):
    """``Linear(in, out)`` for E members: weight ``(E, out, in)``, bias ``(E, out)``."""

    def __init__(
        self, members: int, in_features: int, out_features: int, *, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.empty(members, out_features, device=device))

    def forward(self, h: Tensor) -> Tensor:
        """``h``: ``(E, in, batch)`` -> ``(E, out, batch)``."""
        return torch.baddbmm(self.bias.unsqueeze(-1), self.weight, h)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's ``nn.Linear`` default, drawn independently for each member:
        weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a=sqrt(5))."""
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight.uniform_(-bound, bound, generator=generator)
        self.bias.uniform_(-bound, bound, generator=generator)


class Block(nn.Module):
    """BN then linear (the ReLU is applied by the model, after every block but the head)."""

    def __init__(self, members: int, fan_in: int, fan_out: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.norm = EnsembleBatchNorm(members, fan_in, device=device)
        self.linear = EnsembleLinear(members, fan_in, fan_out, device=device)

    def forward(self, h: Tensor, *, update_stats: bool = True) -> Tensor:
        return self.linear(self.norm(h, update_stats=update_stats))


class EnsembleMLP(nn.Module):
    """E independent copies of the paper's MLP, trained together.

    Parameter names: ``blocks.{0..4}.{norm,linear}.{weight,bias}`` for the hidden layers
    (``blocks.0.linear`` is the input layer) and ``head.{norm,linear}.*`` for the output layer
    (the optimizer registry recognises ``head`` as an output layer).
    """

    def __init__(
        self,
        members: int,
        widths: Sequence[int] = WIDTHS,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if members < 1 or len(widths) < 2:
            raise ValueError(f"Invalid ensemble: members={members}, widths={tuple(widths)}")
        self.members, self.widths = members, tuple(widths)
        pairs = list(itertools.pairwise(widths))
        self.blocks = nn.ModuleList(Block(members, i, o, device=device) for i, o in pairs[:-1])
        self.head = Block(members, *pairs[-1], device=device)
        for block in self.all_blocks():
            block.linear.reset_parameters(generator)

    INPUT_LAYER = "blocks.0.linear.weight"

    def all_blocks(self) -> Iterator[Block]:
        yield from self.blocks  # type: ignore[misc]
        yield self.head

    # --- training-mode forward --------------------------------------------------------------
    def forward_features(self, h: Tensor, *, update_stats: bool = True) -> Tensor:
        """Feature-major forward: ``(E, in, batch)`` -> logits ``(E, classes, batch)``."""
        for block in self.blocks:
            h = torch.relu(block(h, update_stats=update_stats))
        return self.head(h, update_stats=update_stats)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(E, batch, 784)`` -> logits ``(E, batch, 10)``."""
        return self.forward_features(x.transpose(1, 2).contiguous()).transpose(1, 2)

    # --- the fast test pass -----------------------------------------------------------------
    @torch.no_grad()
    def folded(self) -> list[tuple[Tensor, Tensor]]:
        """Each eval-mode BN folded into the following linear layer: ``[(W', c')]`` with
        ``W' = W diag(scale)``, ``c' = c + W shift`` (so ``W'x + c' = W(BN(x)) + c``)."""
        out = []
        for block in self.all_blocks():
            scale, shift = block.norm.affine()
            w = block.linear.weight
            bias = torch.baddbmm(block.linear.bias.unsqueeze(-1), w, shift.unsqueeze(-1))
            out.append((w * scale.unsqueeze(1), bias))
        return out

    @torch.no_grad()
    def evaluate(
        self, x_t: Tensor, labels: Tensor, *, precision: str = "fp32", chunk: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Eval-mode cross-entropy (mean) and accuracy of every member on one shared test set.

        Args:
            x_t: test images, feature-major ``(784, N)``, already in the compute dtype
                (bfloat16 for ``precision="bf16"``, else float32).
            labels: ``(N,)`` int64.
            precision: ``"fp32"``; ``"tf32"`` (TF32 matmuls on CUDA, fp32 elsewhere);
                ``"bf16"`` (bfloat16 inputs and weights, fp32 accumulation, fp32 loss).
            chunk: images per pass (default all at once); the result does not depend on it
                beyond rounding, since eval-mode BN does not look at the batch.

        Returns:
            ``(loss, accuracy)``, each ``(E,)`` float32.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"Invalid precision: {precision!r} (allowed: {', '.join(PRECISIONS)})")
        E, N = self.members, x_t.shape[1]
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        layers = [(w.to(dtype), c.to(dtype)) for w, c in self.folded()]
        w0, c0 = layers[0]
        w0 = w0.reshape(-1, w0.shape[-1])
        c0 = c0.reshape(-1, 1)
        loss_sum = torch.zeros(E, device=x_t.device)
        correct = torch.zeros(E, device=x_t.device)
        step = chunk or N
        with _matmul_precision(precision, x_t.device):
            for start in range(0, N, step):
                xs, ys = x_t[:, start : start + step], labels[start : start + step]
                h = torch.addmm(c0, w0, xs).relu_().view(E, -1, xs.shape[1])
                for i, (w, c) in enumerate(layers[1:], start=1):
                    h = torch.baddbmm(c, w, h)
                    if i < len(layers) - 1:
                        h = h.relu_()
                logits = h.float()
                target = ys.expand(E, -1)
                loss_sum += F.cross_entropy(logits, target, reduction="none").sum(1)
                correct += (logits.argmax(1) == target).sum(1)
        return loss_sum / N, correct / N

    # --- conversion to/from independent models (tests, benchmarks) ---------------------------
    @classmethod
    def from_sequential(cls, models: Sequence[nn.Sequential]) -> EnsembleMLP:
        """Stack models built by :func:`reference_mlp` (same widths) into one ensemble."""
        widths = _widths(models[0])
        ens = cls(len(models), widths, device=next(models[0].parameters()).device)
        with torch.no_grad():
            for e, m in enumerate(models):
                for block, (bn, lin) in zip(ens.all_blocks(), _bn_linear_pairs(m)):
                    block.norm.weight[e] = bn.weight
                    block.norm.bias[e] = bn.bias
                    block.norm.running_mean[e] = bn.running_mean
                    block.norm.running_var[e] = bn.running_var
                    block.linear.weight[e] = lin.weight
                    block.linear.bias[e] = lin.bias
        return ens

    @torch.no_grad()
    def member(self, e: int) -> nn.Sequential:
        """Member ``e`` as an independent :func:`reference_mlp` (parameters and running stats copied)."""
        like = self.head.linear.weight
        m = reference_mlp(self.widths).to(device=like.device, dtype=like.dtype)
        for block, (bn, lin) in zip(self.all_blocks(), _bn_linear_pairs(m)):
            bn.weight.copy_(block.norm.weight[e])
            bn.bias.copy_(block.norm.bias[e])
            bn.running_mean.copy_(block.norm.running_mean[e])
            bn.running_var.copy_(block.norm.running_var[e])
            lin.weight.copy_(block.linear.weight[e])
            lin.bias.copy_(block.linear.bias[e])
        return m


def reference_mlp(widths: Sequence[int] = WIDTHS) -> nn.Sequential:
    """One model of the paper, as a plain ``nn.Sequential`` (BN -> Linear -> ReLU ... BN -> Linear)."""
    layers: list[nn.Module] = []
    pairs = list(itertools.pairwise(widths))
    for k, (i, o) in enumerate(pairs):
        layers += [nn.BatchNorm1d(i, eps=BN_EPS, momentum=BN_MOMENTUM), nn.Linear(i, o)]
        if k < len(pairs) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _bn_linear_pairs(model: nn.Sequential) -> list[tuple[nn.BatchNorm1d, nn.Linear]]:
    mods = [m for m in model if isinstance(m, nn.BatchNorm1d | nn.Linear)]
    return list(zip(mods[0::2], mods[1::2]))


def _widths(model: nn.Sequential) -> tuple[int, ...]:
    pairs = _bn_linear_pairs(model)
    return (pairs[0][1].in_features, *(lin.out_features for _, lin in pairs))


@contextlib.contextmanager
def _matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """TF32 matmuls inside the block for ``precision="tf32"`` on CUDA; otherwise nothing changes."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)
