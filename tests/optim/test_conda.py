"""Conda against a plain restatement of jie040109/Conda@449af71 (conda.py + projector.py)."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch

from focus_optim import make_optimizer
from focus_optim.optim.conda import Conda, conda_basis, conda_update_

F64 = torch.float64


def ref_conda(w0, grads, lr, betas, eps, wd, T, scale):
    """Refresh Q from the updated M when t (pre-increment) % T == 0; V kept across refreshes."""
    beta1, beta2 = betas
    w, m, v, Q = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0), None
    rows, cols = w0.shape
    svd_steps = []
    for t, g in enumerate(grads):
        m = beta1 * m + (1 - beta1) * g
        if Q is None or t % T == 0:
            U, _, Vh = torch.linalg.svd(m.float(), full_matrices=False)
            Q = (Vh if rows >= cols else U).to(w0.dtype)
            svd_steps.append(t)
        g_hat, m_hat = (g @ Q.T, m @ Q.T) if rows >= cols else (Q.T @ g, Q.T @ m)
        v = beta2 * v + (1 - beta2) * g_hat * g_hat
        denom = v.sqrt() + eps
        step_size = lr * math.sqrt(1 - beta2 ** (t + 1)) / (1 - beta1 ** (t + 1))
        n = m_hat / denom
        update = scale * (n @ Q if rows >= cols else Q @ n)
        w = w - step_size * update
        w = w - lr * wd * w
    return w, m, v, Q, svd_steps


def ref_regular(w0, grads, lr, betas, eps, wd):
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        w = w - lr * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t) * m / (v.sqrt() + eps)
        w = w - lr * wd * w
    return w


def grad_sequence(shape, steps, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def _train(opt, params, grads, start, stop):
    for t in range(start, stop):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()


@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (6, 6)])
def test_matrix_update_matches_official_code_across_refreshes(shape):
    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=F64)
    grads = grad_sequence(shape, 8)
    p = torch.nn.Parameter(w0.clone())
    hp = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    opt = Conda([p], update_proj_gap=3, scale=0.25, **hp)
    _train(opt, [p], [grads], 0, 8)
    want, m, v, Q, svd_steps = ref_conda(w0, grads, 0.01, (0.9, 0.99), 1e-8, 0.1, T=3, scale=0.25)
    assert svd_steps == [0, 3, 6]
    st = opt.state[p]
    assert st["last_svd_step"].item() == 6 and st["step"].item() == 8
    torch.testing.assert_close(st["ortho"], Q, rtol=0, atol=1e-12)
    torch.testing.assert_close(st["exp_avg"], m, rtol=0, atol=1e-14)
    torch.testing.assert_close(st["exp_avg_sq"], v, rtol=0, atol=1e-13)
    torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-12)
    k = min(shape)
    torch.testing.assert_close(st["ortho"] @ st["ortho"].T, torch.eye(k, dtype=F64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(12, 7), (7, 12)])
def test_functional_update_matches_official_code_across_refreshes(shape):
    """``conda_update_`` (the functional form the class's step is split from) on its own."""
    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=F64)
    grads = grad_sequence(shape, 8)
    k = min(shape)
    w, m, v, ortho = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0), torch.zeros(k, k, dtype=F64)
    step, last = torch.tensor(0.0), torch.tensor(-1.0)
    for g in grads:
        conda_update_(w, g, m, v, ortho, step, last, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8,
                      weight_decay=0.1, update_proj_gap=3, scale=0.25)  # fmt: skip
    want, want_m, want_v, Q, _ = ref_conda(w0, grads, 0.01, (0.9, 0.99), 1e-8, 0.1, T=3, scale=0.25)
    assert step.item() == 8 and last.item() == 6
    torch.testing.assert_close(ortho, Q, rtol=0, atol=1e-12)
    torch.testing.assert_close(m, want_m, rtol=0, atol=1e-14)
    torch.testing.assert_close(v, want_v, rtol=0, atol=1e-13)
    torch.testing.assert_close(w, want, rtol=0, atol=1e-12)


def test_second_moment_is_not_reset_or_rotated_on_refresh():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 5, dtype=F64))
    opt = Conda([p], update_proj_gap=2)
    grads = grad_sequence((8, 5), 3)
    _train(opt, [p], [grads], 0, 2)
    v_before, q_before = opt.state[p]["exp_avg_sq"].clone(), opt.state[p]["ortho"].clone()
    _train(opt, [p], [grads], 2, 3)  # t = 2: refresh
    q = opt.state[p]["ortho"]
    assert not torch.allclose(q, q_before)
    g_hat = grads[2] @ q.T
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], 0.999 * v_before + 0.001 * g_hat * g_hat)


def test_regular_groups_are_hf_adam_with_decay_after_the_update():
    torch.manual_seed(0)
    w0, b0 = torch.randn(6, 5, dtype=F64), torch.randn(5, dtype=F64)
    w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    opt = Conda([{"params": [w]}, {"params": [b], "matrix": False}], lr=0.01, weight_decay=0.2, eps=1e-3)
    gb = grad_sequence((5,), 6, seed=1)
    _train(opt, [w, b], [grad_sequence((6, 5), 6), gb], 0, 6)
    torch.testing.assert_close(
        b.detach(), ref_regular(b0, gb, 0.01, (0.9, 0.999), 1e-3, 0.2), rtol=0, atol=1e-14
    )
    assert set(opt.state[b]) == {"step", "exp_avg", "exp_avg_sq"}


def _walk(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _walk(v)
    else:
        yield obj


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_across_an_svd_refresh(dtype):
    torch.manual_seed(1)
    init = [torch.randn(9, 5).to(dtype), torch.randn(4, 11).to(dtype), torch.randn(5).to(dtype)]
    grads = [
        [g.to(dtype) for g in grad_sequence(x.shape, 10, seed=i, dtype=torch.float32)]
        for i, x in enumerate(init)
    ]

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "matrix": False}]

    hp = dict(lr=0.01, weight_decay=0.1, update_proj_gap=4, fp32_state=True)
    ps = [torch.nn.Parameter(x.clone()) for x in init]
    _train(Conda(groups(ps), **hp), ps, grads, 0, 10)
    qs = [torch.nn.Parameter(x.clone()) for x in init]
    opt2 = Conda(groups(qs), **hp)
    _train(opt2, qs, grads, 0, 3)  # saved before the refresh at t = 4 (and 8)
    sd = opt2.state_dict()
    leaves = list(_walk(sd["state"]))
    assert all(isinstance(x, torch.Tensor | int | float | str) for x in leaves)
    buf = io.BytesIO()
    torch.save({"opt": sd, "params": [q.detach() for q in qs]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rs = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    opt3 = Conda(groups(rs), lr=1.0, update_proj_gap=4, fp32_state=True)
    opt3.load_state_dict(saved["opt"])
    st = opt3.state[rs[0]]
    assert st["last_svd_step"].device.type == "cpu" and st["last_svd_step"].dtype == torch.float32
    assert st["ortho"].dtype == torch.float32 and st["ortho"].shape == (5, 5)
    assert opt3.state[rs[1]]["ortho"].shape == (4, 4)
    _train(opt3, rs, grads, 3, 10)
    assert opt3.state[rs[0]]["last_svd_step"].item() == 8
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())


def test_ensemble_of_stacked_matrices_uses_batched_svd_and_equals_separate_runs():
    torch.manual_seed(0)
    lrs = [0.01, 0.003, 0.0]
    w0 = torch.randn(3, 10, 6, dtype=F64)
    grads = grad_sequence((3, 10, 6), 5)
    p = torch.nn.Parameter(w0.clone())
    opt = make_optimizer("conda", [p], ensemble_dims=1, lr=torch.tensor(lrs, dtype=F64), update_proj_gap=2)
    _train(opt, [p], [grads], 0, 5)
    assert opt.state[p]["ortho"].shape == (3, 6, 6)
    for i in range(3):
        want, *_ = ref_conda(w0[i], [g[i] for g in grads], lrs[i], (0.9, 0.999), 1e-8, 0.0, T=2, scale=1.0)
        torch.testing.assert_close(p.detach()[i], want, rtol=0, atol=1e-12)


def test_conda_basis_is_the_std_rule():
    torch.manual_seed(0)
    for shape in [(9, 4), (4, 9)]:
        M = torch.randn(shape, dtype=F64)
        Q = conda_basis(M)
        assert Q.shape == (min(shape), min(shape)) and Q.dtype == F64
        U, _, Vh = torch.linalg.svd(M.float(), full_matrices=False)
        torch.testing.assert_close(Q, (Vh if shape[0] >= shape[1] else U).double())


def test_maximize_does_not_mutate_grad_and_equals_negated_minimisation():
    torch.manual_seed(0)
    x0, g = torch.randn(5, 4, dtype=F64), torch.randn(5, 4, dtype=F64)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    o1, o2 = Conda([p], maximize=True), Conda([q])
    for _ in range(3):
        p.grad, q.grad = g.clone(), -g
        o1.step()
        o2.step()
        assert torch.equal(p.grad, g)
    assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(0.9, 1.0)), "betas[1]"),
        (dict(eps=0.0), "eps"),
        (dict(update_proj_gap=0), "update_proj_gap"),
        (dict(proj_type="left"), "proj_type"),
        (dict(correct_bias="yes"), "correct_bias"),
        (dict(matrix=None), "matrix"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match="Invalid " + re.escape(needle) + ".*allowed"):
        Conda([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_only_2d_matrices_are_accepted():
    with pytest.raises(ValueError, match=r"matrix update needs 2 dims.*shape \(5,\)"):
        Conda([torch.nn.Parameter(torch.zeros(5))])


def test_matches_pytorch_optimizer_conda_when_refreshing_every_step():
    """pytorch_optimizer refreshes Q at 1-based steps 1, T, 2T, ... (ours and the official code at
    1, T+1, 2T+1, ...); with T = 1 both refresh every step and the updates agree."""
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    x0 = [torch.randn(7, 4, dtype=F64), torch.randn(3, 8, dtype=F64), torch.randn(4, dtype=F64)]
    ps = [torch.nn.Parameter(x.clone()) for x in x0]
    qs = [torch.nn.Parameter(x.clone()) for x in x0]
    ours = Conda([{"params": ps[:2]}, {"params": ps[2:], "matrix": False}], lr=0.01, weight_decay=0.1,
                 update_proj_gap=1, scale=0.25)  # fmt: skip
    theirs = po.Conda(qs, lr=0.01, weight_decay=0.1, update_proj_gap=1, scale=0.25, foreach=False)
    for _ in range(6):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)


def test_pytorch_optimizer_conda_refreshes_one_step_earlier():
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    x0 = torch.randn(7, 4, dtype=F64)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    ours, theirs = Conda([p], update_proj_gap=3), po.Conda([q], update_proj_gap=3, foreach=False)
    diffs = []
    for _ in range(4):
        g = torch.randn(7, 4, dtype=F64)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        diffs.append((p - q).abs().max().item())
    assert diffs[0] < 1e-15 and diffs[1] < 1e-15  # same Q from step 1
    assert diffs[2] > 1e-4  # step 3: theirs refreshes (3 % 3 == 0), ours waits for t = 3 (step 4)
