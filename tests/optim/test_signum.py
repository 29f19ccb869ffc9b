"""Signum against a plain restatement of MXNet's ``SignumKernel`` (``src/operator/optimizer_op-inl.h``):

    m <- beta * m + (1 - beta) * (g + wd * w)        (coupled ``wd``)
    w <- (1 - lr * wd_lh) * w - lr * sign(m)         (decoupled ``wd_lh``)

both decays on the pre-update weights. ``decoupled_weight_decay`` picks which one ``weight_decay``
is. The paths' agreement with each other is in ``test_paths.py``.
"""

from __future__ import annotations

import pytest
import torch

from focus_optim import Signum

F64 = torch.float64


def mxnet_signum(w0, grads, lrs, *, momentum, wd=0.0, wd_lh=0.0):
    w, m = w0.clone(), torch.zeros_like(w0)
    for g, lr in zip(grads, lrs):
        m = momentum * m + (1 - momentum) * (g + wd * w)
        w = (1 - lr * wd_lh) * w - lr * torch.sign(m)
    return w


def ours(w0, grads, lrs, path, **kwargs):
    p = torch.nn.Parameter(w0.clone())
    flags = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[path]
    opt = Signum([p], lr=lrs[0], **kwargs, **flags)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lrs[min(t, len(lrs) - 1)] / lrs[0])
    for g in grads:
        p.grad = g.clone()
        opt.step()
        sched.step()
    return p.detach()


@pytest.mark.parametrize("path", ["single", "foreach", "fused"])
@pytest.mark.parametrize("decoupled", [True, False])
def test_matches_mxnet_kernel(path, decoupled):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(9, 4, generator=gen, dtype=F64)
    # weights of size ~1 and gradients of ~0.05: the coupled term changes the momentum's sign often
    grads = [0.05 * torch.randn(9, 4, generator=gen, dtype=F64) for _ in range(25)]
    lrs = [0.03 / (1 + 0.1 * t) for t in range(25)]
    decay = dict(wd_lh=0.3) if decoupled else dict(wd=0.3)
    expected = mxnet_signum(w0, grads, lrs, momentum=0.9, **decay)
    got = ours(w0, grads, lrs, path, momentum=0.9, weight_decay=0.3, decoupled_weight_decay=decoupled)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    other = mxnet_signum(w0, grads, lrs, momentum=0.9, **(dict(wd=0.3) if decoupled else dict(wd_lh=0.3)))
    assert (got - other).abs().max() > 1e-3  # the two decays differ here: the test tells them apart


def test_coupled_decay_with_maximize_decays_toward_zero_and_leaves_grad_untouched():
    """As in ``torch.optim.SGD``: maximize negates the gradient, then the L2 term is added, so
    maximizing f equals minimizing -f with the same decay."""
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(5, 3, generator=gen, dtype=F64)
    grads = [0.05 * torch.randn(5, 3, generator=gen, dtype=F64) for _ in range(10)]
    for path in ("single", "foreach", "fused"):
        p = torch.nn.Parameter(w0.clone())
        opt = Signum([p], lr=0.02, weight_decay=0.3, decoupled_weight_decay=False, maximize=True,
                     **({"foreach": path == "foreach"} if path != "fused" else {"fused": True}))  # fmt: skip
        for g in grads:
            p.grad = g.clone()
            opt.step()
            assert torch.equal(p.grad, g), f"{path}: .grad modified"
        expected = mxnet_signum(w0, [-g for g in grads], [0.02] * 10, momentum=0.9, wd=0.3)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)


def test_decoupled_weight_decay_must_be_a_bool():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        Signum([p], decoupled_weight_decay="no")
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        Signum([{"params": [p], "decoupled_weight_decay": 1}])
