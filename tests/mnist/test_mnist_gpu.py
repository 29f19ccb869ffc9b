"""The lab on a CUDA device (skipped without one): same model, test-pass precisions, a tiny cell."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from focus_optim.mnist.model import EnsembleMLP, reference_mlp
from focus_optim.mnist.optimizers import parse_optimizer
from focus_optim.mnist.train import DeviceData, TrainSettings, train_cell

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_ensemble_matches_models_and_precisions_agree() -> None:
    torch.manual_seed(0)
    models = [reference_mlp().cuda() for _ in range(3)]
    ens = EnsembleMLP.from_sequential(models)
    x = torch.rand(3, 32, 784, device="cuda")
    out = ens(x)
    for e, m in enumerate(models):
        torch.testing.assert_close(out[e], m(x[e]), rtol=1e-4, atol=1e-4)
    ens.eval()
    xt = torch.rand(784, 4096, device="cuda")
    labels = torch.randint(0, 10, (4096,), device="cuda")
    ref, _ = ens.evaluate(xt, labels)
    for e, m in enumerate(models):
        assert ref[e].item() == pytest.approx(F.cross_entropy(m.eval()(xt.T), labels).item(), rel=1e-4)
    for precision, tol in (("tf32", 5e-3), ("bf16", 2e-2)):
        got, _ = ens.evaluate(xt, labels, precision=precision)
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def test_cuda_cell_runs_and_members_are_independent(tiny_data) -> None:
    data = DeviceData.from_mnist(tiny_data, "cuda")
    s = TrainSettings(steps=6, eval_every=3, eval_precision="bf16")
    a = train_cell(parse_optimizer("focus"), 8, [1e-3, 1e-2], data, s, seed=0)
    b = train_cell(parse_optimizer("focus"), 8, [1e-3, 1e3], data, s, seed=0)
    assert np.isfinite(a[0, [2, 5]]).all()
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_cuda_compiled_cell_matches_eager(tiny_data) -> None:
    """Compiled steps on the GPU compute what eager ones do, including the per-member step count
    kept on the device."""
    data = DeviceData.from_mnist(tiny_data, "cuda")
    s = TrainSettings(steps=6, eval_every=3)
    for label in ("adamw", "focus:gamma=0.2"):
        eager = train_cell(parse_optimizer(label), 32, [1e-4, 1e-3], data, s, seed=5)
        compiled = train_cell(parse_optimizer(label), 32, [1e-4, 1e-3], data, s, seed=5, compile="default")
        np.testing.assert_allclose(compiled, eager, rtol=1e-4, equal_nan=True)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_tree_modes_are_refused(tiny_data, mode: str) -> None:
    """Inductor's CUDA-graph trees crashed a cell (SIGSEGV, torch 2.11): refused before any work,
    pointing to ``cuda_graphs=True``."""
    data = DeviceData.from_mnist(tiny_data, "cuda")
    with pytest.raises(ValueError, match="use cuda_graphs=True"):
        train_cell(parse_optimizer("adamw"), 32, [1e-4], data, TrainSettings(steps=2), seed=5, compile=mode)


@pytest.mark.parametrize("label", ["adamw", "signum", "focus:gamma=0.2"])
def test_cuda_fused_cell_matches_eager(tiny_data, label: str) -> None:
    """The fused optimizer step (one Triton launch per group for the whole ensemble) against the
    eager foreach step, to rounding over a few steps."""
    data = DeviceData.from_mnist(tiny_data, "cuda")
    s = TrainSettings(steps=6, eval_every=3)
    eager = train_cell(parse_optimizer(label), 32, [1e-4, 1e-3], data, s, seed=5)
    fused = train_cell(parse_optimizer(label), 32, [1e-4, 1e-3], data, s, seed=5, fused=True)
    np.testing.assert_allclose(fused, eager, rtol=1e-4, equal_nan=True)
