"""Lion against a plain restatement of google/automl's lion_pytorch.py, plus torch-native behaviour."""

from __future__ import annotations

import io
import re

import pytest
import torch

from focus_optim import make_optimizer
from focus_optim.optim.lion import Lion

F64 = torch.float64
PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True)}


def reference_lion(theta0, grads, lrs, beta1, beta2, wd, store=None):
    """Decay first, sign of the beta1 interpolation, then the beta2 momentum update. ``store``: the
    dtype theta is kept in between steps (each step computed in theta0's dtype, then rounded)."""

    def kept(x):
        return x if store is None else x.to(store).to(theta0.dtype)

    theta, m = kept(theta0.clone()), torch.zeros_like(theta0)
    for g, lr in zip(grads, lrs):
        theta = theta * (1 - lr * wd)
        c = beta1 * m + (1 - beta1) * g
        theta = kept(theta - lr * torch.sign(c))
        m = beta2 * m + (1 - beta2) * g
    return theta, m


def grad_sequence(shape, steps, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def _train(opt, params, grads, start, stop):
    for t in range(start, stop):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()


@pytest.mark.parametrize("path", list(PATHS))
def test_matches_restatement_with_groups_and_schedule(path):
    torch.manual_seed(0)
    shapes = [(4, 3), (7,)]
    inits = [torch.randn(s, dtype=F64) for s in shapes]
    params = [torch.nn.Parameter(x.clone()) for x in inits]
    hp = [
        dict(lr=0.05, betas=(0.9, 0.99), weight_decay=0.3),
        dict(lr=0.02, betas=(0.5, 0.8), weight_decay=0.0),
    ]
    opt = Lion([{"params": [p], **h} for p, h in zip(params, hp)], **PATHS[path])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
    steps = 30
    grads = [grad_sequence(s, steps, seed=i) for i, s in enumerate(shapes)]
    for t in range(steps):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()
        sched.step()
    for i, (p, h) in enumerate(zip(params, hp)):
        lrs = [h["lr"] / (1 + 0.1 * t) for t in range(steps)]
        want, m = reference_lion(inits[i], grads[i], lrs, *h["betas"], h["weight_decay"])
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=0, atol=1e-12)
        assert opt.state[p]["step"].item() == steps


def test_update_uses_interpolation_not_the_stored_momentum():
    """Step 2: m = 0.1 > 0 before and after, yet c = 0.5*0.1 + 0.5*(-0.3) < 0 sets the direction."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=F64))
    opt = Lion([p], lr=1.0, betas=(0.5, 0.9))
    p.grad = torch.ones(1, dtype=F64)
    opt.step()  # c = 0.5 > 0: p = -1; m = 0.1
    p.grad = torch.full((1,), -0.3, dtype=F64)
    opt.step()  # c = -0.1 < 0: p = 0; m = 0.9*0.1 - 0.03 = 0.06
    assert p.item() == 0.0
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.9 * 0.1 + 0.1 * -0.3], dtype=F64))


def test_sign_of_zero_is_zero():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Lion([p], lr=0.1)
    p.grad = torch.tensor([0.0, 1.0, -1.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 0.9, 1.1]))


@pytest.mark.parametrize("path", list(PATHS))
def test_state_dict_round_trip_continues_bit_identically(path):
    torch.manual_seed(1)
    shapes = [(3, 4), (5,)]
    init = [torch.randn(s) for s in shapes]
    grads = [grad_sequence(s, 12, seed=i, dtype=torch.float32) for i, s in enumerate(shapes)]
    hp = dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, **PATHS[path])
    ps = [torch.nn.Parameter(x.clone()) for x in init]
    _train(Lion(ps, **hp), ps, grads, 0, 12)

    qs = [torch.nn.Parameter(x.clone()) for x in init]
    opt2 = Lion(qs, **hp)
    _train(opt2, qs, grads, 0, 5)
    buf = io.BytesIO()
    torch.save({"opt": opt2.state_dict(), "params": [q.detach() for q in qs]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rs = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    opt3 = Lion(rs, lr=5.0, **PATHS[path])
    opt3.load_state_dict(saved["opt"])
    _train(opt3, rs, grads, 5, 12)
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())


def test_maximize_does_not_mutate_grad_and_equals_negated_minimisation():
    x0, g = torch.randn(6, dtype=F64), torch.randn(6, dtype=F64)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    o1 = Lion([p], lr=0.1, weight_decay=0.1, maximize=True)
    o2 = Lion([q], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        p.grad, q.grad = g.clone(), -g
        o1.step()
        o2.step()
        assert torch.equal(p.grad, g)
    assert torch.equal(p.detach(), q.detach())


def test_per_member_lr_equals_separate_runs():
    torch.manual_seed(0)
    E, lrs, wds = 3, [0.1, 0.01, 0.0], [0.0, 0.5, 0.2]
    x0 = torch.randn(E, 4, dtype=F64)
    grads = grad_sequence((E, 4), 5)
    p = torch.nn.Parameter(x0.clone())
    opt = make_optimizer(
        "lion", [p], lr=torch.tensor(lrs, dtype=F64), weight_decay=torch.tensor(wds, dtype=F64)
    )
    _train(opt, [p], [grads], 0, 5)
    for i in range(E):
        want, _ = reference_lion(x0[i], [g[i] for g in grads], [lrs[i]] * 5, 0.9, 0.99, wds[i])
        torch.testing.assert_close(p.detach()[i], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_bf16_params_with_fp32_state(foreach):
    """Each step computed in fp32 from the stored bf16 parameter and rounded once: the float64
    restatement with theta rounded to bf16 after every step, to the bit; the momentum in fp32."""
    torch.manual_seed(0)
    x0 = torch.randn(64).bfloat16()
    p = torch.nn.Parameter(x0.clone())
    opt = Lion([p], lr=0.01, weight_decay=0.1, fp32_state=True, foreach=foreach)
    grads = [g.bfloat16() for g in grad_sequence((64,), 5, dtype=torch.float32)]
    for g in grads:
        p.grad = g.clone()
        opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32 and p.dtype == torch.bfloat16
    want, m = reference_lion(
        x0.double(), [g.double() for g in grads], [0.01] * 5, 0.9, 0.99, 0.1, torch.bfloat16
    )
    assert torch.equal(p.detach().double(), want)
    torch.testing.assert_close(opt.state[p]["exp_avg"].double(), m, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(1.0, 0.9)), "betas[0]"),
        (dict(betas=(0.9, -0.1)), "betas[1]"),
        (dict(betas=(0.9,)), "betas"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match="Invalid " + re.escape(needle) + ".*allowed"):
        Lion([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_compiled_step_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    x0 = [torch.randn(8, 4), torch.randn(4)]
    grads = [[torch.randn_like(x) for x in x0] for _ in range(3)]

    def run(compiled):
        ps = [torch.nn.Parameter(x.clone()) for x in x0]
        opt = Lion(ps, lr=0.01, weight_decay=0.1, foreach=True)
        step = torch.compile(opt.step) if compiled else opt.step
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            step()
        return [p.detach() for p in ps]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("path", list(PATHS))
def test_matches_pytorch_optimizer_lion(path):
    """Same conventions (decoupled decay scaled by lr, first): equal up to rounding (lerp vs mul/add)."""
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    x0 = [torch.randn(5, 3, dtype=F64), torch.randn(4, dtype=F64)]
    ps = [torch.nn.Parameter(x.clone()) for x in x0]
    qs = [torch.nn.Parameter(x.clone()) for x in x0]
    ours = Lion(ps, lr=0.01, betas=(0.9, 0.99), weight_decay=0.2, **PATHS[path])
    theirs = po.Lion(qs, lr=0.01, betas=(0.9, 0.99), weight_decay=0.2, foreach=path == "foreach")
    for _ in range(10):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)
