"""Train one cell of the scan: E members (every lr x replicate) of one optimizer at one batch size.

Per step, as in the authors' loop (``MNIST/scan-18.py``): draw each member's next minibatch, record
its training loss (train-mode forward, before the update), update, then evaluate every member on
the whole test set in eval mode. Differences that are only about speed: the E members run as one
:class:`~.model.EnsembleMLP`; the test pass is the folded, batched one of
:meth:`~.model.EnsembleMLP.evaluate` (all 10,000 images at once; the paper's test batch of 8,192
gives the same numbers since eval-mode BN ignores the batch); ``eval_every`` can thin it.

Data order: like ``DataLoader(shuffle=True, drop_last=False)``, each member walks through its
own random permutation of the 60,000 training images, a fresh one every epoch, the last batch
of an epoch holding the remainder (60,000 mod batch size). All members share the epoch
structure, so one step's batches have one size; their contents are independent.

Optimizers are built by :func:`focus_optim.make_optimizer` on the ensemble with
``ensemble_dims=1`` and a 1-D ``lr`` tensor (one value per member); the registry's split leaves
biases and BN parameters undecayed. Optimizers that need more than ``backward(); step()`` are driven
through :mod:`focus_optim.optim.protocol` (Sophia: ``step(bs=batch size)`` and, when
``hessian_due``, a Hessian refresh on a fresh batch, drawn from a second shuffled stream so that
the training data order depends on the seed only, with labels sampled from the
model's own softmax).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..compiling import raise_recompile_limit
from ..optim import make_optimizer, protocol
from ..optim._common import BaseOptimizer
from .data import MNIST
from .model import PRECISIONS, EnsembleMLP, _matmul_precision
from .optimizers import OptimizerConfig

METRICS: tuple[str, ...] = ("train_loss", "test_loss", "test_acc")


@dataclass(frozen=True)
class TrainSettings:
    """Everything about a cell's training except the optimizer, batch size, lrs and seed."""

    steps: int = 400
    weight_decay: float = 1e-2
    eval_every: int = 1
    eval_precision: str = "fp32"
    train_precision: str = "fp32"
    eval_chunk: int = 0
    drop_last: bool = False
    matrix_input_layer: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"Invalid steps: {self.steps} (allowed: >= 1)")
        if self.eval_every < 1:
            raise ValueError(f"Invalid eval_every: {self.eval_every} (allowed: >= 1)")
        if self.eval_precision not in PRECISIONS:
            allowed = ", ".join(PRECISIONS)
            raise ValueError(f"Invalid eval_precision: {self.eval_precision!r} (allowed: {allowed})")
        if self.train_precision not in ("fp32", "tf32"):
            raise ValueError(f"Invalid train_precision: {self.train_precision!r} (allowed: fp32, tf32)")
        if self.eval_chunk < 0:
            raise ValueError(f"Invalid eval_chunk: {self.eval_chunk} (allowed: 0 for all at once, or >= 1)")

    def eval_steps(self) -> np.ndarray:
        """Boolean mask over steps: every ``eval_every``-th step and always the last one."""
        mask = (np.arange(1, self.steps + 1) % self.eval_every) == 0
        mask[-1] = True
        return mask


@dataclass
class DeviceData:
    """MNIST on one device: train images ``(N, 784)`` float in [0, 1], test images feature-major."""

    train_x: Tensor
    train_y: Tensor
    test_x_t: Tensor
    test_y: Tensor
    _test_aug: dict[torch.dtype, Tensor] = field(default_factory=dict)

    @classmethod
    def from_mnist(cls, data: MNIST, device: str | torch.device) -> DeviceData:
        def images(a: np.ndarray) -> Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a.reshape(len(a), -1))).to(device)
            return t.float().div_(255.0)  # torchvision's ToTensor

        def labels(a: np.ndarray) -> Tensor:
            return torch.from_numpy(a.astype(np.int64)).to(device)

        return cls(
            images(data.train_images),
            labels(data.train_labels),
            images(data.test_images).T.contiguous(),
            labels(data.test_labels),
        )

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(E, 784, b)`` (a feature-major view of the gathered rows) and labels ``(E, b)`` of
        the minibatches ``idx (E, b)``."""
        return self.train_x[idx].transpose(1, 2), self.train_y[idx]

    def test_images(self, precision: str) -> Tensor:
        """Test images for :meth:`~.model.EnsembleMLP.evaluate`: feature-major with a ones row,
        in the compute dtype of ``precision`` (made once, then reused)."""
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if dtype not in self._test_aug:
            self._test_aug[dtype] = EnsembleMLP.augment_inputs(self.test_x_t, dtype)
        return self._test_aug[dtype]


class DataOrder:
    """Independent shuffled epochs for E members (``DataLoader(shuffle=True)`` semantics)."""

    def __init__(
        self, members: int, n: int, batch_size: int, *, drop_last: bool, generator: torch.Generator
    ) -> None:
        if batch_size < 1 or batch_size > n:
            raise ValueError(f"Invalid batch_size: {batch_size} (allowed: 1 .. {n})")
        self.members, self.n, self.batch_size, self.generator = members, n, batch_size, generator
        self.per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
        if not drop_last and n % batch_size == 1:
            raise ValueError(
                f"batch_size {batch_size} leaves a last batch of 1 image per epoch, which batch norm cannot "
                "train on; use drop_last"
            )
        self._epoch = -1
        self._perm: Tensor | None = None

    def batch(self, step: int) -> Tensor:
        """Indices ``(E, b)`` of every member's minibatch at ``step`` (call with increasing steps)."""
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = self.generator
            keys = torch.rand(self.members, self.n, generator=gen, device=gen.device, dtype=torch.float64)
            self._perm, self._epoch = keys.argsort(dim=1), epoch
        assert self._perm is not None
        return self._perm[:, k * self.batch_size : (k + 1) * self.batch_size]


def build_optimizer(
    model: EnsembleMLP, config: OptimizerConfig, lrs: Tensor, settings: TrainSettings, *, fused: bool = False
) -> torch.optim.Optimizer:
    """The registry's optimizer for the ensemble (matrix-only ones: hidden 128x128 matrices only,
    unless ``settings.matrix_input_layer``; the head is an output layer for the registry).

    ``fused``: the optimizer's fused path where it takes per-member hyperparameters (FOCUS,
    Signum, AdamW: one Triton launch per group on CUDA); other optimizers keep their default path.
    """
    exclude = None
    if config.matrix_only and not settings.matrix_input_layer:
        exclude = [EnsembleMLP.INPUT_LAYER]
    user_path = "fused" in config.hparams or "foreach" in config.hparams
    extra = {"fused": True} if fused and not user_path and supports_fused_ensemble(config.name) else {}
    return make_optimizer(
        config.name,
        model,
        ensemble_dims=1,
        exclude_from_matrix=exclude,
        lr=lrs,
        weight_decay=settings.weight_decay,
        **config.hparams,
        **extra,
    )


def supports_fused_ensemble(name: str) -> bool:
    """Whether the registry's ``name`` has a fused path for per-member hyperparameters."""
    from ..optim.registry import get_spec

    return bool(getattr(get_spec(name).load(), "_fused_ensemble", False))


def train_cell(
    config: OptimizerConfig,
    batch_size: int,
    lrs: Sequence[float],
    data: DeviceData,
    settings: TrainSettings,
    *,
    seed: int,
    compile: str | None = None,
    fused: bool = False,
    cuda_graphs: bool = False,
    fused_eval: bool = False,
) -> np.ndarray:
    """Train ``len(lrs)`` members (member ``e`` with ``lrs[e]``) and return their history,
    ``(E, steps, 3)`` float32 with metrics :data:`METRICS`; test metrics are NaN at steps not
    evaluated. Initialisation and data orders come from one generator seeded with ``seed``.

    ``compile``: a ``torch.compile`` mode (``"default"``, ``"reduce-overhead"``, ...) for the
    training forward (and so its backward), the optimizer step and the test pass: a few fused
    kernels per step instead of hundreds of small ones (on a GPU, where small cells are
    launch-bound). How it runs, not what: the numbers agree with the eager run to rounding, which
    sign-like first steps and batch norm over tiny batches amplify over the steps.

    ``fused``: eager steps on the optimizer's fused path (see :func:`build_optimizer`): one launch
    for the whole ensemble's update instead of one per operation and tensor group.

    ``cuda_graphs``: the training forward + backward and the test pass are captured as CUDA graphs
    (:class:`CellGraphs`) and replayed, so a step costs a few launches instead of ~150; the
    optimizer step stays eager (its step count lives on the host). The same kernels run, so the
    numbers are those of the eager cell. CUDA only; not with ``compile``.

    ``fused_eval``: the test pass as one Triton kernel (:meth:`~.model.EnsembleMLP.evaluate` with
    ``fused=True``; ``eval_precision="bf16"``), run eagerly (or in the cell's graph) even when
    ``compile`` is set."""
    device = data.train_x.device
    check_compile_mode(compile, device)
    if fused_eval and settings.eval_precision != "bf16":
        raise ValueError(f"fused_eval needs eval_precision 'bf16', not {settings.eval_precision!r}")
    if cuda_graphs and (compile or (device.type != "cuda" and GRAPH_FACTORY is None)):
        where = f"compile={compile!r}" if compile else f"device {device.type!r}"
        raise ValueError(f"cuda_graphs needs an eager cell on a CUDA device, not {where}")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed & ((1 << 63) - 1))
    E = len(lrs)
    lr_t = torch.tensor(list(lrs), dtype=torch.float32, device=device)
    if compile:
        model, opt, step_fn = _compiled_workspace(config, lr_t, settings, gen, compile)
        losses_fn = _compiled(member_losses, compile)
        evaluate_fn = evaluate_members if fused_eval else _compiled(evaluate_members, compile)
    else:
        model = EnsembleMLP(E, device=device, generator=gen)
        opt = build_optimizer(model, config, lr_t, settings, fused=fused)
        losses_fn, evaluate_fn, step_fn = member_losses, evaluate_members, opt.step
    n_train = len(data.train_y)
    order = DataOrder(E, n_train, batch_size, drop_last=settings.drop_last, generator=gen)
    hessian_order: DataOrder | None = None
    hessian_refreshes = 0
    history = torch.full((E, settings.steps, len(METRICS)), float("nan"), device=device)
    eval_mask = settings.eval_steps()
    test_x = data.test_images(settings.eval_precision)
    chunk = settings.eval_chunk or None

    graphs = CellGraphs(model, GRAPH_FACTORY) if cuda_graphs else None

    def forward_backward(idx: Tensor) -> Tensor:
        x, y = data.batch(idx)
        with _matmul_precision(settings.train_precision, device):
            losses = losses_fn(model, x, y)
            losses.sum().backward()  # member e's gradient is that of its own mean loss
        return losses

    def test_pass() -> tuple[Tensor, Tensor]:
        return evaluate_fn(model, test_x, data.test_y, settings.eval_precision, chunk, fused_eval)

    for t in range(settings.steps):
        idx = order.batch(t)  # (E, b): the batch is gathered inside forward_backward (and its graph)
        model.train()
        if graphs is not None:
            losses = graphs.forward_backward(forward_backward, idx)
        else:
            opt.zero_grad(set_to_none=True)
            losses = forward_backward(idx)
        step_fn(**protocol.step_kwargs(opt, tokens=idx.shape[1]))
        history[:, t, 0] = losses.detach()
        if protocol.hessian_due(opt, t):
            if hessian_order is None:  # fresh batches (and label samples) from a stream of their own
                hgen = torch.Generator(device=device)
                hgen.manual_seed((seed + 1) & ((1 << 63) - 1))
                hessian_order = DataOrder(
                    E, n_train, batch_size, drop_last=settings.drop_last, generator=hgen
                )
            hidx = hessian_order.batch(hessian_refreshes)
            hessian_refreshes += 1
            with _matmul_precision(settings.train_precision, device):
                _refresh_hessian(model, opt, data.batch(hidx)[0], hessian_order.generator)
            if graphs is not None:
                graphs.grads_changed()
        if eval_mask[t]:
            model.eval()
            loss, acc = graphs.test_pass(test_pass) if graphs is not None else test_pass()
            history[:, t, 1] = loss
            history[:, t, 2] = acc
    return history.cpu().numpy()


#: Makes :class:`CellGraphs`' graphs, ``(stream, model) -> graph``; ``None``: :class:`CudaGraph`.
#: Tests substitute a stand-in that re-runs the captured code, which also runs off CUDA.
GRAPH_FACTORY: Callable[[Any, torch.nn.Module], Any] | None = None


class CellGraphs:
    """A cell's training forward + backward (one graph per batch shape) and its test pass as CUDA
    graphs: a shape's first ``WARMUP`` calls run eagerly (cuBLAS and cuDNN choose their kernels,
    lazy buffers are made), the next is captured, and that and later ones replay it.

    Replays write the gradients into the capture's own tensors, which are put back as the
    parameters' ``.grad`` before the optimizer reads them (an eager step in between, e.g. a batch
    of another shape or a Sophia Hessian refresh, leaves fresh ones there). Eager and captured
    work runs on one side stream, as capture requires; the default stream waits for it after each
    call. ``graph_factory(stream, model)`` makes the graphs (default :class:`CudaGraph`).
    """

    WARMUP = 2

    def __init__(
        self, model: torch.nn.Module, graph_factory: Callable[[Any, torch.nn.Module], Any] | None = None
    ) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._new_graph: Callable[[Any, torch.nn.Module], Any] = graph_factory or CudaGraph
        self._stream = torch.cuda.Stream() if graph_factory is None else None
        self._graphs: dict[object, Any] = {}
        self._grads: dict[object, list[Tensor | None]] = {}
        self._calls: dict[object, int] = defaultdict(int)
        self._grads_of: object = None  # whose gradients the parameters' .grad hold now

    def forward_backward(self, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
        """``fn(*inputs)``: the losses, with the gradients in ``.grad`` (one graph per input shape)."""
        key = tuple(tuple(t.shape) for t in inputs)
        with self._on_stream():
            if key not in self._graphs:
                for p in self.params:  # no accumulation: every call starts from no gradient
                    p.grad = None
                self._grads_of = None
                if self._calls[key] < self.WARMUP:
                    self._calls[key] += 1
                    return fn(*inputs)
                self._graphs[key] = self._new_graph(self._stream, self.model)
                self._graphs[key].capture(fn, *inputs)
                self._grads[key] = [p.grad for p in self.params]
            losses = self._graphs[key].replay(*inputs)
        if self._grads_of != key:
            for p, g in zip(self.params, self._grads[key]):
                p.grad = g
            self._grads_of = key
        return losses

    def test_pass(self, fn: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """``fn()``: the test loss and accuracy (read them before the next call)."""
        with self._on_stream():
            if "test" not in self._graphs:
                if self._calls["test"] < self.WARMUP:
                    self._calls["test"] += 1
                    return fn()
                self._graphs["test"] = self._new_graph(self._stream, self.model)
                self._graphs["test"].capture(fn)
            return self._graphs["test"].replay()

    def grads_changed(self) -> None:
        """Eager code has replaced the parameters' ``.grad``: the next replay puts its own back."""
        self._grads_of = None

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        if self._stream is None:
            yield
            return
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            yield
        torch.cuda.current_stream().wait_stream(self._stream)


class CudaGraph:
    """``fn(*inputs)`` captured once; ``replay(*inputs)`` copies new inputs into the captured ones,
    replays, and returns the captured outputs (overwritten in place by every replay)."""

    def __init__(self, stream: torch.cuda.Stream, model: torch.nn.Module | None = None) -> None:
        self.graph, self.stream = torch.cuda.CUDAGraph(), stream

    def capture(self, fn: Callable[..., Any], *inputs: Tensor) -> None:
        self.inputs = [t.clone() for t in inputs]
        with torch.cuda.graph(self.graph, stream=self.stream):
            self.outputs = fn(*self.inputs)

    def replay(self, *inputs: Tensor) -> Any:
        for static, t in zip(self.inputs, inputs):
            static.copy_(t)
        self.graph.replay()
        return self.outputs


#: torch.compile modes that capture CUDA graphs (Inductor's CUDA-graph trees).
CUDAGRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")


def check_compile_mode(compile: str | None, device: torch.device | str) -> None:
    """Refuse compile modes with CUDA-graph trees for CUDA cells: on torch 2.11 / H100
    (2026-11-23) a ``reduce-overhead`` cell died with SIGSEGV inside them. ``cuda_graphs=True``
    captures the eager kernels instead (the same numbers as eager)."""
    if compile in CUDAGRAPH_COMPILE_MODES and torch.device(device).type == "cuda":
        raise ValueError(
            f"Invalid compile mode {compile!r} for CUDA cells: its CUDA-graph trees crashed (SIGSEGV) on "
            "torch 2.11; use cuda_graphs=True (--cuda-graphs), or compile 'default' or "
            "'max-autotune-no-cudagraphs'"
        )


def member_losses(model: EnsembleMLP, x: Tensor, y: Tensor) -> Tensor:
    """Training-mode cross-entropy of every member on its own minibatch: ``x (E, 784, b)``,
    ``y (E, b)`` -> ``(E,)`` (running BN statistics updated)."""
    return F.cross_entropy(model.forward_features(x), y, reduction="none").mean(1)


@dataclass
class _Workspace:
    model: EnsembleMLP
    opt: BaseOptimizer
    lrs: Tensor  # the optimizer's lr tensor (every group holds this one)
    step: Callable[..., Any]


_WORKSPACES: dict[tuple[Any, ...], _Workspace] = {}
MAX_WORKSPACES = 8


def _compiled_workspace(
    config: OptimizerConfig, lrs: Tensor, settings: TrainSettings, gen: torch.Generator, mode: str
) -> tuple[EnsembleMLP, torch.optim.Optimizer, Callable[..., Any]]:
    """Model, optimizer and compiled step for a compiled cell, reused by the process's later cells
    of the same optimizer: reset in place to exactly what a new model and optimizer would be
    (same draws from ``gen``), so the compiled step, which dynamo ties to one optimizer object,
    is not traced again for every cell."""
    hparams = repr(sorted(config.hparams.items()))
    key = (config.name, hparams, int(lrs.shape[0]), str(lrs.device), settings.weight_decay,
           settings.matrix_input_layer, mode)  # fmt: skip
    ws = _WORKSPACES.get(key)
    if ws is not None:
        ws.model.reset_parameters(gen)
        ws.opt.reset_state()
        ws.lrs.copy_(lrs)
        return ws.model, ws.opt, ws.step
    model = EnsembleMLP(int(lrs.shape[0]), device=lrs.device, generator=gen)
    opt = build_optimizer(model, config, lrs, settings)
    step = functools.partial(_compiled(optimizer_step, mode), opt)
    raise_recompile_limit(64)
    if isinstance(opt, BaseOptimizer):  # (any other optimizer is used once: no generic reset)
        opt.init_state(step_on_device=True)
        if len(_WORKSPACES) >= MAX_WORKSPACES:
            _WORKSPACES.pop(next(iter(_WORKSPACES)))
        _WORKSPACES[key] = _Workspace(model, opt, lrs, step)
    return model, opt, step


def optimizer_step(opt: torch.optim.Optimizer, **kwargs: Any) -> None:
    """``opt.step(**kwargs)`` as a plain function (one compiled graph per optimizer class)."""
    opt.step(**kwargs)


def evaluate_members(
    model: EnsembleMLP, x_t: Tensor, labels: Tensor, precision: str, chunk: int | None, fused: bool = False
) -> tuple[Tensor, Tensor]:
    """:meth:`~.model.EnsembleMLP.evaluate` as a plain function (one compiled graph for all cells)."""
    return model.evaluate(x_t, labels, precision=precision, chunk=chunk, fused=fused)


@functools.cache
def _compiled(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """One compiled version of ``fn`` per process and mode: every cell's model has the same
    shapes, so all cells reuse its graphs (parameters are graph inputs, not constants)."""
    return torch.compile(fn, mode=mode, dynamic=False)


def _refresh_hessian(model: EnsembleMLP, opt: torch.optim.Optimizer, x: Tensor, gen: torch.Generator) -> None:
    """Sophia-G's estimator on a fresh batch ``x``: labels sampled from the model's own softmax,
    the mean cross-entropy against them backpropagated, then ``update_hessian()``.

    Sampling is Gumbel-max (argmax of logits + Gumbel noise: the same distribution as
    ``sophia.sampled_label_loss``'s multinomial, but a diverged member's NaN logits cannot abort the
    whole ensemble). Running BN statistics are left alone: this forward is not a training step.
    No gradient clipping (none of the lab's optimizers clip; the paper's MNIST runs do not)."""
    opt.zero_grad(set_to_none=True)
    logits = model.forward_features(x, update_stats=False)  # (E, C, b)
    with torch.no_grad():
        u = torch.rand(logits.shape, generator=gen, device=logits.device).clamp_(min=1e-20)
        sampled = (logits.float() - torch.log(-torch.log(u))).argmax(1)
    F.cross_entropy(logits, sampled, reduction="none").mean(1).sum().backward()
    protocol.update_hessian(opt)
    opt.zero_grad(set_to_none=True)
