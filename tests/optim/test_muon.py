"""Muon against a plain restatement of KellerJordan/Muon@857d1ad (muon_update, adam_update)."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch

from focus_optim import make_optimizer
from focus_optim.optim.muon import Muon, newton_schulz

F64 = torch.float64


# --- the official functions, restated --------------------------------------------------------
def ref_zeropower(G, steps):
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X


def ref_muon_update(grad, momentum, beta=0.95, ns_steps=5, nesterov=True):
    grad = grad.clone()  # the official code blends into p.grad in place
    momentum.lerp_(grad, 1 - beta)
    update = grad.lerp_(momentum, beta) if nesterov else momentum
    if update.ndim == 4:
        update = update.view(len(update), -1)
    update = ref_zeropower(update, steps=ns_steps)
    update *= max(1, grad.size(-2) / grad.size(-1)) ** 0.5
    return update


def ref_muon(w0, grads, lr, beta, wd, nesterov=True, ns_steps=5):
    w, buf = w0.clone(), torch.zeros_like(w0)
    for g in grads:
        update = ref_muon_update(g, buf, beta, ns_steps, nesterov)
        w.mul_(1 - lr * wd)
        w.add_(update.reshape(w.shape), alpha=-lr)
    return w, buf


def ref_aux_adam(w0, grads, lr, betas, eps, wd):
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        m.lerp_(g, 1 - betas[0])
        v.lerp_(g.square(), 1 - betas[1])
        update = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
        w.mul_(1 - lr * wd)
        w.add_(update, alpha=-lr)
    return w


def grad_sequence(shape, steps, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def _train(opt, params, grads, start, stop):
    for t in range(start, stop):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()


# --- Newton-Schulz -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48), (4, 24, 40), (2, 3, 40, 24)])
def test_newton_schulz_singular_values_in_band(shape):
    torch.manual_seed(0)
    X = torch.randn(shape) * 100
    Y = newton_schulz(X, 5, dtype=torch.bfloat16)
    assert Y.dtype == torch.bfloat16 and Y.shape == X.shape
    s = torch.linalg.svdvals(Y.float())
    assert s.min() > 0.5 and s.max() < 1.5
    # same singular vectors as X: Y ~ U f(S) V^T, so U^T Y V is close to diagonal
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    core = U.mT @ Y.float() @ Vh.mT
    off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
    assert off.abs().max() < 0.1


def test_newton_schulz_batched_normalises_each_member_by_its_own_norm():
    torch.manual_seed(0)
    X = torch.randn(3, 16, 24, dtype=F64) * torch.tensor([1e-3, 1.0, 1e3], dtype=F64).view(3, 1, 1)
    Y = newton_schulz(X, 5)
    for i in range(3):
        torch.testing.assert_close(Y[i], newton_schulz(X[i], 5), rtol=1e-12, atol=1e-12)
    assert Y.dtype == F64


def test_newton_schulz_converges_to_polar_factor_with_classic_coefficients():
    """With (a, b, c) = (15/8, -10/8, 3/8) the quintic iteration converges to U V^T."""
    torch.manual_seed(0)
    X = torch.randn(12, 20, dtype=F64)
    Y = newton_schulz(X, 60, (15 / 8, -10 / 8, 3 / 8))
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    torch.testing.assert_close(Y, U @ Vh, rtol=0, atol=1e-8)


# --- the Muon update -------------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(24, 16), (16, 24), (8, 3, 3, 2)])
def test_matrix_update_matches_official_code(shape, nesterov):
    torch.manual_seed(0)
    w0 = torch.randn(shape)
    grads = grad_sequence(shape, 6)
    p = torch.nn.Parameter(w0.clone())
    opt = Muon([p], lr=0.02, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
    _train(opt, [p], [grads], 0, 6)
    want, buf = ref_muon(w0, grads, 0.02, 0.9, 0.1, nesterov)
    torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=0, atol=1e-7)


def test_conv_weight_uses_the_official_kh_kw_scale_quirk():
    """(out, in, kh, kw) = (4, 2, 3, 1): flattened 4 x 6 (wide, factor 1 by shape), yet kh/kw = 3."""
    g = torch.randn(4, 2, 3, 1)
    p = torch.nn.Parameter(torch.zeros_like(g))
    opt = Muon([p], lr=1.0, nesterov=False, momentum=0.0)
    p.grad = g.clone()
    opt.step()
    ns = newton_schulz(g.reshape(4, 6), 5, dtype=torch.bfloat16)
    torch.testing.assert_close(-p.detach(), (ns * math.sqrt(3.0)).float().reshape(g.shape))


def test_aux_groups_run_the_official_adam_with_aux_defaults():
    torch.manual_seed(0)
    w0, b0, e0 = torch.randn(6, 5, dtype=F64), torch.randn(5, dtype=F64), torch.randn(10, 5, dtype=F64)
    w, b, e = (torch.nn.Parameter(x.clone()) for x in (w0, b0, e0))
    opt = Muon(
        [{"params": [w]}, {"params": [b], "matrix": False}, {"params": [e], "matrix": False, "lr": 0.01}],
        lr=0.02,
        weight_decay=0.3,
        adamw_lr=1e-3,
        adamw_wd=0.2,
        adamw_betas=(0.8, 0.9),
        adamw_eps=1e-6,
    )
    assert [g["lr"] for g in opt.param_groups] == [0.02, 1e-3, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.2, 0.2]
    gb, ge = grad_sequence((5,), 5, dtype=F64), grad_sequence((10, 5), 5, seed=1, dtype=F64)
    gw = grad_sequence((6, 5), 5, seed=2, dtype=F64)
    _train(opt, [w, b, e], [gw, gb, ge], 0, 5)
    torch.testing.assert_close(
        b.detach(), ref_aux_adam(b0, gb, 1e-3, (0.8, 0.9), 1e-6, 0.2), rtol=0, atol=1e-14
    )
    torch.testing.assert_close(
        e.detach(), ref_aux_adam(e0, ge, 0.01, (0.8, 0.9), 1e-6, 0.2), rtol=0, atol=1e-14
    )
    assert set(opt.state[b]) == {"step", "exp_avg", "exp_avg_sq"}
    assert set(opt.state[w]) == {"step", "momentum_buffer"}


def test_ensemble_of_stacked_matrices_equals_separate_runs():
    torch.manual_seed(0)
    E, lrs = 3, [0.02, 0.05, 0.0]
    w0 = torch.randn(E, 12, 20)
    grads = grad_sequence((E, 12, 20), 4)
    p = torch.nn.Parameter(w0.clone())
    opt = make_optimizer("muon", [p], ensemble_dims=1, lr=torch.tensor(lrs), weight_decay=0.1)
    assert opt.param_groups[0]["matrix"] and opt.param_groups[0]["ensemble_dims"] == 1
    _train(opt, [p], [grads], 0, 4)
    for i in range(E):
        want, _ = ref_muon(w0[i], [g[i] for g in grads], lrs[i], 0.95, 0.1)
        torch.testing.assert_close(p.detach()[i], want, rtol=0, atol=2e-3 * max(lrs[i], 1e-9))


def test_make_optimizer_splits_a_model():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    model.add_module("head", torch.nn.Linear(8, 10))
    opt = make_optimizer("muon", model, weight_decay=0.01, adamw_wd=0.01)
    kinds = {id(p): (g["matrix"], g["weight_decay"], g["lr"]) for g in opt.param_groups for p in g["params"]}
    assert kinds[id(model[1].weight)] == (True, 0.01, 0.02)
    assert kinds[id(model[0].weight)] == (False, 0.01, 3e-4)  # embedding: aux Adam, decayed
    assert kinds[id(model.head.weight)] == (False, 0.01, 3e-4)  # output head: aux Adam
    assert kinds[id(model[1].bias)] == (False, 0.0, 3e-4)  # 1-D: aux Adam, not decayed
    assert kinds[id(model[2].weight)] == (False, 0.0, 3e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_continues_bit_identically(dtype):
    torch.manual_seed(1)
    init = [torch.randn(6, 4).to(dtype), torch.randn(4).to(dtype)]
    grads = [[g.to(dtype) for g in grad_sequence(x.shape, 10, seed=i)] for i, x in enumerate(init)]

    def groups(ps):
        return [{"params": [ps[0]]}, {"params": [ps[1]], "matrix": False}]

    hp = dict(lr=0.02, weight_decay=0.1, fp32_state=True)
    ps = [torch.nn.Parameter(x.clone()) for x in init]
    _train(Muon(groups(ps), **hp), ps, grads, 0, 10)
    qs = [torch.nn.Parameter(x.clone()) for x in init]
    opt2 = Muon(groups(qs), **hp)
    _train(opt2, qs, grads, 0, 4)
    buf = io.BytesIO()
    torch.save({"opt": opt2.state_dict(), "params": [q.detach() for q in qs]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rs = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    opt3 = Muon(groups(rs), lr=1.0, fp32_state=True)
    opt3.load_state_dict(saved["opt"])
    assert opt3.state[rs[0]]["momentum_buffer"].dtype == torch.float32
    _train(opt3, rs, grads, 4, 10)
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())


def test_maximize_does_not_mutate_grad_and_equals_negated_minimisation():
    torch.manual_seed(0)
    x0, g = torch.randn(5, 4), torch.randn(5, 4)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    o1, o2 = Muon([p], weight_decay=0.1, maximize=True), Muon([q], weight_decay=0.1)
    for _ in range(3):
        p.grad, q.grad = g.clone(), -g
        o1.step()
        o2.step()
        assert torch.equal(p.grad, g)
    assert torch.equal(p.detach(), q.detach())


def test_lr_scheduler_scales_both_kinds():
    w, b = torch.nn.Parameter(torch.zeros(4, 4)), torch.nn.Parameter(torch.zeros(4))
    opt = Muon([{"params": [w]}, {"params": [b], "matrix": False}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.01, 1.5e-4]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(lr=-1.0), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(ns_steps=-1), "ns_steps"),
        (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
        (dict(adamw_betas=(0.9, 1.5)), "adamw_betas[1]"),
        (dict(adamw_eps=0.0), "adamw_eps"),
        (dict(ensemble_dims=-1), "ensemble_dims"),
        (dict(nesterov=1), "nesterov"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match="Invalid " + re.escape(needle) + ".*allowed"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_vectors_in_a_matrix_group_are_refused():
    with pytest.raises(ValueError, match=r"Invalid param_groups\[0\]\.matrix.*shape \(5,\).*matrix=False"):
        Muon([torch.nn.Parameter(torch.zeros(5))])
    with pytest.raises(ValueError, match=r"shape \(3, 5\).*ensemble_dims=1"):
        Muon([torch.nn.Parameter(torch.zeros(3, 5))], ensemble_dims=1)


def test_compiled_step_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    x0 = [torch.randn(8, 4), torch.randn(4)]
    grads = [[torch.randn_like(x) for x in x0] for _ in range(3)]

    def run(compiled):
        ps = [torch.nn.Parameter(x.clone()) for x in x0]
        opt = Muon([{"params": [ps[0]]}, {"params": [ps[1]], "matrix": False}], weight_decay=0.1)
        step = torch.compile(opt.step) if compiled else opt.step
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            step()
        return [p.detach() for p in ps]

    eager, compiled = run(False), run(True)
    # inductor keeps the bf16 NS pointwise intermediates in fp32; bf16 NS itself is ~2% off fp32 NS
    d_eager, d_compiled = eager[0] - x0[0], compiled[0] - x0[0]
    assert (d_eager - d_compiled).norm() < 0.05 * d_eager.norm()
    torch.testing.assert_close(eager[1], compiled[1], rtol=1e-6, atol=1e-6)


def test_close_to_pytorch_optimizer_muon():
    """Same update up to bf16 rounding of the NS iteration (pytorch_optimizer fuses it into baddbmm
    and clamps the norm instead of adding 1e-7); the aux Adam agrees to rounding."""
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    w0, b0 = torch.randn(24, 16), torch.randn(16)
    ws = [torch.nn.Parameter(w0.clone()) for _ in range(2)]
    bs = [torch.nn.Parameter(b0.clone()) for _ in range(2)]
    ours = Muon([{"params": [ws[0]]}, {"params": [bs[0]], "matrix": False}], lr=0.02, weight_decay=0.1)
    theirs = po.Muon(
        [{"params": [ws[1]], "use_muon": True}, {"params": [bs[1]], "use_muon": False}],
        lr=0.02,
        weight_decay=0.1,
    )
    for _ in range(5):
        gw, gb = torch.randn(24, 16), torch.randn(16)
        ws[0].grad, ws[1].grad, bs[0].grad, bs[1].grad = gw.clone(), gw.clone(), gb.clone(), gb.clone()
        ours.step()
        theirs.step()
    d_ours, d_theirs = ws[0].detach() - w0, ws[1].detach() - w0
    assert torch.nn.functional.cosine_similarity(d_ours.flatten(), d_theirs.flatten(), dim=0) > 0.999
    torch.testing.assert_close(d_ours, d_theirs, rtol=0, atol=0.02 * 0.02 * 5)
    torch.testing.assert_close(bs[0].detach(), bs[1].detach(), rtol=1e-5, atol=1e-7)


def test_pytorch_optimizer_muon_scales_conv_weights_by_the_flattened_shape():
    """For (8, 2, 3, 1) ours (official) scales by sqrt(kh/kw) = sqrt(3), theirs by sqrt(8/6)."""
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    w0, g = torch.randn(8, 2, 3, 1), torch.randn(8, 2, 3, 1)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    oa, ob = Muon([a]), po.Muon([{"params": [b], "use_muon": True}])
    a.grad, b.grad = g.clone(), g.clone()
    oa.step()
    ob.step()
    ratio = (b.detach() - w0).norm() / (a.detach() - w0).norm()
    assert ratio.item() == pytest.approx(math.sqrt(8 / 6) / math.sqrt(3), rel=0.02)
