"""The ensemble MLP is exactly E independent copies of the paper's nn.Sequential MLP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from focus_optim.mnist.model import EnsembleMLP, reference_mlp

E, B = 3, 16


def _models(seed: int = 0) -> list[nn.Sequential]:
    torch.manual_seed(seed)
    models = [reference_mlp() for _ in range(E)]
    with torch.no_grad():  # non-trivial BN parameters and running stats
        for m in models:
            for mod in m:
                if isinstance(mod, nn.BatchNorm1d):
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.2, 0.2)
                    mod.running_mean.uniform_(-0.1, 0.1)
                    mod.running_var.uniform_(0.5, 2.0)
    return models


def test_layer_order_is_bn_linear_relu() -> None:
    kinds = [type(m).__name__ for m in reference_mlp()]
    assert kinds == ["BatchNorm1d", "Linear", "ReLU"] * 5 + ["BatchNorm1d", "Linear"]
    widths = [m.in_features for m in reference_mlp() if isinstance(m, nn.Linear)]
    assert widths == [784, 128, 128, 128, 128, 128]


def test_train_forward_backward_and_running_stats_match_independent_models() -> None:
    models = _models()
    ens = EnsembleMLP.from_sequential(models)
    x = torch.rand(E, B, 784)
    y = torch.randint(0, 10, (E, B))
    out = ens(x)
    F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
    for e, m in enumerate(models):
        ref = m(x[e])
        F.cross_entropy(ref, y[e]).backward()
        torch.testing.assert_close(out[e], ref, rtol=1e-5, atol=1e-5)
    for e, m in enumerate(models):
        member = ens.member(e)  # running stats after one training forward
        stats = [(a, b) for (n, a), b in zip(member.named_buffers(), m.buffers()) if "running" in n]
        assert len(stats) == 12
        for a, b in stats:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        grads = [p.grad for p in m.parameters()]
        ens_grads = [
            g[e]
            for blk in ens.all_blocks()
            for g in (blk.norm.weight.grad, blk.norm.bias.grad, blk.linear.weight.grad, blk.linear.bias.grad)
        ]
        for a, b in zip(ens_grads, grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_eval_forward_and_folded_test_pass_match_independent_models() -> None:
    models = _models(1)
    ens = EnsembleMLP.from_sequential(models).eval()
    x = torch.rand(500, 784)
    labels = torch.randint(0, 10, (500,))
    loss, acc = ens.evaluate(x.T.contiguous(), labels)
    chunked = ens.evaluate(x.T.contiguous(), labels, chunk=128)
    out = ens(x.expand(E, -1, -1))
    for e, m in enumerate(models):
        ref = m.eval()(x)
        torch.testing.assert_close(out[e], ref, rtol=1e-5, atol=1e-5)
        assert loss[e].item() == pytest.approx(F.cross_entropy(ref, labels).item(), rel=1e-5)
        assert acc[e].item() == pytest.approx((ref.argmax(1) == labels).float().mean().item())
    torch.testing.assert_close(chunked[0], loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked[1], acc)
    bf16, _ = ens.evaluate(x.T.contiguous().bfloat16(), labels, precision="bf16")
    torch.testing.assert_close(bf16, loss, rtol=2e-2, atol=2e-2)
    # every GEMM of the test pass has dimensions that are multiples of 8 (tensor-core kernels);
    # the padding is exact zeros, so the ones row still carries the bias
    shapes = [tuple(a.shape[1:]) for a in ens.eval_weights()]
    assert shapes == [(136, 792)] + [(136, 136)] * 4 + [(10, 136)]
    aug = EnsembleMLP.augment_inputs(x.T.contiguous())
    assert aug.shape == (792, 500) and (aug[784] == 1).all() and (aug[785:] == 0).all()


def _mnist_like(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Pixels as MNIST's: mostly exact zeros, strokes in (0, 1], a column that is constant (zero
    variance) and one nearly constant near 1 (mean much larger than the spread)."""
    x = torch.rand(E, batch, 784, generator=gen)
    x = torch.where(x > 0.8, x, torch.zeros(()))
    x[..., 300] = 0.7
    x[..., 400] = 0.98 + 1e-3 * torch.rand(E, batch, generator=gen)
    return x


@pytest.mark.parametrize("batch", [2, 3, 64, 300])
def test_input_layer_folded_path_equals_batch_norm_path(batch: int) -> None:
    """The input block's BN folded into its GEMM (``Block._folded``) against the same block as
    ``F.batch_norm`` then the linear layer: outputs, the gradients of BN and linear parameters for
    one upstream gradient, and the running statistics agree to fp32 rounding, in training and eval
    mode, including batch 2 and pixels of zero or tiny variance. (The whole network is compared at
    one batch only: at batch 2 the hidden BNs map any two different values to +-1, so rounding
    differences of the first layer do not stay small.)"""
    gen = torch.Generator().manual_seed(batch)
    x = _mnist_like(batch, gen).transpose(1, 2)  # (E, 784, b), the strided view the cell passes
    upstream = torch.randn(E, 128, batch, generator=gen)
    paths = {"folded": lambda blk, h: blk._folded(h, True), "bn": lambda blk, h: blk.linear(blk.norm(h))}
    results = []
    for path in paths.values():
        block = EnsembleMLP.from_sequential(_models(3)).blocks[0]
        out = path(block, x)
        out.backward(upstream)
        grads = [p.grad.clone() for p in block.parameters()]
        stats = [block.norm.running_mean.clone(), block.norm.running_var.clone()]
        results.append((out.detach(), grads, stats, path(block.eval(), x)))
    (out_f, grads_f, stats_f, eval_f), (out_b, grads_b, stats_b, eval_b) = results
    torch.testing.assert_close(out_f, out_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eval_f, eval_b, rtol=1e-5, atol=1e-5)
    for a, b in zip(stats_f, stats_b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert len(grads_f) == 4
    for a, b in zip(grads_f, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    # a pixel constant over the batch: BN scale's gradient exactly zero on both paths (sign optimizers
    # then leave it alone), which needs the exact mean of a constant column
    assert (grads_b[0][:, 300] == 0).all() and (grads_f[0][:, 300] == 0).all()
    if batch == 300:  # and the whole network, with the loss's gradients (an input with a gradient: no fold)
        y = torch.randint(0, 10, (E, batch), generator=gen)
        nets = [EnsembleMLP.from_sequential(_models(3)) for _ in range(2)]
        for net, xi in zip(nets, (x, x.clone().requires_grad_())):
            F.cross_entropy(net.forward_features(xi), y, reduction="none").mean(1).sum().backward()
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_input_layer_folds_above_twice_its_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fold is taken for inputs without a gradient from batch 257 (2 x 128 outputs + 1) only."""
    from focus_optim.mnist.model import Block

    folded = []
    fold = Block._folded
    monkeypatch.setattr(Block, "_folded", lambda self, x, u: folded.append(x.shape[2]) or fold(self, x, u))
    ens = EnsembleMLP(2)
    for batch in (256, 257):
        ens.forward_features(torch.rand(2, 784, batch))
    ens.forward_features(torch.rand(2, 784, 300, requires_grad=True))
    assert folded == [257]


def test_input_layer_needs_two_values_per_channel_when_training() -> None:
    ens = EnsembleMLP(2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ens.blocks[0]._folded(torch.rand(2, 784, 1), True)


def test_round_trip_and_member_independence() -> None:
    models = _models(2)
    ens = EnsembleMLP.from_sequential(models)
    for e, m in enumerate(models):
        for a, b in zip(ens.member(e).state_dict().values(), m.state_dict().values()):
            torch.testing.assert_close(a.float(), b.float())
    # changing member 1's input changes nothing of member 0's output (BN statistics are per member)
    x = torch.rand(E, B, 784)
    y0 = ens(x)[0]
    x[1] = torch.rand(B, 784) * 10
    torch.testing.assert_close(ens(x)[0], y0)


def test_default_init_per_member() -> None:
    gen = torch.Generator().manual_seed(0)
    ens = EnsembleMLP(4, generator=gen)
    w, b = ens.blocks[0].linear.weight, ens.blocks[0].linear.bias
    bound = 1 / math.sqrt(784)
    assert w.abs().max() <= bound and b.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # U(-b, b)
    assert not torch.equal(w[0], w[1])
    assert torch.equal(ens.head.norm.weight, torch.ones(4, 128))
    gen2 = torch.Generator().manual_seed(0)
    assert torch.equal(EnsembleMLP(4, generator=gen2).blocks[0].linear.weight, w)  # seeded


def test_registry_groups_no_decay_on_biases_and_bn() -> None:
    from focus_optim import make_optimizer

    ens = EnsembleMLP(2)
    lr = torch.tensor([1e-3, 1e-2])
    opt = make_optimizer("adamw", ens, ensemble_dims=1, lr=lr, weight_decay=1e-2)
    names = {id(p): n for n, p in ens.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 1e-2 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed == {n for n in names.values() if n.endswith("linear.weight")} and len(decayed) == 6
    assert plain == set(names.values()) - decayed and len(plain) == 18
    assert all(torch.equal(g["lr"], lr) for g in opt.param_groups)


def test_reset_parameters_equals_a_new_model() -> None:
    """``reset_parameters(gen)`` after training is the constructor's model, drawn from ``gen``."""
    fresh = EnsembleMLP(3, generator=torch.Generator().manual_seed(7))
    used = EnsembleMLP(3, generator=torch.Generator().manual_seed(1))
    used.train()
    used(torch.rand(3, 16, 784)).sum().backward()  # moves the running statistics
    with torch.no_grad():
        for p in used.parameters():
            p.add_(1.0)
    used.reset_parameters(torch.Generator().manual_seed(7))
    for (name, a), b in zip(used.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
