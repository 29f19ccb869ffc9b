"""CUDA-graph cells (``train_cell(cuda_graphs=True)``): the bookkeeping on CPU with a stand-in graph,
the real capture on a GPU.

The stand-in behaves as a replayed CUDA graph does: capturing leaves no trace (buffers restored,
nothing returned to the caller but the captured outputs), and a replay re-runs the captured code on
the captured input tensors, writing into the captured outputs and gradient tensors in place while
leaving the parameters' ``.grad`` attributes alone. So the cell must copy inputs in, put the
captured gradients back before the optimizer reads them, and read outputs after each replay, as
it must with a real graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from focus_optim.mnist import train as train_mod
from focus_optim.mnist.model import EnsembleMLP
from focus_optim.mnist.optimizers import parse_optimizer
from focus_optim.mnist.train import CellGraphs, DeviceData, TrainSettings, train_cell


class RerunGraph:
    """A CPU stand-in for :class:`~focus_optim.mnist.train.CudaGraph`."""

    replays = 0

    def __init__(self, stream: Any, model: torch.nn.Module) -> None:
        self.model = model

    def capture(self, fn: Callable[..., Any], *inputs: Tensor) -> None:
        self.fn, self.inputs = fn, [t.clone() for t in inputs]
        saved = [b.clone() for b in self.model.buffers()]
        before = [p.grad for p in self.model.parameters()]
        self.outputs = fn(*self.inputs)  # a capture allocates the outputs and the gradients it makes
        for b, s in zip(self.model.buffers(), saved):
            b.copy_(s)  # ... but computes nothing
        self.grads = [p.grad if p.grad is not b else None for p, b in zip(self.model.parameters(), before)]

    def replay(self, *inputs: Tensor) -> Any:
        type(self).replays += 1
        for static, t in zip(self.inputs, inputs):
            static.copy_(t)
        params = list(self.model.parameters())
        attrs = [p.grad for p in params]
        for p in params:
            p.grad = None
        new = self.fn(*self.inputs)
        for p, g in zip(params, self.grads):
            if g is not None:
                g.copy_(p.grad)
        for p, a in zip(params, attrs):
            p.grad = a  # a replay writes memory, not Python attributes
        for static, value in zip(_tensors(self.outputs), _tensors(new)):
            static.copy_(value)
        return self.outputs


def _tensors(out: Any) -> list[Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> type[RerunGraph]:
    monkeypatch.setattr(train_mod, "GRAPH_FACTORY", RerunGraph)
    RerunGraph.replays = 0
    return RerunGraph


@pytest.fixture(scope="module")
def device_data(tiny_data) -> DeviceData:
    return DeviceData.from_mnist(tiny_data, "cpu")


@pytest.mark.parametrize(
    ("label", "fused"), [("adamw", False), ("focus:gamma=0.2", True), ("signum", False), ("sophia", False)]
)
def test_graph_cell_equals_eager_cell(device_data: DeviceData, stand_in, label: str, fused: bool) -> None:
    """Bit for bit, over epochs whose last batch is smaller (a second captured shape), with the
    test pass thinned (eager warm-ups, then replays) and, for Sophia, Hessian refreshes between
    replays (eager gradients that the next replay must replace)."""
    n = len(device_data.train_y)
    batch = 48 if n % 48 > 1 else 40
    assert n % batch > 1, "the fixture must leave a remainder batch"
    s = TrainSettings(steps=3 * (-(-n // batch)) + 2, eval_every=2)
    lrs = [1e-3, 3e-2]
    eager = train_cell(parse_optimizer(label), batch, lrs, device_data, s, seed=7, fused=fused)
    graphs = train_cell(
        parse_optimizer(label), batch, lrs, device_data, s, seed=7, fused=fused, cuda_graphs=True
    )
    assert stand_in.replays > s.steps // 2  # most steps replayed
    np.testing.assert_array_equal(graphs, eager)


def test_graph_cell_notices_lost_gradients(device_data: DeviceData, stand_in, monkeypatch) -> None:
    """The check has teeth: a cell whose replays leave the parameters' ``.grad`` as they were (the
    optimizer then reads the last warm-up's gradients) no longer matches the eager cell."""
    s = TrainSettings(steps=6, eval_every=1)
    eager = train_cell(parse_optimizer("adamw"), 16, [1e-2], device_data, s, seed=2)
    original = CellGraphs.forward_backward

    def forgetful(self, fn, *inputs):
        attrs = [p.grad for p in self.params]
        out = original(self, fn, *inputs)
        if tuple(tuple(t.shape) for t in inputs) in self._graphs:
            for p, a in zip(self.params, attrs):
                p.grad = a
        return out

    monkeypatch.setattr(CellGraphs, "forward_backward", forgetful)
    broken = train_cell(parse_optimizer("adamw"), 16, [1e-2], device_data, s, seed=2, cuda_graphs=True)
    assert not np.array_equal(broken, eager)


def test_cuda_graphs_needs_cuda_and_no_compile(device_data: DeviceData) -> None:
    s = TrainSettings(steps=2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"cuda_graphs needs .* CUDA device, not device 'cpu'"):
            train_cell(parse_optimizer("adamw"), 16, [1e-3], device_data, s, seed=1, cuda_graphs=True)
    with pytest.raises(ValueError, match="not compile='default'"):
        train_cell(
            parse_optimizer("adamw"), 16, [1e-3], device_data, s, seed=1, cuda_graphs=True, compile="default"
        )


def test_cell_graphs_warm_up_then_capture_each_shape_once(stand_in) -> None:
    model = EnsembleMLP(2, (6, 4, 3))
    graphs = CellGraphs(model, RerunGraph)
    calls: list[tuple[int, ...]] = []

    def fn(x: Tensor, y: Tensor) -> Tensor:
        calls.append(tuple(x.shape))
        losses = torch.nn.functional.cross_entropy(model.forward_features(x), y, reduction="none").mean(1)
        losses.sum().backward()
        return losses

    for b in (5, 5, 5, 5, 3, 5, 3, 3, 3):
        graphs.forward_backward(fn, torch.randn(2, 6, b), torch.randint(0, 3, (2, b)))
    # shape 5: 2 warm-ups, 1 capture, replays re-run; shape 3 likewise, independently
    key3, key5 = ((2, 6, 3), (2, 3)), ((2, 6, 5), (2, 5))
    assert sorted(graphs._graphs) == [key3, key5]
    assert stand_in.replays == 5
    assert all(p.grad is g for p, g in zip(graphs.params, graphs._grads[key3]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("label", "fused"), [("adamw", False), ("focus:gamma=0.2", True)])
def test_cuda_graph_cell_equals_eager_cell_on_gpu(label: str, fused: bool, tiny_data) -> None:
    """Real capture and replay run the kernels of the eager cell: the same numbers."""
    data = DeviceData.from_mnist(tiny_data, "cuda")
    n = len(data.train_y)
    batch = 48 if n % 48 > 1 else 40
    s = TrainSettings(steps=2 * (-(-n // batch)) + 3, eval_every=1)
    lrs = [1e-3, 3e-2]
    eager = train_cell(parse_optimizer(label), batch, lrs, data, s, seed=7, fused=fused)
    graphs = train_cell(parse_optimizer(label), batch, lrs, data, s, seed=7, fused=fused, cuda_graphs=True)
    np.testing.assert_allclose(graphs, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_cell_with_fused_test_pass_equals_eager_cell_on_gpu(tiny_data) -> None:
    """The fused test pass's Triton launch, captured and replayed, gives the eager cell's numbers;
    its test metrics are the cuBLAS bf16 pass's to bf16 rounding, and training is unchanged."""
    data = DeviceData.from_mnist(tiny_data, "cuda")
    s = TrainSettings(steps=12, eval_every=1, eval_precision="bf16")
    args = (parse_optimizer("focus:gamma=0.2"), 32, [1e-3, 3e-2], data, s)
    eager = train_cell(*args, seed=7, fused=True, fused_eval=True)
    graphs = train_cell(*args, seed=7, fused=True, fused_eval=True, cuda_graphs=True)
    np.testing.assert_allclose(graphs, eager, rtol=1e-6, atol=1e-7)
    cublas = train_cell(*args, seed=7, fused=True)
    np.testing.assert_array_equal(eager[..., 0], cublas[..., 0])
    np.testing.assert_allclose(eager[..., 1], cublas[..., 1], rtol=2e-2)
