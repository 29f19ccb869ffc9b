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
  member and feature, statistics over the batch; fused forward and backward), except where the
  input needs no gradient (the raw pixels) and the batch is large: there it is folded into the
  linear layer's GEMM (:meth:`Block._folded`), which saves BN's passes and the input-gradient GEMM,
* the test pass (:meth:`EnsembleMLP.evaluate`) folds each eval-mode BN and the bias into the
  next layer's weights (a ones row carries the bias through the GEMM) and runs the first layer,
  which all members apply to the same images, as one GEMM ``(E*136, 792) @ (792, N)`` (dimensions
  padded to multiples of 8 with exact zeros, for the tensor cores).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS: tuple[int, ...] = (784, 128, 128, 128, 128, 128, 10)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
PRECISIONS = ("fp32", "tf32", "bf16")
#: BN is folded into the next GEMM (:meth:`Block._folded`) for batches above this many times the
#: layer's outputs: the fold adds a few passes over the weights (``E x out x in``) and saves a few
#: over the activations (``E x in x batch``) plus the input-gradient GEMM, which is even at about
#: twice ``out`` (``benchmarks/mnist_step_costs.py --unfolded``: 0.64 ms either way at batch 256).
FOLD_MIN_BATCH_PER_OUTPUT = 2


class EnsembleBatchNorm(nn.Module):
    """``BatchNorm1d(features)`` for E members: parameters and running stats of shape ``(E, features)``."""

    # Buffers (registered in __init__), declared for type checkers.
    running_mean: Tensor
    running_var: Tensor

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
        if not h.requires_grad and h.shape[2] > FOLD_MIN_BATCH_PER_OUTPUT * self.linear.out_features:
            return self._folded(h, update_stats)
        return self.linear(self.norm(h, update_stats=update_stats))

    def _folded(self, x: Tensor, update_stats: bool) -> Tensor:
        r"""BN then linear for an input that needs no gradient (the raw pixels), as one GEMM:

        .. math::
            W\,\mathrm{BN}(x) + c = (W \operatorname{diag}(s))\,(x - \mu) + (c + W \beta), \quad
            s = \gamma / \sqrt{\sigma^2 + \epsilon}

        with the batch's mean and biased variance (the running ones in eval mode), the running
        statistics updated as ``F.batch_norm`` does. As ``x`` needs no gradient, neither does the
        centred input: the backward pass is the weight gradient's GEMM alone (``dL/ds`` follows from
        it and ``W``), where BN's output, its backward pass and the input-gradient GEMM would cost
        about a third of a big batch's step. Centring first (rather than folding ``-s \mu`` into
        the bias too) keeps the rounding that of BN: the uncentred sums cancel where ``|\mu| \gg
        \sigma``. The statistics come from ``torch.var_mean``, which like BN's kernels gives a pixel
        that is constant over the batch its exact value as mean: its centred input, and so its BN
        scale's gradient, are exactly zero (a sign optimizer leaves that scale alone, as it does
        with ``F.batch_norm``). ``x`` may be any strided view, such as the transpose of gathered
        rows."""
        norm = self.norm
        if not norm.training:
            return self._folded_gemm(x - norm.running_mean.unsqueeze(-1), norm.running_var)
        n = x.shape[2]
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got batch {n}")
        var, mean = torch.var_mean(x, dim=2, correction=0)
        centred = x - mean.unsqueeze(-1)
        if update_stats:
            with torch.no_grad():
                norm.running_mean.mul_(1 - BN_MOMENTUM).add_(mean, alpha=BN_MOMENTUM)
                norm.running_var.mul_(1 - BN_MOMENTUM).add_(var, alpha=BN_MOMENTUM * n / (n - 1))
        return self._folded_gemm(centred, var)

    def _folded_gemm(self, centred: Tensor, var: Tensor) -> Tensor:
        norm, weight = self.norm, self.linear.weight
        scaled = weight * (norm.weight * torch.rsqrt(var + BN_EPS)).unsqueeze(1)
        bias = torch.baddbmm(self.linear.bias.unsqueeze(-1), weight, norm.bias.unsqueeze(-1))
        return torch.baddbmm(bias, scaled, centred)


class EnsembleMLP(nn.Module):
    """E independent copies of the paper's MLP, trained together.

    Parameter names: ``blocks.{0..4}.{norm,linear}.{weight,bias}`` for the hidden layers
    (``blocks.0.linear`` is the input layer) and ``head.{norm,linear}.*`` for the output layer
    (the optimizer registry recognises ``head`` as an output layer).
    """

    INPUT_LAYER = "blocks.0.linear.weight"

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
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """A fresh model in place: BN at identity with fresh running statistics, linear layers
        redrawn layer by layer (what the constructor does, drawing the same numbers)."""
        for block in self.all_blocks():
            norm = block.norm
            norm.weight.fill_(1.0)
            norm.bias.zero_()
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0)
            block.linear.reset_parameters(generator)

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
        return self.forward_features(x.transpose(1, 2)).transpose(1, 2)

    # --- the fast test pass -----------------------------------------------------------------
    @torch.no_grad()
    def eval_weights(self, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """Every eval-mode BN folded into the following linear layer, bias included, ones-row form.

        Layer ``l`` (``in -> out``) becomes ``A_l`` of shape ``(E, pad(out+1), pad(in+1))`` (the
        head: ``(E, out, pad(in+1))``) with ``A = [[W diag(s), c + W t, 0], [0, 1, 0], [0, 0, 0]]``,
        where ``s, t`` are the BN's eval-mode scale and shift and :func:`padded` rounds up to a
        multiple of 8. For an input with a row of ones after its features (then zero rows),
        ``A @ [x; 1; 0]`` is ``[W BN(x) + c; 1; 0]``: the bias rides in the GEMM and the ones row
        survives the ReLU, so each layer of the test pass is one GEMM and one in-place ReLU. The
        zero padding keeps every GEMM dimension a multiple of 8 (odd sizes such as 129 keep
        cuBLAS off its fastest tensor-core kernels) and adds only exact zeros. Buffers are reused.
        """
        blocks = list(self.all_blocks())
        key = (dtype, self.head.linear.weight.device)
        cache = self.__dict__.setdefault("_eval_cache", {})
        if key not in cache:
            bufs = []
            for k, b in enumerate(blocks):
                hidden = k < len(blocks) - 1
                rows = padded(b.linear.out_features + 1) if hidden else b.linear.out_features
                cols = padded(b.linear.in_features + 1)
                a = torch.zeros(self.members, rows, cols, dtype=dtype, device=key[1])
                if hidden:
                    a[:, b.linear.out_features, b.linear.in_features] = 1.0
                bufs.append(a)
            cache[key] = bufs
        bufs = cache[key]
        for b, a, (w, c) in zip(blocks, bufs, self.folded_layers()):
            a[:, : b.linear.out_features, : b.linear.in_features] = w  # (not out=: torch.compile traces this)
            a[:, : b.linear.out_features, b.linear.in_features] = c
        return bufs

    @torch.no_grad()
    def folded_layers(self) -> list[tuple[Tensor, Tensor]]:
        """Every eval-mode BN folded into the following linear layer: per layer ``(W diag(s),
        c + W t)``, shapes ``(E, out, in)`` and ``(E, out)``, where ``s, t`` are the BN's eval-mode
        scale and shift (``BN(x) = s x + t``) and ``W, c`` the layer's weight and bias."""
        blocks = list(self.all_blocks())
        inv = torch._foreach_add([b.norm.running_var for b in blocks], BN_EPS)
        torch._foreach_rsqrt_(inv)
        scale = torch._foreach_mul(inv, [b.norm.weight for b in blocks])
        shift = torch._foreach_mul(scale, [b.norm.running_mean for b in blocks])
        shift = torch._foreach_sub([b.norm.bias for b in blocks], shift)
        out = []
        for b, s, t in zip(blocks, scale, shift):
            w = b.linear.weight
            out.append(
                (
                    w * s.unsqueeze(1),
                    torch.baddbmm(b.linear.bias.unsqueeze(-1), w, t.unsqueeze(-1)).squeeze(-1),
                )
            )
        return out

    @staticmethod
    def augment_inputs(x_t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Feature-major inputs ``(in, N)`` with a row of ones appended, then zero rows up to
        :func:`padded` ``(in + 1)``: ``(pad(in+1), N)`` in ``dtype``."""
        out = torch.zeros(padded(x_t.shape[0] + 1), x_t.shape[1], dtype=dtype, device=x_t.device)
        out[: x_t.shape[0]] = x_t
        out[x_t.shape[0]] = 1.0
        return out

    @torch.no_grad()
    def evaluate(
        self,
        x_t: Tensor,
        labels: Tensor,
        *,
        precision: str = "fp32",
        chunk: int | None = None,
        fused: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Eval-mode cross-entropy (mean) and accuracy of every member on one shared test set.

        The first layer, which every member applies to the same images, is one GEMM
        ``(E*136, 792) @ (792, N)``; the others are batched GEMMs (:meth:`eval_weights`).

        Args:
            x_t: test images, feature-major: ``(784, N)``, or ``(792, N)`` from
                :meth:`augment_inputs` in the compute dtype (no copy per call).
            labels: ``(N,)`` int64.
            precision: ``"fp32"``; ``"tf32"`` (TF32 matmuls on CUDA, fp32 elsewhere);
                ``"bf16"`` (bfloat16 inputs, weights and activations with fp32 accumulation
                inside the GEMMs; loss and accuracy from fp32 logits).
            chunk: images per pass (default all at once); the result does not depend on it
                beyond rounding, since eval-mode BN does not look at the batch.
            fused: the whole pass as one Triton kernel (:mod:`.triton_eval`; ``precision="bf16"``,
                on CUDA or under ``TRITON_INTERPRET=1``), activations on chip, biases and logits
                in float32.

        Returns:
            ``(loss, accuracy)``, each ``(E,)`` float32.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"Invalid precision: {precision!r} (allowed: {', '.join(PRECISIONS)})")
        if fused:
            from .triton_eval import mlp_eval, supported

            if precision != "bf16" or not supported(self.widths):
                raise ValueError(
                    f"fused test pass: precision must be 'bf16' (got {precision!r}) and the hidden widths "
                    f"equal powers of two from 16 to 128, classes <= 128 (got {self.widths})"
                )
            return mlp_eval(self.folded_layers(), x_t, labels)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if x_t.shape[0] == self.widths[0] or x_t.dtype != dtype:
            x_t = self.augment_inputs(x_t[: self.widths[0]], dtype)
        E, N = self.members, x_t.shape[1]
        first, *hidden, head = self.eval_weights(dtype)
        first = first.view(-1, first.shape[-1])
        loss_sum = torch.zeros(E, device=x_t.device)
        correct = torch.zeros(E, device=x_t.device)
        step = chunk or N
        with _matmul_precision(precision, x_t.device):
            for start in range(0, N, step):
                xs, ys = x_t[:, start : start + step], labels[start : start + step]
                h = torch.mm(first, xs).relu_().view(E, -1, xs.shape[1])
                for a in hidden:
                    h = torch.bmm(a, h).relu_()
                logits = torch.bmm(head, h).float()
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
                    # reference_mlp's BN layers track running statistics (a None would raise a
                    # TypeError in this assignment, as it did before the cast)
                    block.norm.running_mean[e] = cast(Tensor, bn.running_mean)
                    block.norm.running_var[e] = cast(Tensor, bn.running_var)
                    block.linear.weight[e] = lin.weight
                    block.linear.bias[e] = lin.bias
        return ens

    @torch.no_grad()
    def member(self, e: int) -> nn.Sequential:
        """Member ``e`` as an independent :func:`reference_mlp` (parameters and running stats copied)."""
        like = self.head.linear.weight
        m = reference_mlp(self.widths).to(device=like.device, dtype=like.dtype)
        for block, (bn, lin) in zip(self.all_blocks(), _bn_linear_pairs(m)):
            # reference_mlp's BatchNorm1d layers track running statistics
            assert bn.running_mean is not None and bn.running_var is not None
            bn.weight.copy_(block.norm.weight[e])
            bn.bias.copy_(block.norm.bias[e])
            bn.running_mean.copy_(block.norm.running_mean[e])
            bn.running_var.copy_(block.norm.running_var[e])
            lin.weight.copy_(block.linear.weight[e])
            lin.bias.copy_(block.linear.bias[e])
        return m


def padded(n: int, multiple: int = 8) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


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
    # reference_mlp alternates BatchNorm1d and Linear, so the even ones are BNs and the odd ones Linears
    return cast(list[tuple[nn.BatchNorm1d, nn.Linear]], list(zip(mods[0::2], mods[1::2])))


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
