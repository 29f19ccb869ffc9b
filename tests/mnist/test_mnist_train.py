"""Training a cell: independent data orders, the ensemble optimizer == independent optimizers,
members independent of each other, deterministic, NaN only where no test pass was asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from focus_optim import make_optimizer
from focus_optim.landscape.simulate import compile_available
from focus_optim.mnist.model import EnsembleMLP, reference_mlp
from focus_optim.mnist.optimizers import parse_optimizer
from focus_optim.mnist.train import DataOrder, DeviceData, TrainSettings, build_optimizer, train_cell


# --- data order ------------------------------------------------------------------------------------
def test_data_orders_are_independent_shuffled_epochs() -> None:
    n, bs, E = 100, 32, 3
    order = DataOrder(E, n, bs, drop_last=False, generator=torch.Generator().manual_seed(0))
    assert order.per_epoch == 4
    epochs = []
    for ep in range(2):
        batches = [order.batch(ep * 4 + k) for k in range(4)]
        assert [b.shape for b in batches] == [(E, 32)] * 3 + [(E, 4)]  # DataLoader's remainder batch
        epochs.append(torch.cat(batches, dim=1))
    for ep in epochs:
        for e in range(E):
            assert sorted(ep[e].tolist()) == list(range(n))  # each member sees every image once per epoch
        assert not torch.equal(ep[0], ep[1]) and not torch.equal(ep[1], ep[2])  # members differ
    assert not torch.equal(epochs[0], epochs[1])  # fresh shuffle every epoch
    dropped = DataOrder(E, n, bs, drop_last=True, generator=torch.Generator().manual_seed(0))
    assert dropped.per_epoch == 3 and dropped.batch(3).shape == (E, 32)
    with pytest.raises(ValueError, match="last batch of 1 image"):
        DataOrder(E, 65, 32, drop_last=False, generator=torch.Generator())


# --- the ensemble optimizer is E independent optimizers --------------------------------------------
@pytest.mark.parametrize("label", ["adamw", "signum", "focus:gamma=0.2", "focus:gamma=0.4"])
def test_ensemble_training_equals_independent_models(label: str) -> None:
    """Same init, same batches: E models each with its own make_optimizer(lr=float) end where the
    ensemble with make_optimizer(ensemble_dims=1, lr=1-D tensor) ends (float64, exact lrs)."""
    torch.manual_seed(0)
    lrs = [2.0**-12, 2.0**-9, 2.0**-6]
    cfg = parse_optimizer(label)
    models = [reference_mlp().double() for _ in lrs]
    ens = EnsembleMLP.from_sequential(models).double()
    opt = make_optimizer(
        cfg.name, ens, ensemble_dims=1, lr=torch.tensor(lrs), weight_decay=1e-2, **cfg.hparams
    )
    refs = [
        make_optimizer(cfg.name, m, lr=lr, weight_decay=1e-2, **cfg.hparams) for m, lr in zip(models, lrs)
    ]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.rand(len(lrs), 8, 784, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (len(lrs), 8), generator=gen)
        opt.zero_grad()
        F.cross_entropy(ens(x).transpose(1, 2), y, reduction="none").mean(1).sum().backward()
        opt.step()
        for e, (m, o) in enumerate(zip(models, refs)):
            o.zero_grad()
            F.cross_entropy(m(x[e]), y[e]).backward()
            o.step()
    for e, m in enumerate(models):
        for (name, a), b in zip(ens.member(e).state_dict().items(), m.state_dict().values()):
            if "num_batches" not in name:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_build_optimizer_uses_lab_defaults() -> None:
    ens = EnsembleMLP(2)
    opt = build_optimizer(
        ens, parse_optimizer("focus:gamma=0.4"), torch.tensor([1e-3, 1e-2]), TrainSettings()
    )
    g = opt.param_groups[0]
    assert g["betas"] == (0.9, 0.99) and g["gamma"] == 0.4
    assert sorted({float(g["weight_decay"]) for g in opt.param_groups}) == [0.0, 1e-2]


def test_build_optimizer_fused_where_the_optimizer_has_an_ensemble_fused_path() -> None:
    ens, lrs = EnsembleMLP(2), torch.tensor([1e-3, 1e-2])
    for label, fused in [("focus:gamma=0.2", True), ("signum", True), ("adamw", True), ("lion", None)]:
        opt = build_optimizer(ens, parse_optimizer(label), lrs, TrainSettings(), fused=True)
        assert {g.get("fused") for g in opt.param_groups} == {fused}, label
    # the user's own path choice wins
    opt = build_optimizer(ens, parse_optimizer("focus:foreach=True"), lrs, TrainSettings(), fused=True)
    assert {g["fused"] for g in opt.param_groups} == {None}


# --- train_cell ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def device_data(tiny_data) -> DeviceData:
    return DeviceData.from_mnist(tiny_data, "cpu")


def test_train_cell_history(device_data: DeviceData) -> None:
    s = TrainSettings(steps=12, eval_every=5)
    lrs = [1e-3, 1e-2]
    h = train_cell(parse_optimizer("adamw"), 16, lrs, device_data, s, seed=3)
    assert h.shape == (2, 12, 3) and h.dtype == np.float32
    evaluated = np.isfinite(h[0, :, 1])
    assert evaluated.tolist() == [t in (4, 9, 11) for t in range(12)]  # steps 5, 10 and the last
    assert np.isfinite(h[:, :, 0]).all() and np.isfinite(h[:, evaluated, 1:]).all()
    assert ((h[:, evaluated, 2] >= 0) & (h[:, evaluated, 2] <= 1)).all()
    assert h[1, -1, 1] < h[1, 4, 1] < np.log(10) + 0.5  # it learns (the synthetic labels are learnable)
    np.testing.assert_array_equal(h, train_cell(parse_optimizer("adamw"), 16, lrs, device_data, s, seed=3))
    other = train_cell(parse_optimizer("adamw"), 16, lrs, device_data, s, seed=4)
    assert not np.array_equal(h, other)


@pytest.mark.parametrize("label", ["adamw", "signum", "focus:gamma=0.2"])
def test_members_are_independent(device_data: DeviceData, label: str) -> None:
    """Member 0's trajectory does not depend on member 1's lr (even when member 1 diverges)."""
    s = TrainSettings(steps=6, eval_every=3)
    a = train_cell(parse_optimizer(label), 8, [3e-3, 1e-3], device_data, s, seed=0)
    b = train_cell(parse_optimizer(label), 8, [3e-3, 1e3], device_data, s, seed=0)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])


def test_eval_every_step_and_precision_settings(device_data: DeviceData) -> None:
    h = train_cell(parse_optimizer("signum"), 8, [1e-3], device_data, TrainSettings(steps=3), seed=0)
    assert np.isfinite(h).all()
    with pytest.raises(ValueError, match="eval_precision"):
        TrainSettings(eval_precision="fp8")
    with pytest.raises(ValueError, match="eval_every"):
        TrainSettings(eval_every=0)


@pytest.mark.parametrize("label", ["adamw", "signum", "focus:gamma=0.2"])
def test_fused_cell_equals_eager_on_cpu(device_data: DeviceData, label: str) -> None:
    """Off CUDA the fused path of an ensemble is the per-tensor update: the same numbers bit for bit
    (the Triton kernels' own equality with it is tested in tests/optim/test_paths.py)."""
    s = TrainSettings(steps=4, eval_every=2)
    lrs = [1e-4, 1e-3]
    eager = train_cell(parse_optimizer(label), 16, lrs, device_data, s, seed=5)
    fused = train_cell(parse_optimizer(label), 16, lrs, device_data, s, seed=5, fused=True)
    np.testing.assert_array_equal(fused, eager)


@pytest.mark.skipif(not compile_available(torch.device("cpu")), reason="torch.compile needs a C++ compiler")
def test_compiled_step_with_folded_input_layer_matches_eager() -> None:
    """At a batch where the input layer's BN is folded into its GEMM (above 256), the compiled
    training forward + backward gives the eager losses, gradients and running statistics."""
    from focus_optim.mnist.train import member_losses

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 300, 784, generator=gen).transpose(1, 2)
    x = torch.where(x > 0.7, x, torch.zeros(()))
    y = torch.randint(0, 10, (2, 300), generator=gen)
    runs = []
    for fn in (member_losses, torch.compile(member_losses)):
        model = EnsembleMLP(2, generator=torch.Generator().manual_seed(1))
        losses = fn(model, x, y)
        losses.sum().backward()
        runs.append([losses.detach(), *(p.grad for p in model.parameters()), *model.buffers()])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not compile_available(torch.device("cpu")), reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("label", ["adamw", "focus:gamma=0.2"])
def test_compiled_cell_matches_eager(device_data: DeviceData, label: str) -> None:
    """The compiled steps (forward + backward, optimizer, test pass) compute what the eager ones do:
    to rounding on these few steps (over many steps, sign-like updates and batch norm over tiny
    batches amplify it), and a second cell of the same shapes reuses the compiled graphs with its
    own parameters. A step that did not update (lr 0) differs by ~60% here. The rounding depends
    on the CPU's vector width: 2.5e-5 apart on an AVX2-only CPU, so the tolerance is 1e-4."""
    s = TrainSettings(steps=4, eval_every=2)
    lrs = [1e-4, 1e-3]
    eager = train_cell(parse_optimizer(label), 32, lrs, device_data, s, seed=5)
    compiled = train_cell(parse_optimizer(label), 32, lrs, device_data, s, seed=5, compile="default")
    np.testing.assert_array_equal(np.isfinite(compiled), np.isfinite(eager))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, equal_nan=True)
    other = train_cell(parse_optimizer(label), 32, lrs, device_data, s, seed=6, compile="default")
    np.testing.assert_allclose(
        other, train_cell(parse_optimizer(label), 32, lrs, device_data, s, seed=6), rtol=1e-4, equal_nan=True
    )
    assert not np.allclose(other, compiled, rtol=1e-2, equal_nan=True)
