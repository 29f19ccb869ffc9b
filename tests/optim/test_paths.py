"""The single-tensor, foreach and fused paths compute the same function; ensembles = separate runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from focus_optim import FOCUS, AdamW, Signum
from focus_optim.optim import EXAdam, Lion, SophiaG

F64 = torch.float64
CASES = [
    (FOCUS, dict(betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1, decay_mode="algorithm1")),
    (FOCUS, dict(betas=(0.8, 0.9), gamma=-0.3, weight_decay=0.05, decay_mode="reference")),
    (FOCUS, dict(betas=(0.9, 0.9), gamma=0.2, weight_decay=0.1, decay_mode="decoupled", maximize=True)),
    (Signum, dict(momentum=0.9, weight_decay=0.1)),
    (Signum, dict(momentum=0.8, weight_decay=0.2, decoupled_weight_decay=False, maximize=True)),
    (AdamW, dict(betas=(0.9, 0.95), weight_decay=0.1)),
    (AdamW, dict(betas=(0.9, 0.99), eps_mode="before_bias_correction", decay_mode="post_update")),
]


SIGN_CASES = [c for c in CASES if c[0] is not AdamW]  # the Triton sign-family kernel's


def run(cls, kwargs, path, dtype=F64, steps=12, device="cpu", late=True):
    """Train three params (one of which first gets a gradient at step 4) with a schedule."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (17,), (3, 2, 2)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=F64).to(device, dtype)) for s in shapes]
    flags = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[path]
    opt = cls(params, lr=0.02, **kwargs, **flags)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.05 * t))
    for t in range(steps):
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=F64).to(device, dtype)
            p.grad = None if (late and i == 2 and t < 4) else g
        opt.step()
        sched.step()
    return [p.detach().to("cpu", F64) for p in params]


@pytest.mark.parametrize(("cls", "kwargs"), CASES)
def test_foreach_equals_single_in_float64(cls, kwargs):
    for a, b in zip(run(cls, kwargs, "single"), run(cls, kwargs, "foreach")):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("cls", "kwargs"), [c for c in CASES if c[0] is not AdamW or len(c[1]) == 2])
def test_fused_cpu_path_equals_single_in_float64(cls, kwargs):
    torch._dynamo.reset()
    for a, b in zip(run(cls, kwargs, "single"), run(cls, kwargs, "fused")):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_fused_cpu_path_stays_compiled_across_sizes_and_flags():
    """Each size's compiled code keeps its own variants (here maximize and gamma): with dynamo's
    recompile limit lowered to 2 and made an error, 3 sizes x 2 variants compile without hitting
    it. On one shared code object the third variant would pass the limit and, by default, run
    eagerly from then on, silently and rounded differently."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        for kwargs in (dict(maximize=False), dict(maximize=True, gamma=0.3)):
            params = [torch.nn.Parameter(torch.randn(n)) for n in (5, 7, 11)]
            for p in params:
                p.grad = torch.randn_like(p)
            FOCUS(params, lr=0.01, fused=True, **kwargs).step()


def test_fused_cpu_shape_generic_code_keeps_the_first_step_tie(monkeypatch):
    """At step 1 FOCUS's average is exactly (1 - beta2) * theta, so sign(theta * bc2 - avg) = 0 and
    the step is -lr * sign(m). The shape-generic compiled code (sizes past the first few) must keep
    that tie: once one float had changed between calls (gamma here), dynamo traced the floats as
    float64 inputs, and the average, computed in float64, no longer tied with theta * bc2."""
    from focus_optim.optim import _kernels

    monkeypatch.setattr(_kernels, "STATIC_SHAPES", 2)
    monkeypatch.setattr(_kernels, "_static_sizes", {})
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    sequence = [(5, dict(gamma=0.1)), (7, dict(gamma=0.1)), (5, dict(gamma=0.3)), (7, dict(gamma=0.3))]
    sequence += [(n, dict(maximize=True)) for n in (8, 3)] + [(n, dict(maximize=False)) for n in (8, 3)]
    for n, kwargs in sequence:
        theta, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        p = torch.nn.Parameter(theta.clone())
        p.grad = -g if kwargs.get("maximize") else g
        FOCUS([p], lr=0.01, betas=(0.9, 0.999), fused=True, **kwargs).step()
        assert torch.equal(p.detach(), theta - 0.01 * g.sign()), (n, kwargs)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("cls", "kwargs"), CASES)
def test_ensemble_hyperparameters_equal_separate_runs(cls, kwargs, foreach):
    """A 1-D lr / weight_decay gives member i (slice i along dim 0) its own value, on the
    per-tensor and the foreach path."""
    gen = torch.Generator().manual_seed(1)
    E = 4
    lrs = torch.tensor([0.001, 0.01, 0.05, 0.2], dtype=F64)
    wds = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=F64)
    x0 = torch.randn(E, 3, 2, generator=gen, dtype=F64)
    grads = [torch.randn(E, 3, 2, generator=gen, dtype=F64) for _ in range(10)]
    kw = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    stacked = torch.nn.Parameter(x0.clone())
    opt = cls([stacked], lr=lrs, weight_decay=wds, foreach=foreach, **kw)
    for g in grads:
        stacked.grad = g.clone()
        opt.step()
    for i in range(E):
        p = torch.nn.Parameter(x0[i].clone())
        o = cls([p], lr=lrs[i].item(), weight_decay=wds[i].item(), **kw)
        for g in grads:
            p.grad = g[i].clone()
            o.step()
        torch.testing.assert_close(stacked.detach()[i], p.detach(), rtol=0, atol=1e-12)


def test_ensemble_hyperparameters_check_lengths_and_paths():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="length 4"):
        FOCUS([p], lr=torch.full((4,), 0.1))

    class NoEnsembleForeach(EXAdam):  # a class without an ensemble foreach path
        _foreach_ensemble = False

    with pytest.raises(ValueError, match="foreach=True"):
        opt = NoEnsembleForeach([p], lr=torch.full((3,), 0.1), foreach=True)
        p.grad = torch.ones(3, 2)
        opt.step()


ENSEMBLE_FOREACH_CASES = [
    *CASES,
    (Lion, dict(betas=(0.9, 0.99), weight_decay=0.1)),
    (EXAdam, dict(weight_decay=0.1)),
    (EXAdam, dict(weight_decay=0.1, growing_step=True)),
    (SophiaG, dict(weight_decay=0.1)),
    (SophiaG, dict(weight_decay=0.1, eps_mode="max")),
]


@pytest.mark.parametrize(("cls", "kwargs"), ENSEMBLE_FOREACH_CASES)
def test_ensemble_foreach_equals_per_tensor_bit_for_bit(cls, kwargs):
    """Per-member lr / weight_decay on several tensors of different shapes (one of them joining
    late, so the step counts differ): the foreach path makes exactly the per-tensor path's numbers,
    with one kernel per operation for all tensors where the shapes allow it."""
    E = 3
    lrs = torch.tensor([0.002, 0.02, 0.2], dtype=F64)
    wds = torch.tensor([0.0, 0.05, 0.3], dtype=F64)
    kw = {k: v for k, v in kwargs.items() if k != "weight_decay"}

    def train(foreach: bool) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(3)
        shapes = [(E, 4, 5), (E, 5), (E, 2, 2, 3)]
        ps = [torch.nn.Parameter(torch.randn(sh, generator=gen, dtype=F64)) for sh in shapes]
        opt = cls(ps, lr=lrs, weight_decay=wds, foreach=foreach, **kw)
        for t in range(9):
            for i, p in enumerate(ps):
                g = torch.randn(p.shape, generator=gen, dtype=F64)
                p.grad = None if (i == 2 and t < 3) else g
            opt.step()
            if isinstance(opt, SophiaG) and t % 3 == 1:  # Hessian EMA from this step's gradients
                opt.update_hessian()
        return [p.detach() for p in ps]

    for a, b in zip(train(False), train(True)):
        assert torch.equal(a, b)


def test_signum_is_focus_with_gamma_zero_and_beta2_zero():
    a = run(Signum, dict(momentum=0.9, weight_decay=0.1), "single", dtype=torch.float32)
    b = run(FOCUS, dict(betas=(0.9, 0.0), gamma=0.0, weight_decay=0.1), "single", dtype=torch.float32)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # the other decay orders agree too, up to the order of two additions
    for mode in ("reference", "decoupled"):
        c = run(FOCUS, dict(betas=(0.9, 0.0), gamma=0.0, weight_decay=0.1, decay_mode=mode), "single")
        for x, y in zip(run(Signum, dict(momentum=0.9, weight_decay=0.1), "single"), c):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


FUSED_ENSEMBLE_CASES = [c for c in CASES if c[0] is not AdamW or len(c[1]) == 2]


def run_ensemble(cls, kwargs, flags, *, layout="rows", late=False, dtype=F64, device="cpu", steps=8):
    """Three members with their own lr and weight decay. ``layout="columns"``: one ``[E, 7]``
    parameter stored column-major (the toy lab's layout), its gradients in the same layout."""
    E = 3
    gen = torch.Generator().manual_seed(4)
    lrs = torch.tensor([0.002, 0.02, 0.2], dtype=dtype, device=device)
    wds = torch.tensor([0.0, 0.05, 0.3], dtype=dtype, device=device)
    kw = {k: v for k, v in kwargs.items() if k != "weight_decay"}

    def draw(shape, columns):
        x = torch.randn(shape[::-1] if columns else shape, generator=gen, dtype=F64).to(device, dtype)
        return x.t() if columns else x

    columns = layout == "columns"
    shapes = [(E, 7)] if columns else [(E, 4, 5), (E, 5), (E, 2, 3)]
    params = [torch.nn.Parameter(draw(sh, columns)) for sh in shapes]
    opt = cls(params, lr=lrs, weight_decay=wds, **kw, **flags)
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (late and i == 2 and t < 3) else draw(p.shape, columns)
        opt.step()
    return [p.detach().to("cpu", F64) for p in params]


@pytest.mark.parametrize(("cls", "kwargs"), FUSED_ENSEMBLE_CASES)
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_ensemble_fused_equals_per_tensor_on_cpu(cls, kwargs, layout):
    """Off the Triton kernels (CPU), fused=True with per-member hyperparameters runs the per-tensor
    update: the same numbers bit for bit."""
    single = run_ensemble(cls, kwargs, dict(foreach=False), layout=layout, late=True)
    fused = run_ensemble(cls, kwargs, dict(fused=True), layout=layout, late=True)
    for a, b in zip(single, fused):
        assert torch.equal(a, b)


TRITON_ENSEMBLE_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_paths import run_ensemble, FUSED_ENSEMBLE_CASES
    from focus_optim.optim._kernels import triton_adamw, triton_sign

    launches = []
    for mod, name in ((triton_sign, "sign_family_"), (triton_adamw, "adamw_ensemble_")):
        def counted(*a, _f=getattr(mod, name), **k):
            launches.append(1)
            return _f(*a, **k)
        setattr(mod, name, counted)
    for cls, kwargs in FUSED_ENSEMBLE_CASES:
        for layout in ("rows", "columns"):
            for dtype in (torch.float32, torch.float64):
                before = len(launches)
                single = run_ensemble(cls, kwargs, dict(foreach=False), layout=layout, dtype=dtype)
                fused = run_ensemble(cls, kwargs, dict(fused=True), layout=layout, dtype=dtype)
                assert len(launches) - before == 8, (cls.__name__, layout, "kernel not used")
                err = max((a - b).abs().max().item() for a, b in zip(single, fused))
                assert err < 2e-5, (cls.__name__, kwargs, layout, dtype, err)
    print("ok")
    """
)


def run_interpreted(script: str) -> None:
    """Run ``script`` (with ``{tests}`` set to this folder) under Triton's CPU interpreter, which has
    to be switched on before Triton is imported; it prints ``ok`` when its checks pass."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = script.format(tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_ensemble_triton_kernels_in_interpreter_mode():
    """Per-member lr/weight decay on the CUDA kernels (one launch per step, row- and column-major
    members), run by Triton's CPU interpreter: the per-tensor path's numbers to fp32 rounding."""
    run_interpreted(TRITON_ENSEMBLE_SCRIPT)


@pytest.mark.gpu
@pytest.mark.parametrize(("cls", "kwargs"), FUSED_ENSEMBLE_CASES)
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_ensemble_fused_cuda_matches_single(cls, kwargs, layout):
    single = run_ensemble(cls, kwargs, dict(foreach=False), layout=layout, dtype=torch.float32)
    fused = run_ensemble(cls, kwargs, dict(fused=True), layout=layout, dtype=torch.float32, device="cuda")
    for a, b in zip(single, fused):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


TRITON_SCRIPT = textwrap.dedent(
    """
    import os, torch, sys
    sys.path.insert(0, {tests!r})
    from test_paths import run, SIGN_CASES
    for cls, kwargs in SIGN_CASES:
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-5)):
            a, b = run(cls, kwargs, "single", dtype=dtype), run(cls, kwargs, "fused", dtype=dtype)
            err = max((x - y).abs().max().item() for x, y in zip(a, b))
            assert err < tol, (cls.__name__, kwargs, dtype, err)
    print("ok")
    """
)


def test_triton_kernel_in_interpreter_mode():
    """The CUDA kernel's logic, run by Triton's CPU interpreter (skipped without triton)."""
    run_interpreted(TRITON_SCRIPT)


@pytest.mark.gpu
@pytest.mark.parametrize(("cls", "kwargs"), SIGN_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cuda_matches_single(cls, kwargs, dtype):
    a = run(cls, kwargs, "single", dtype=torch.float32, device="cuda")
    b = run(cls, kwargs, "fused", dtype=dtype, device="cuda")
    tol = 1e-5 if dtype == torch.float32 else 0.1
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize(("cls", "kwargs"), CASES)
def test_foreach_cuda_matches_cpu(cls, kwargs):
    for x, y in zip(run(cls, kwargs, "single"), run(cls, kwargs, "foreach", device="cuda")):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-10)


@pytest.mark.gpu
def test_state_dict_from_cpu_to_cuda_continues_identically():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(33, 7, generator=gen)
    grads = [torch.randn(33, 7, generator=gen) for _ in range(10)]
    p = torch.nn.Parameter(x0.clone())
    opt = FOCUS([p], lr=0.01, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1, foreach=False)
    for g in grads[:5]:
        p.grad = g.clone()
        opt.step()
    q = torch.nn.Parameter(p.detach().cuda())
    opt_gpu = FOCUS([q], foreach=False)
    opt_gpu.load_state_dict(opt.state_dict())
    assert opt_gpu.state[q]["exp_avg"].is_cuda and opt_gpu.state[q]["step"].device.type == "cpu"
    for g in grads[5:]:
        p.grad = g.clone()
        q.grad = g.cuda()
        opt.step()
        opt_gpu.step()
    torch.testing.assert_close(p.detach(), q.detach().cpu(), rtol=0, atol=1e-6)
