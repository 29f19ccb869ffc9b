"""EXAdam against a plain restatement of AhmedMostafa16/EXAdam's exadam.py (v1 and v2)."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch

from focus_optim.optim.exadam import EXAdam

F64 = torch.float64
PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True)}


def reference_exadam(theta0, grads, lrs, beta1, beta2, eps, wd, growing_step=False):
    """The initial commit's loop; ``growing_step=False`` drops its step-size factor (paper v2)."""
    theta, m, v = theta0.clone(), torch.zeros_like(theta0), torch.zeros_like(theta0)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        theta = theta - lr * wd * theta
        b1, b2 = beta1**t, beta2**t
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        d1 = 1 + v / (v + eps) * b2
        d2 = 1 + m**2 / (m**2 + eps) * b1
        m_tilde = m / (1 - b1) * d1
        v_tilde = v / (1 - b2) * d2
        g_tilde = g / (1 - b1) * d1
        alpha = lr * math.log(math.sqrt(t + 1) * math.sqrt(2.0)) if growing_step else lr
        theta = theta - alpha * (m_tilde + g_tilde) / (v_tilde.sqrt() + eps)
    return theta, m, v


def grad_sequence(shape, steps, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def _train(opt, params, grads, start, stop):
    for t in range(start, stop):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()


@pytest.mark.parametrize("growing_step", [False, True])
@pytest.mark.parametrize("path", list(PATHS))
def test_matches_restatement_with_groups_and_schedule(path, growing_step):
    torch.manual_seed(0)
    shapes = [(4, 3), (7,)]
    inits = [torch.randn(s, dtype=F64) for s in shapes]
    params = [torch.nn.Parameter(x.clone()) for x in inits]
    hp = [dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
          dict(lr=0.003, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.0)]  # fmt: skip
    opt = EXAdam([{"params": [p], **h} for p, h in zip(params, hp)], growing_step=growing_step, **PATHS[path])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
    steps = 25
    grads = [grad_sequence(s, steps, seed=i) for i, s in enumerate(shapes)]
    for t in range(steps):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()
        sched.step()
    for i, (p, h) in enumerate(zip(params, hp)):
        lrs = [h["lr"] / (1 + 0.1 * t) for t in range(steps)]
        want, m, v = reference_exadam(
            inits[i], grads[i], lrs, *h["betas"], h["eps"], h["weight_decay"], growing_step
        )
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=1e-13, atol=0)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v, rtol=1e-13, atol=0)


def test_v1_step_is_v2_step_times_log_growth():
    """Same state at step t; v1's displacement is ln(sqrt(2(t+1))) times v2's (no decay)."""
    torch.manual_seed(0)
    x0 = torch.randn(10, dtype=F64)
    grads = grad_sequence((10,), 4)
    runs = {}
    for growing in (False, True):
        p = torch.nn.Parameter(x0.clone())
        opt = EXAdam([p], lr=1e-3, growing_step=growing)
        deltas = []
        for g in grads:
            before = p.detach().clone()
            p.grad = g.clone()
            opt.step()
            deltas.append(p.detach() - before)
        runs[growing] = deltas
    # only step 1 starts from the same parameters; later steps differ through the trajectory
    torch.testing.assert_close(runs[True][0], runs[False][0] * math.log(2.0), rtol=1e-12, atol=0)
    assert not torch.allclose(runs[True][3], runs[False][3])


def test_first_step_is_large_as_documented():
    """t = 1, beta (0.9, 0.999), v >> eps: update ~ 16*sign(g) per unit lr before alpha (spec 5.6)."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = EXAdam([p], lr=1.0)
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    opt.step()
    # m~ = 1.999 g, g~ = 19.99 g (d1 ~ 1.999), v~ = 1.9 g^2: 21.99 g/(sqrt(1.9)|g|) ~ 15.95 sign(g)
    torch.testing.assert_close(
        p.detach(), -torch.sign(p.grad) * 1.999 * 11 / math.sqrt(1.9), rtol=1e-3, atol=0
    )


def test_params_first_getting_gradients_at_different_steps_foreach_equals_single():
    torch.manual_seed(0)
    x0 = [torch.randn(3, dtype=F64), torch.randn(4, dtype=F64)]
    results = {}
    for path in PATHS:
        ps = [torch.nn.Parameter(x.clone()) for x in x0]
        opt = EXAdam(ps, lr=0.01, weight_decay=0.1, **PATHS[path])
        gen = torch.Generator().manual_seed(1)
        for t in range(6):
            ps[0].grad = torch.randn(3, generator=gen, dtype=F64)
            ps[1].grad = torch.randn(4, generator=gen, dtype=F64) if t >= 2 else None
            opt.step()
        assert opt.state[ps[1]]["step"].item() == 4
        results[path] = [p.detach() for p in ps]
    for a, b in zip(results["single"], results["foreach"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("path", list(PATHS))
def test_state_dict_round_trip_continues_bit_identically(path):
    torch.manual_seed(1)
    init = [torch.randn(3, 4), torch.randn(5)]
    grads = [grad_sequence(x.shape, 12, seed=i, dtype=torch.float32) for i, x in enumerate(init)]
    hp = dict(lr=0.01, weight_decay=0.1, growing_step=True, **PATHS[path])
    ps = [torch.nn.Parameter(x.clone()) for x in init]
    _train(EXAdam(ps, **hp), ps, grads, 0, 12)
    qs = [torch.nn.Parameter(x.clone()) for x in init]
    opt2 = EXAdam(qs, **hp)
    _train(opt2, qs, grads, 0, 5)
    buf = io.BytesIO()
    torch.save({"opt": opt2.state_dict(), "params": [q.detach() for q in qs]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rs = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    opt3 = EXAdam(rs, lr=3.0, **PATHS[path])
    opt3.load_state_dict(saved["opt"])
    assert opt3.param_groups[0]["growing_step"] is True
    _train(opt3, rs, grads, 5, 12)
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())


def test_maximize_does_not_mutate_grad_and_equals_negated_minimisation():
    x0, g = torch.randn(6, dtype=F64), torch.randn(6, dtype=F64)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    o1 = EXAdam([p], lr=0.1, weight_decay=0.1, maximize=True)
    o2 = EXAdam([q], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        p.grad, q.grad = g.clone(), -g
        o1.step()
        o2.step()
        assert torch.equal(p.grad, g)
    assert torch.equal(p.detach(), q.detach())


def test_per_member_lr_equals_separate_runs():
    torch.manual_seed(0)
    lrs, wds = [0.1, 0.01, 0.0], [0.0, 0.5, 0.2]
    x0 = torch.randn(3, 4, dtype=F64)
    grads = grad_sequence((3, 4), 5)
    p = torch.nn.Parameter(x0.clone())
    opt = EXAdam([p], lr=torch.tensor(lrs, dtype=F64), weight_decay=torch.tensor(wds, dtype=F64))
    _train(opt, [p], [grads], 0, 5)
    for i in range(3):
        want, _, _ = reference_exadam(x0[i], [g[i] for g in grads], [lrs[i]] * 5, 0.9, 0.999, 1e-8, wds[i])
        torch.testing.assert_close(p.detach()[i], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(1.0, 0.9)), "betas[0]"),
        (dict(eps=0.0), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match="Invalid " + re.escape(needle) + ".*allowed"):
        EXAdam([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_compiled_step_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    x0 = [torch.randn(8, 4), torch.randn(4)]
    grads = [[torch.randn_like(x) for x in x0] for _ in range(3)]

    def run(compiled):
        ps = [torch.nn.Parameter(x.clone()) for x in x0]
        opt = EXAdam(ps, lr=0.01, weight_decay=0.1, growing_step=True, foreach=False)
        step = torch.compile(opt.step) if compiled else opt.step
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            step()
        return [p.detach() for p in ps]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", list(PATHS))
def test_matches_pytorch_optimizer_exadam(path):
    """pytorch_optimizer's EXAdam is paper v2 with the same decoupled decay: equal up to rounding."""
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    x0 = [torch.randn(5, 3, dtype=F64), torch.randn(4, dtype=F64)]
    ps = [torch.nn.Parameter(x.clone()) for x in x0]
    qs = [torch.nn.Parameter(x.clone()) for x in x0]
    ours = EXAdam(ps, lr=0.01, weight_decay=0.2, **PATHS[path])
    theirs = po.EXAdam(qs, lr=0.01, weight_decay=0.2, foreach=path == "foreach")
    for _ in range(10):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)
