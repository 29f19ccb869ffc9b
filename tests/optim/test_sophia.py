"""Sophia-G against a plain restatement of Liuhong99/Sophia@a7e1572, and its training-loop protocol."""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn.functional as F

from focus_optim import make_optimizer
from focus_optim.optim import protocol
from focus_optim.optim.sophia import SophiaG, sampled_label_loss

F64 = torch.float64
PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True)}


def reference_sophia(theta0, grads, hess_grads, lr, beta1, beta2, rho, bs, wd, eps=1e-15, paper_eps=False):
    """``hess_grads[t]`` (or None) is the sampled-label gradient seen by update_hessian after step t."""
    theta, m, h = theta0.clone(), torch.zeros_like(theta0), torch.zeros_like(theta0)
    for g, gh in zip(grads, hess_grads):
        theta = theta * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        denom = torch.clamp(rho * bs * h, min=eps) if paper_eps else rho * bs * h + eps
        theta = theta - lr * torch.clamp(m / denom, -1, 1)
        if gh is not None:
            h = beta2 * h + (1 - beta2) * gh * gh
    return theta, m, h


def grad_sequence(shape, steps, seed=0, dtype=F64, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def _run(opt, params, grads, hess, bs, start, stop):
    for t in range(start, stop):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step(bs=bs)
        if opt.hessian_due(t):
            for p, gh in zip(params, hess):
                p.grad = gh[t].clone()
            opt.update_hessian()


@pytest.mark.parametrize("eps_mode", ["add", "max"])
@pytest.mark.parametrize("path", list(PATHS))
def test_matches_restatement_with_hessian_schedule(path, eps_mode):
    torch.manual_seed(0)
    shapes = [(4, 3), (7,)]
    inits = [torch.randn(s, dtype=F64) for s in shapes]
    params = [torch.nn.Parameter(x.clone()) for x in inits]
    k, steps, bs = 3, 14, 64
    eps = 1e-15 if eps_mode == "add" else 1e-12
    hp = dict(lr=0.01, betas=(0.965, 0.99), rho=0.04, weight_decay=0.2, eps=eps)
    opt = SophiaG(params, hessian_interval=k, eps_mode=eps_mode, **hp, **PATHS[path])
    grads = [grad_sequence(s, steps, seed=i, scale=0.01) for i, s in enumerate(shapes)]
    hess = [grad_sequence(s, steps, seed=10 + i, scale=0.05) for i, s in enumerate(shapes)]
    _run(opt, params, grads, hess, bs, 0, steps)
    for i, p in enumerate(params):
        hg = [hess[i][t] if t % k == k - 1 else None for t in range(steps)]
        want, m, h = reference_sophia(
            inits[i], grads[i], hg, 0.01, 0.965, 0.99, 0.04, bs, 0.2, eps, eps_mode == "max"
        )
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-13)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=0, atol=1e-15)
        torch.testing.assert_close(opt.state[p]["hessian"], h, rtol=0, atol=1e-15)
    # some coordinates are clipped, some are not: the test exercises both branches of the clip
    ratio = (opt.state[params[0]]["exp_avg"].abs() / (0.04 * bs * opt.state[params[0]]["hessian"])).flatten()
    assert (ratio < 1).any() and (ratio > 1).any()


def test_first_k_minus_1_steps_are_sign_momentum_steps():
    torch.manual_seed(0)
    x0 = torch.randn(50, dtype=F64)
    p = torch.nn.Parameter(x0.clone())
    opt = SophiaG([p], lr=0.01, weight_decay=0.1)
    theta, m = x0.clone(), torch.zeros_like(x0)
    for t in range(9):  # h = 0 until update_hessian after iteration 9 (k = 10)
        assert not opt.hessian_due(t)
        g = 1e-6 * torch.randn(50, dtype=F64)  # tiny gradients still saturate: |m| / 1e-15 >> 1
        p.grad = g.clone()
        opt.step(bs=491_520)
        m = 0.965 * m + 0.035 * g
        theta = theta * (1 - 0.01 * 0.1) - 0.01 * torch.sign(m)
        torch.testing.assert_close(p.detach(), theta, rtol=0, atol=1e-15)
    assert opt.hessian_due(9) and torch.count_nonzero(opt.state[p]["hessian"]) == 0


def test_protocol_helpers():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SophiaG([p], hessian_interval=4)
    assert protocol.step_kwargs(opt, tokens=1234) == {"bs": 1234}
    assert [i for i in range(13) if protocol.hessian_due(opt, i)] == [3, 7, 11]
    default = SophiaG([torch.nn.Parameter(torch.zeros(1))])
    assert [i for i in range(30) if default.hessian_due(i)] == [9, 19, 29]
    # protocol.update_hessian dispatches to the optimizer
    p.grad = torch.full((3,), 2.0)
    protocol.update_hessian(opt)
    torch.testing.assert_close(opt.state[p]["hessian"], torch.full((3,), 0.01 * 4.0))
    # a plain optimizer gets no extra kwargs and never a Hessian refresh
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert protocol.step_kwargs(sgd, tokens=5) == {} and not protocol.hessian_due(sgd, 9)
    # the refresh is one pass over the whole model: a group's own interval would be ignored
    q = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"Invalid param_groups\[1\]\.hessian_interval: 3 .*optimizer's"):
        SophiaG([{"params": [p]}, {"params": [q], "hessian_interval": 3}], hessian_interval=4)
    same = SophiaG([{"params": [p]}, {"params": [q], "hessian_interval": 4}], hessian_interval=4)
    assert len(same.param_groups) == 2


def test_bs_scales_the_clip_threshold():
    """m = 1, rho = 1, h = 0.01: m/(rho*bs*h) is 10 at bs = 10 (clipped to 1), 0.1 at bs = 1000."""
    out = {}
    for bs in (10, 1000):
        p = torch.nn.Parameter(torch.zeros(1, dtype=F64))
        opt = SophiaG([p], lr=1.0, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0)
        p.grad = torch.ones(1, dtype=F64) * 0.1  # h = 0.01 after update_hessian with beta2 = 0
        opt.update_hessian()
        p.grad = torch.ones(1, dtype=F64)  # m = 1
        opt.step(bs=bs)
        out[bs] = -p.item()
    assert out[10] == 1.0 and out[1000] == pytest.approx(0.1)


def test_sampled_label_loss_equals_ce_against_labels_drawn_from_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    loss = sampled_label_loss(logits, generator=torch.Generator().manual_seed(3))
    probs = torch.softmax(logits.detach().reshape(-1, 7), -1)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(-1)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 7), labels))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_sampled_labels_follow_the_model_distribution_and_give_zero_mean_gradient():
    """E_y[grad CE(z, y)] = softmax(z) - E[onehot(y)] = 0 for y ~ softmax(z); true labels do not."""
    z = torch.tensor([2.0, 0.0, -1.0, 0.5])
    logits = z.expand(20000, 4).clone().requires_grad_(True)
    sampled_label_loss(logits, generator=torch.Generator().manual_seed(0)).backward()
    mean_grad = logits.grad.sum(0)  # = softmax(z) - empirical label frequencies
    assert mean_grad.abs().max() < 0.015
    logits.grad = None
    F.cross_entropy(logits, torch.zeros(20000, dtype=torch.long)).backward()
    assert logits.grad.sum(0).abs().max() > 0.2


def test_sampled_label_loss_ignores_padding_positions():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    targets = torch.tensor([1, -1, 2, -1, 0, 4])
    gen_seed = 7
    got = sampled_label_loss(logits, targets, generator=torch.Generator().manual_seed(gen_seed))
    labels = torch.multinomial(
        torch.softmax(logits, -1), 1, generator=torch.Generator().manual_seed(gen_seed)
    )[:, 0]
    keep = targets != -1
    torch.testing.assert_close(got, F.cross_entropy(logits[keep], labels[keep]))


def test_training_loop_with_protocol_refreshes_hessian_only_on_schedule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11))
    opt = make_optimizer("sophiag", model, lr=1e-2, decay_embeddings=False)
    assert isinstance(opt, SophiaG)
    x = torch.randint(0, 11, (4, 5))
    for it in range(12):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).reshape(-1, 11), x.reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(**protocol.step_kwargs(opt, tokens=x.numel()))
        h = opt.state[model[1].weight]["hessian"]
        assert (torch.count_nonzero(h) > 0) == (it >= 10)
        if protocol.hessian_due(opt, it):
            opt.zero_grad(set_to_none=True)
            sampled_label_loss(model(torch.randint(0, 11, (4, 5)))).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            protocol.update_hessian(opt)
            opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("path", list(PATHS))
def test_state_dict_round_trip_continues_bit_identically(path):
    torch.manual_seed(1)
    init = [torch.randn(3, 4), torch.randn(5)]
    grads = [grad_sequence(x.shape, 12, seed=i, dtype=torch.float32, scale=0.01) for i, x in enumerate(init)]
    hess = [
        grad_sequence(x.shape, 12, seed=5 + i, dtype=torch.float32, scale=0.1) for i, x in enumerate(init)
    ]
    hp = dict(lr=0.01, rho=0.05, weight_decay=0.1, hessian_interval=3, **PATHS[path])
    ps = [torch.nn.Parameter(x.clone()) for x in init]
    _run(SophiaG(ps, **hp), ps, grads, hess, 100, 0, 12)
    qs = [torch.nn.Parameter(x.clone()) for x in init]
    opt2 = SophiaG(qs, **hp)
    _run(opt2, qs, grads, hess, 100, 0, 5)
    buf = io.BytesIO()
    torch.save({"opt": opt2.state_dict(), "params": [q.detach() for q in qs]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rs = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    opt3 = SophiaG(rs, lr=1.0, hessian_interval=3, **PATHS[path])
    opt3.load_state_dict(saved["opt"])
    _run(opt3, rs, grads, hess, 100, 5, 12)
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())


def test_maximize_does_not_mutate_grad_and_equals_negated_minimisation():
    x0, g, gh = torch.randn(6, dtype=F64), torch.randn(6, dtype=F64), torch.randn(6, dtype=F64)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    o1 = SophiaG([p], lr=0.1, maximize=True)
    o2 = SophiaG([q], lr=0.1)
    for o, x in ((o1, p), (o2, q)):
        x.grad = gh.clone()
        o.update_hessian()
    for _ in range(3):
        p.grad, q.grad = g.clone(), -g
        o1.step(bs=10)
        o2.step(bs=10)
        assert torch.equal(p.grad, g)
    assert torch.equal(p.detach(), q.detach())


def test_per_member_lr_equals_separate_runs():
    torch.manual_seed(0)
    lrs, wds = [0.1, 0.01, 0.0], [0.0, 0.5, 0.2]
    x0 = torch.randn(3, 4, dtype=F64)
    grads = grad_sequence((3, 4), 6, scale=0.01)
    hess = grad_sequence((3, 4), 6, seed=1, scale=0.1)
    p = torch.nn.Parameter(x0.clone())
    opt = SophiaG(
        [p], lr=torch.tensor(lrs, dtype=F64), weight_decay=torch.tensor(wds, dtype=F64), hessian_interval=2
    )
    _run(opt, [p], [grads], [hess], 50, 0, 6)
    for i in range(3):
        hg = [hess[t][i] if t % 2 == 1 else None for t in range(6)]
        want, _, _ = reference_sophia(x0[i], [g[i] for g in grads], hg, lrs[i], 0.965, 0.99, 0.04, 50, wds[i])
        torch.testing.assert_close(p.detach()[i], want, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(0.9, 1.0)), "betas[1]"),
        (dict(rho=-0.1), "rho"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(hessian_interval=0), "hessian_interval"),
        (dict(eps_mode="mul"), "eps_mode"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match="Invalid " + re.escape(needle) + ".*allowed"):
        SophiaG([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_bs_is_refused():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match=r"Invalid bs.*allowed"):
        SophiaG([p]).step(bs=0)


def test_compiled_step_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    x0 = [torch.randn(8, 4), torch.randn(4)]
    grads = [[0.01 * torch.randn_like(x) for x in x0] for _ in range(4)]

    def run(compiled):
        ps = [torch.nn.Parameter(x.clone()) for x in x0]
        opt = SophiaG(ps, lr=0.01, hessian_interval=2)
        step = torch.compile(opt.step) if compiled else opt.step
        for t, gs in enumerate(grads):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            step(bs=100)
            if opt.hessian_due(t):
                opt.update_hessian()
        return [p.detach() for p in ps]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
