"""FOCUS against an independent restatement of the paper's Algorithm 1, plus torch-native behaviour."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch

from focus_optim import FOCUS, Signum

F64 = torch.float64


# --- an independent restatement of Algorithm 1 (and of the reference code's order) -------------
def tie_sign(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """sign(x), with |x| at rounding level of ``scale`` counted as the exact tie it is in math."""
    s = torch.sign(x)
    return torch.where(x.abs() <= 1e-12 * scale.abs().clamp_min(1e-300), torch.zeros_like(s), s)


def reference_focus(
    theta0, grads, lrs, beta1, beta2, gamma, wd, order="algorithm1", store=None, state_store=None
):
    """Plain restatement: m, theta_bar start at 0; t counts from 1. ``store`` / ``state_store``: the
    dtype theta / (m, theta_bar) are kept in between steps (each step computed in theta0's dtype,
    then rounded to it), as low-precision parameters and state are."""

    def kept(x, dtype):
        return x if dtype is None else x.to(dtype).to(theta0.dtype)

    theta = kept(theta0.clone(), store)
    m = torch.zeros_like(theta)
    bar = torch.zeros_like(theta)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = kept(beta1 * m + (1 - beta1) * g, state_store)
        bar = kept(beta2 * bar + (1 - beta2) * theta, state_store)
        hat = bar / (1 - beta2**t)
        pre = theta.clone()
        if order == "algorithm1":
            theta = theta - lr * wd * hat
        attraction = tie_sign(theta - hat, theta)
        step = torch.sign(m) + gamma * attraction
        if order == "decoupled":
            step = step + wd * pre
        theta = theta - lr * step
        if order == "reference":
            theta = theta - lr * wd * hat
        theta = kept(theta, store)
    return theta, m, bar


def grad_sequence(shape, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=F64) for _ in range(steps)]


PATHS = {
    "single": dict(foreach=False),
    "foreach": dict(foreach=True),
}


@pytest.mark.parametrize("order", ["algorithm1", "reference", "decoupled"])
@pytest.mark.parametrize("path", list(PATHS))
def test_matches_restatement_with_groups_and_schedule(order, path):
    torch.manual_seed(0)
    shapes = [(4, 3), (7,)]
    inits = [torch.randn(s, dtype=F64) for s in shapes]
    params = [torch.nn.Parameter(x.clone()) for x in inits]
    hp = [dict(lr=0.05, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1),
          dict(lr=0.02, betas=(0.8, 0.9), gamma=-0.3, weight_decay=0.0)]  # fmt: skip
    opt = FOCUS([{"params": [p], **h} for p, h in zip(params, hp)], decay_mode=order, **PATHS[path])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
    steps = 40
    grads = [grad_sequence(s, steps, seed=i) for i, s in enumerate(shapes)]
    for t in range(steps):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()
        sched.step()
    for i, (p, h) in enumerate(zip(params, hp)):
        lrs = [h["lr"] / (1 + 0.1 * t) for t in range(steps)]
        want, m, bar = reference_focus(
            inits[i], grads[i], lrs, *h["betas"], h["gamma"], h["weight_decay"], order
        )
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=0, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["param_avg"], bar, rtol=0, atol=1e-12)
        assert opt.state[p]["step"].item() == steps


@pytest.mark.parametrize("beta2", [0.99, 0.9, 0.3, 0.05])
@pytest.mark.parametrize("path", ["single", "foreach", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_first_step_has_no_attraction(beta2, path, dtype):
    """theta_hat_1 = theta_1 exactly, so step 1 is a pure sign-of-momentum step (no decay), on every
    path and for beta2 below 0.5 too (where a lerp's second branch, contracted into an FMA by the
    compiled fused path, used to leave a rounding-error attraction)."""
    p = torch.nn.Parameter(torch.randn(1000, dtype=dtype))
    before = p.detach().clone()
    opt = FOCUS([p], lr=0.1, betas=(0.9, beta2), gamma=0.5, **{**PATHS, "fused": dict(fused=True)}[path])
    p.grad = torch.randn(1000, dtype=dtype)
    opt.step()
    torch.testing.assert_close(p.detach(), before - 0.1 * torch.sign(p.grad), rtol=0, atol=0)


def test_momentum_persists_across_steps():
    p = torch.nn.Parameter(torch.zeros(5, dtype=F64))
    opt = FOCUS([p], lr=0.0, betas=(0.5, 0.9))
    g1, g2 = torch.full((5,), 2.0, dtype=F64), torch.full((5,), -1.0, dtype=F64)
    p.grad = g1
    opt.step()
    p.grad = g2
    opt.step()
    # m = 0.5 * (0.5 * 2) - 0.5 * 1 = 0
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.5 * (0.5 * g1) + 0.5 * g2)


def test_param_first_getting_gradient_at_step_k():
    a = torch.nn.Parameter(torch.randn(3, dtype=F64))
    b = torch.nn.Parameter(torch.randn(3, dtype=F64))
    b0 = b.detach().clone()
    opt = FOCUS([a, b], lr=0.1, betas=(0.9, 0.9), gamma=0.2, weight_decay=0.1)
    grads = grad_sequence((3,), 6, seed=3)
    for t in range(6):
        a.grad = torch.randn(3, dtype=F64)
        b.grad = grads[t].clone() if t >= 2 else None
        opt.step()
        if t < 2:
            assert b not in opt.state  # no gradient yet: no state, untouched
            assert torch.equal(b.detach(), b0)
    assert opt.state[b]["step"].item() == 4 and opt.state[a]["step"].item() == 6
    want, _, _ = reference_focus(b0, grads[2:], [0.1] * 4, 0.9, 0.9, 0.2, 0.1)
    torch.testing.assert_close(b.detach(), want, rtol=0, atol=1e-12)


def test_converges_on_quadratic_with_decaying_lr():
    A = torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=F64))
    b = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    optimum = torch.linalg.solve(A, b)
    x = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = FOCUS([x], lr=0.05, betas=(0.9, 0.99), gamma=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t / 50))
    for _ in range(3000):
        opt.zero_grad()
        (0.5 * x @ A @ x - b @ x).backward()
        opt.step()
        sched.step()
    assert (x.detach() - optimum).abs().max() < 2e-3


def test_converges_on_rosenbrock_with_decaying_lr():
    x = torch.nn.Parameter(torch.tensor([-1.5, 2.0], dtype=F64))
    opt = FOCUS([x], lr=0.01, betas=(0.9, 0.99), gamma=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t / 200))
    for _ in range(8000):
        opt.zero_grad()
        ((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2).backward()
        opt.step()
        sched.step()
    assert (x.detach() - 1).abs().max() < 2e-2


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(lr=-1.0), "lr"),
        (dict(lr=math.inf), "lr"),
        (dict(lr=math.nan), "lr"),
        (dict(betas=(1.0, 0.9)), "betas[0]"),
        (dict(betas=(0.9, -0.1)), "betas[1]"),
        (dict(betas=(0.9,)), "betas"),
        (dict(gamma=math.inf), "gamma"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(decay_mode="sideways"), "decay_mode"),
        (dict(lr=torch.tensor([0.1, -0.1])), "lr"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match="Invalid " + re.escape(needle) + ".*allowed"):
        FOCUS([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_per_member_tensors_are_validated_whole_and_the_error_shows_the_bad_values():
    """A per-member lr over a million ensemble members (the toy lab has one per trajectory): every
    element is checked, and the message shows the offending ones, not the first few."""
    p = torch.nn.Parameter(torch.zeros(1_000_000, 2))
    lr = torch.full((1_000_000,), 0.01)
    lr[777_777], lr[999_999] = -2.0, math.nan
    message = "Invalid lr: tensor with values [-2.0, nan]... (allowed: finite and >= 0)"
    with pytest.raises(ValueError, match=re.escape(message)):
        FOCUS([p], lr=lr)
    lr[777_777] = lr[999_999] = 0.5
    wd = torch.arange(1_000_000)  # integer tensors are real numbers too
    assert FOCUS([p], lr=lr, weight_decay=wd).param_groups[0]["lr"] is lr
    with pytest.raises(ValueError, match=re.escape("Invalid weight_decay: tensor with values [-1.0]...")):
        FOCUS([p], lr=lr, weight_decay=wd - 1)


def test_negative_gamma_is_allowed_and_per_group_values_are_validated():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = FOCUS([p], gamma=-0.5)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.lr"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -3.0})


def _train(opt, params, grads, start, stop):
    for t in range(start, stop):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()


@pytest.mark.parametrize("path", list(PATHS))
def test_state_dict_round_trip_continues_bit_identically(path):
    torch.manual_seed(1)
    shapes = [(3, 4), (5,)]
    init = [torch.randn(s) for s in shapes]
    grads = [grad_sequence(s, 20, seed=i) for i, s in enumerate(shapes)]
    grads = [[g.float() for g in gs] for gs in grads]

    ps = [torch.nn.Parameter(x.clone()) for x in init]
    opt = FOCUS(ps, lr=0.01, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1, **PATHS[path])
    _train(opt, ps, grads, 0, 20)

    qs = [torch.nn.Parameter(x.clone()) for x in init]
    opt2 = FOCUS(qs, lr=0.01, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1, **PATHS[path])
    _train(opt2, qs, grads, 0, 8)
    buf = io.BytesIO()
    torch.save({"opt": opt2.state_dict(), "params": [q.detach() for q in qs]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rs = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    opt3 = FOCUS(rs, lr=123.0, betas=(0.5, 0.5), gamma=0.0, **PATHS[path])  # overwritten by load
    opt3.load_state_dict(saved["opt"])
    _train(opt3, rs, grads, 8, 20)
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())
    assert opt3.state[rs[0]]["step"].device.type == "cpu"


def test_lr_scheduler_change_takes_effect():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = FOCUS([p], lr=1.0, betas=(0.0, 0.0), gamma=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    p.grad = torch.ones(4)
    opt.step()
    sched.step()
    before = p.detach().clone()
    opt.step()
    torch.testing.assert_close(before - p.detach(), torch.full((4,), 0.1))


def test_tensor_lr_and_closure():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = FOCUS([p], lr=torch.tensor(0.25), betas=(0.0, 0.0), gamma=0.0)

    def closure():
        opt.zero_grad()
        loss = (p - 1).pow(2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(3.0)
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.25))


def test_maximize_does_not_mutate_grad_and_equals_negated_minimisation():
    torch.manual_seed(0)
    x0 = torch.randn(6, dtype=F64)
    g = torch.randn(6, dtype=F64)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    o1 = FOCUS([p], lr=0.1, gamma=0.2, weight_decay=0.1, maximize=True)
    o2 = FOCUS([q], lr=0.1, gamma=0.2, weight_decay=0.1)
    for _ in range(3):
        p.grad = g.clone()
        q.grad = -g
        o1.step()
        o2.step()
        assert torch.equal(p.grad, g)
    assert torch.equal(p.detach(), q.detach())


def test_complex_params_are_real_pairs():
    torch.manual_seed(0)
    z0 = torch.randn(5, dtype=torch.complex128)
    z = torch.nn.Parameter(z0.clone())
    r = torch.nn.Parameter(torch.view_as_real(z0).clone())
    oz = FOCUS([z], lr=0.1, gamma=0.2, weight_decay=0.1)
    orr = FOCUS([r], lr=0.1, gamma=0.2, weight_decay=0.1)
    for _ in range(4):
        g = torch.randn(5, dtype=torch.complex128)
        z.grad = g
        r.grad = torch.view_as_real(g).clone()
        oz.step()
        orr.step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())


def test_sparse_grad_is_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = FOCUS(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_params_and_fp32_state(dtype):
    torch.manual_seed(0)
    x0 = torch.randn(64)
    grads = [torch.randn(64) for _ in range(10)]
    results = {}
    for fp32_state in (False, True):
        p = torch.nn.Parameter(x0.to(dtype, copy=True))
        opt = FOCUS([p], lr=0.01, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1, fp32_state=fp32_state)
        for g in grads:
            p.grad = g.to(dtype)
            opt.step()
        want = torch.float32 if fp32_state else dtype
        assert opt.state[p]["exp_avg"].dtype == want and opt.state[p]["param_avg"].dtype == want
        assert p.dtype == dtype and torch.isfinite(p).all()
        results[fp32_state] = p.detach().float()
        # state dtype survives a state_dict round trip
        q = torch.nn.Parameter(x0.to(dtype, copy=True))
        o2 = FOCUS([q], fp32_state=fp32_state)
        o2.load_state_dict(opt.state_dict())
        assert o2.state[q]["exp_avg"].dtype == want
    # The restatement in float64, theta rounded to the parameter dtype after every step (and, for
    # fp32_state=False, m and theta_bar to it too).
    low = None if dtype == torch.float32 else dtype
    g64 = [g.to(dtype).double() for g in grads]
    hp = dict(lrs=[0.01] * 10, beta1=0.9, beta2=0.99, gamma=0.2, wd=0.1, store=low)
    want, _, _ = reference_focus(x0.double(), g64, **hp)
    # fp32 state: each step computed in fp32 from the stored parameter, rounded once, as restated
    tol = 1e-5 if low is None else 0.0
    assert (results[True].double() - want).abs().max() <= tol
    # Low-precision state: each sub-step rounds to the parameter dtype. In float16 that stays near
    # the restatement, closer than the decay's effect (a run without decay is > 0.02 away). In
    # bfloat16 the decay step (lr * wd * theta_hat ~ 1e-3 * theta) is below half an ulp and rounds
    # away on this path, as on any in-place bf16 update: only the sign steps are checked there.
    want_low, _, _ = reference_focus(x0.double(), g64, **hp, state_store=low)
    tol_low = {torch.float32: 1e-5, torch.float16: 0.016, torch.bfloat16: 0.15}[dtype]
    assert (results[False].double() - want_low).abs().max() < tol_low


def test_grad_scaler_skips_the_step_on_inf():
    model = torch.nn.Linear(4, 2)
    opt = FOCUS(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(3, 4)).sum()
    scaler.scale(loss).backward()
    model.weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert len(opt.state) == 0
    assert scaler.get_scale() == 2.0**7
    # and a finite step goes through, unscaled
    opt.zero_grad()
    scaler.scale(model(torch.randn(3, 4)).sum()).backward()
    scaler.step(opt)
    assert not torch.equal(before[0], model.weight.detach())


def test_state_memory_two_tensors_for_focus_one_for_signum():
    p = torch.nn.Parameter(torch.zeros(10, 10))
    for cls, keys in ((FOCUS, {"exp_avg", "param_avg"}), (Signum, {"exp_avg"})):
        opt = cls([p])
        p.grad = torch.ones(10, 10)
        opt.step()
        tensors = {k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.numel() == p.numel()}
        assert tensors == keys
        assert opt.state[p]["step"].numel() == 1


@pytest.mark.parametrize("path", list(PATHS))
def test_compiled_step_equals_eager(path):
    torch._dynamo.reset()
    torch.manual_seed(0)
    x0 = [torch.randn(8, 4), torch.randn(4)]
    grads = [[torch.randn_like(x) for x in x0] for _ in range(4)]

    def run(compiled):
        ps = [torch.nn.Parameter(x.clone()) for x in x0]
        opt = FOCUS(ps, lr=0.01, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1, **PATHS[path])
        step = torch.compile(opt.step) if compiled else opt.step
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            step()
        return [p.detach() for p in ps]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_none_grad_is_skipped_and_add_param_group_works():
    a = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.ones(2))
    opt = FOCUS([a])
    opt.add_param_group({"params": [b], "lr": 0.5, "gamma": 0.0})
    b.grad = torch.ones(2)
    opt.step()
    assert a not in opt.state and torch.equal(a.detach(), torch.ones(2))
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.5))


def test_reference_mode_equals_the_authors_loop():
    """decay_mode='reference' reproduces a restatement of the authors' focus.py (step 1 taken with
    gamma=0: their sign(p - pbar_hat) at t=1 is a rounding-error coin flip, ours an exact 0)."""
    from focus_optim.bench.reference_loop import ReferenceLoopFOCUS

    torch.manual_seed(0)
    x0 = torch.randn(50, dtype=F64)
    grads = grad_sequence((50,), 25, seed=5)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    ours = FOCUS([p], lr=0.01, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2, decay_mode="reference")
    theirs = ReferenceLoopFOCUS([q], lr=0.01, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2)
    for t, g in enumerate(grads):
        for opt in (ours, theirs):
            opt.param_groups[0]["gamma"] = 0.0 if t == 0 else 0.2
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ["single", "foreach"])
def test_matches_pytorch_optimizer_focus_and_differs_only_on_first_step_ties(path):
    """``pytorch_optimizer.FOCUS`` is the paper's Algorithm 1, as ``decay_mode="algorithm1"``.
    With decay, equal to rounding. Without it, their θ − θ̄/(1 − β₂) at step 1 is a rounding of
    0 whose sign moves a coordinate by ±lr·γ; here θ̂ = θ exactly, so the first step has no
    attraction."""
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    x0 = [torch.randn(6, 5, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    lr, gamma, foreach = 0.01, 0.2, path == "foreach"
    for wd in (0.1, 0.0):
        ps = [torch.nn.Parameter(x.clone()) for x in x0]
        qs = [torch.nn.Parameter(x.clone()) for x in x0]
        ours = FOCUS(ps, lr=lr, betas=(0.9, 0.99), gamma=gamma, weight_decay=wd, foreach=foreach)
        theirs = po.FOCUS(qs, lr=lr, betas=(0.9, 0.99), gamma=gamma, weight_decay=wd, foreach=foreach)
        for t in range(10):
            for p, q in zip(ps, qs):
                g = torch.randn_like(p)
                p.grad, q.grad = g.clone(), g.clone()
            ours.step()
            theirs.step()
            if wd == 0.0 and t == 0:
                for p, q, x in zip(ps, qs, x0):
                    assert torch.equal(p.detach(), x - lr * torch.sign(p.grad))  # no attraction
                    gap = (q - p).detach().abs()
                    assert bool(
                        ((gap == 0) | torch.isclose(gap, torch.tensor(lr * gamma, dtype=gap.dtype))).all()
                    )
                break
        else:
            for p, q in zip(ps, qs):
                torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)
