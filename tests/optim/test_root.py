"""ROOT against a plain restatement of huawei-noah/noah-research@aa0f80c ROOT/examples/example_train.py."""

from __future__ import annotations

import io
import logging
import math
import re

import pytest
import torch

from focus_optim import make_optimizer
from focus_optim.optim import root as root_module
from focus_optim.optim.root import ROOT, kth_quantile, quantile, root_coefficients, soft_threshold_clip

F64 = torch.float64
MUON = (3.4445, -4.7750, 2.0315)


# --- the official code, restated ---------------------------------------------------------------
def simple_quantile(tensor, q):
    tensor = tensor.flatten()
    index = torch.tensor(q * (tensor.numel() - 1))
    lower, upper = torch.floor(index).long(), torch.ceil(index).long()
    if lower == upper:
        return tensor.kthvalue(lower + 1).values
    lo, hi = tensor.kthvalue(lower + 1).values, tensor.kthvalue(upper + 1).values
    return torch.lerp(lo, hi, index - lower)


def root5(G, steps, coeffs):
    a, b, c = coeffs
    X = G.T if G.size(0) > G.size(1) else G
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if G.size(0) > G.size(1) else X


def ref_root(w0, grads, lr, wd, mu, coeffs, nesterov=True, steps=5):
    w, buf = w0.clone(), torch.zeros_like(w0)
    for g in grads:
        buf.mul_(mu).add_(g)
        x = g.add(buf, alpha=mu) if nesterov else buf
        eps = simple_quantile(x.abs().float(), 0.9) + 1e-9
        o = torch.sign(x) * torch.relu(torch.abs(x) - eps)
        u = root5(x - o, steps, coeffs)
        w.mul_(1 - lr * wd)
        w.add_(u, alpha=-lr * 0.2 * math.sqrt(max(w.shape)))
    return w, buf


def ref_backup(w0, grads, lr, wd, betas, eps):
    w, m1, m2 = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        m1.lerp_(g, 1 - betas[0])
        m2.lerp_(g.square(), 1 - betas[1])
        u = m1 / (eps + m2.sqrt())
        scale = (1 - betas[0] ** t) / (1 - betas[1] ** t) ** 0.5
        w.mul_(1 - lr * wd)
        w.add_(u, alpha=-lr / scale)
    return w


def grad_sequence(shape, steps, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def _train(opt, params, grads, start, stop):
    for t in range(start, stop):
        for p, g in zip(params, grads):
            p.grad = g[t].clone()
        opt.step()


# --- quantile, clip, coefficients ---------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 10, 11, 1001])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 1.0])
def test_kth_quantile_equals_torch_quantile(n, q):
    x = torch.rand(3, n, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(kth_quantile(x, q), torch.quantile(x, q, dim=-1, keepdim=True))
    torch.testing.assert_close(kth_quantile(x[0], q)[0], simple_quantile(x[0], q))


def test_quantile_switches_to_kthvalue_above_torch_limit(monkeypatch):
    x = torch.rand(2, 50)
    calls = []
    monkeypatch.setattr(root_module, "QUANTILE_MAX_NUMEL", 49)
    monkeypatch.setattr(root_module, "kth_quantile", lambda t, q: calls.append(t.shape) or kth_quantile(t, q))
    torch.testing.assert_close(quantile(x, 0.9), torch.quantile(x, 0.9, dim=-1, keepdim=True))
    assert calls == [torch.Size([2, 50])]


def test_soft_threshold_clip_is_the_official_split():
    torch.manual_seed(0)
    X = torch.randn(40, 30, dtype=F64)
    C = soft_threshold_clip(X, 0.9)
    tau = simple_quantile(X.abs().float(), 0.9) + 1e-9
    torch.testing.assert_close(C, X - torch.sign(X) * torch.relu(X.abs() - tau), rtol=0, atol=1e-15)
    clipped = (C != X).double().mean().item()
    assert 0.09 <= clipped <= 0.11  # the 10% largest magnitudes
    assert C.abs().max().item() == pytest.approx(tau.item(), rel=1e-12)
    # per ensemble member: a member scaled by 1000 gets a threshold 1000x larger
    S = torch.stack([X, 1000 * X])
    CS = soft_threshold_clip(S, 0.9, ensemble_dims=1)
    torch.testing.assert_close(CS[1], 1000 * C, rtol=1e-6, atol=0)
    # README variant: a fixed threshold
    torch.testing.assert_close(soft_threshold_clip(X, 0.9, threshold=0.5), X.clamp(-0.5, 0.5))


def test_coefficient_table_lookup_and_fallback_warning_once_per_shape(caplog, monkeypatch):
    """Expected values: the table of ../shared/specs/optimizers.md section 3.3, read from the official
    ROOT/examples/example_train.py (huawei-noah/noah-research@aa0f80c), not from our table."""
    monkeypatch.setattr(root_module, "_warned_shapes", set())
    assert root_coefficients(2048, 8192) == (2.9794, -3.6674, 1.6207)
    assert root_coefficients(8192, 2048) == (2.9794, -3.6674, 1.6207)  # keyed by (min, max)
    assert root_coefficients(3072, 2048) == (3.4509, -4.5790, 1.9325)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="focus_optim.optim.root"):
        assert root_coefficients(768, 3072) == MUON
        assert root_coefficients(3072, 768) == MUON  # same (min, max) key: no second warning
        assert root_coefficients(17, 5) == MUON
    assert [r.getMessage().count("(768, 3072)") for r in caplog.records] == [1, 0]
    assert "(5, 17)" in caplog.records[1].getMessage()


# --- the update -----------------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_matrix_update_matches_official_code(shape, nesterov, monkeypatch):
    coeffs = (3.3, -4.6, 2.0)  # a made-up table entry, to check the lookup is used
    monkeypatch.setitem(root_module.ROOT_COEFFICIENTS, (12, 20), coeffs)
    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=F64)
    grads = grad_sequence(shape, 5)
    p = torch.nn.Parameter(w0.clone())
    opt = ROOT([p], lr=1e-3, weight_decay=0.1, momentum=0.9, nesterov=nesterov)
    _train(opt, [p], [grads], 0, 5)
    want, buf = ref_root(w0, grads, 1e-3, 0.1, 0.9, coeffs, nesterov)
    # tau is fp32 in both; the official interpolation weight is an fp32 tensor, torch.quantile's is
    # not, so the two taus differ at fp32 rounding level
    torch.testing.assert_close(p.detach(), want, rtol=1e-7, atol=0)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=0, atol=1e-13)


def test_backup_groups_run_the_official_adamw_backup():
    torch.manual_seed(0)
    w0, b0 = torch.randn(6, 5, dtype=F64), torch.randn(5, dtype=F64)
    w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    opt = ROOT([{"params": [w]}, {"params": [b], "matrix": False}], lr=0.01, weight_decay=0.2,
               adamw_betas=(0.8, 0.9), adamw_eps=1e-3)  # fmt: skip
    gb = grad_sequence((5,), 6, seed=1)
    _train(opt, [w, b], [grad_sequence((6, 5), 6), gb], 0, 6)
    torch.testing.assert_close(
        b.detach(), ref_backup(b0, gb, 0.01, 0.2, (0.8, 0.9), 1e-3), rtol=0, atol=1e-14
    )


def test_ensemble_of_stacked_matrices_equals_separate_runs():
    torch.manual_seed(0)
    lrs = [1e-3, 3e-3, 0.0]
    w0 = torch.randn(3, 10, 14, dtype=F64)
    grads = grad_sequence((3, 10, 14), 4)
    p = torch.nn.Parameter(w0.clone())
    opt = make_optimizer("root", [p], ensemble_dims=1, lr=torch.tensor(lrs, dtype=F64))
    assert opt.param_groups[0]["ensemble_dims"] == 1
    _train(opt, [p], [grads], 0, 4)
    for i in range(3):
        want, _ = ref_root(w0[i], [g[i] for g in grads], lrs[i], 0.1, 0.95, MUON)
        torch.testing.assert_close(p.detach()[i], want, rtol=1e-7, atol=0)


def test_state_dict_round_trip_continues_bit_identically():
    torch.manual_seed(1)
    init = [torch.randn(6, 4), torch.randn(4)]
    grads = [grad_sequence(x.shape, 10, seed=i, dtype=torch.float32) for i, x in enumerate(init)]

    def groups(ps):
        return [{"params": [ps[0]]}, {"params": [ps[1]], "matrix": False}]

    ps = [torch.nn.Parameter(x.clone()) for x in init]
    _train(ROOT(groups(ps)), ps, grads, 0, 10)
    qs = [torch.nn.Parameter(x.clone()) for x in init]
    opt2 = ROOT(groups(qs))
    _train(opt2, qs, grads, 0, 4)
    buf = io.BytesIO()
    torch.save({"opt": opt2.state_dict(), "params": [q.detach() for q in qs]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rs = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    opt3 = ROOT(groups(rs), lr=5.0)
    opt3.load_state_dict(saved["opt"])
    _train(opt3, rs, grads, 4, 10)
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())


def test_maximize_does_not_mutate_grad_and_equals_negated_minimisation():
    torch.manual_seed(0)
    x0, g = torch.randn(5, 4, dtype=F64), torch.randn(5, 4, dtype=F64)
    p, q = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    o1, o2 = ROOT([p], maximize=True), ROOT([q])
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
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(momentum=1.0), "momentum"),
        (dict(root_steps=-1), "root_steps"),
        (dict(threshold=0.0), "threshold"),
        (dict(threshold_quantile=1.5), "threshold_quantile"),
        (dict(adamw_eps=-1.0), "adamw_eps"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match="Invalid " + re.escape(needle) + ".*allowed"):
        ROOT([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_only_2d_matrices_are_accepted():
    with pytest.raises(ValueError, match=r"matrix update needs 2 dims.*shape \(4, 2, 3, 3\)"):
        ROOT([torch.nn.Parameter(torch.zeros(4, 2, 3, 3))])


def test_compiled_step_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    x0 = [torch.randn(8, 4), torch.randn(4)]
    grads = [[torch.randn_like(x) for x in x0] for _ in range(3)]

    def run(compiled):
        ps = [torch.nn.Parameter(x.clone()) for x in x0]
        opt = ROOT([{"params": [ps[0]]}, {"params": [ps[1]], "matrix": False}])
        step = torch.compile(opt.step) if compiled else opt.step
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            step()
        return [p.detach() for p in ps]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
