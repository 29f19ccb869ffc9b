"""Every registry optimizer can be scanned by name: each one beyond the paper's three trains an
ensemble here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focus_optim import available_optimizers
from focus_optim.mnist.model import EnsembleMLP
from focus_optim.mnist.optimizers import parse_optimizer
from focus_optim.mnist.train import DeviceData, TrainSettings, build_optimizer, train_cell

EXTRA = ["lion", "muon", "sophia", "conda", "root", "exadam", "onebit_adam"]


@pytest.fixture(scope="module")
def device_data(tiny_data) -> DeviceData:
    return DeviceData.from_mnist(tiny_data, "cpu")


def test_every_registered_optimizer_is_covered() -> None:
    assert set(available_optimizers()) == {"adamw", "signum", "focus", *EXTRA}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", EXTRA)
def test_extra_optimizer_smoke(name: str, device_data: DeviceData) -> None:
    """Trains (member 0's test loss falls from step 6 to 12), stays finite at a small lr, and members
    stay independent (member 0 is unchanged when member 1's lr makes it diverge)."""
    s = TrainSettings(steps=12, eval_every=6)
    a = train_cell(parse_optimizer(name), 8, [1e-3, 1e-2], device_data, s, seed=0)
    b = train_cell(parse_optimizer(name), 8, [1e-3, 1e3], device_data, s, seed=0)
    assert a.shape == (2, 12, 3) and np.isfinite(a[0, :, 0]).all() and np.isfinite(a[0, [5, 11], 1:]).all()
    assert a[0, 11, 1] < a[0, 5, 1]
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("name", ["muon", "root", "conda"])
def test_matrix_only_split(name: str) -> None:
    """Hidden 128x128 matrices get the matrix update; input layer, head, biases, BN go to aux AdamW
    (``--matrix-input-layer`` moves the 784->128 input layer to the matrix update)."""
    cfg = parse_optimizer(name)
    ens = EnsembleMLP(2)
    names = {id(p): n for n, p in ens.named_parameters()}
    for input_on_matrix in (False, True):
        opt = build_optimizer(
            ens, cfg, torch.tensor([1e-3, 1e-2]), TrainSettings(matrix_input_layer=input_on_matrix)
        )
        matrix = {names[id(p)] for g in opt.param_groups if g.get("matrix") for p in g["params"]}
        hidden = {f"blocks.{i}.linear.weight" for i in range(1, 5)}
        assert matrix == (hidden | {"blocks.0.linear.weight"} if input_on_matrix else hidden)


def test_sophia_hessian_refresh_protocol(monkeypatch: pytest.MonkeyPatch, device_data: DeviceData) -> None:
    """``update_hessian`` every k steps (via protocol.hessian_due), on gradients of sampled labels,
    and ``step(bs=batch size)``."""
    cls = parse_optimizer("sophia")
    from focus_optim.optim.registry import get_spec

    sophia_cls = get_spec("sophia").load()
    calls: list[str] = []
    seen_bs: list[float] = []
    orig_update, orig_step = sophia_cls.update_hessian, sophia_cls.step

    def update_hessian(self):
        grads = [p.grad for g in self.param_groups for p in g["params"]]
        assert all(g is not None for g in grads)  # the sampled-label backward just ran
        calls.append("h")
        return orig_update(self)

    def step(self, closure=None, bs=5120):
        seen_bs.append(bs)
        return orig_step(self, closure, bs=bs)

    monkeypatch.setattr(sophia_cls, "update_hessian", update_hessian)
    monkeypatch.setattr(sophia_cls, "step", step)
    h = train_cell(cls, 8, [1e-3], device_data, TrainSettings(steps=25, eval_every=25), seed=0)
    k = get_spec("sophia").hyperparameters()["hessian_interval"]
    assert len(calls) == 25 // k and set(seen_bs) == {8} and len(seen_bs) == 25
    assert np.isfinite(h[0, -1]).all()
