"""The Triton step of the toy lab (``kernels=True``): the valley kernel against the tensor code, and
whole simulations against the eager path and the paper's scalar loop.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, which must be
set before Triton is imported, hence the subprocess); the CUDA tests run them compiled.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_reference as R

from focus_optim.landscape import simulate as S
from focus_optim.landscape import valley as V

HERE = Path(__file__).resolve().parent

CELLS = [(10.0, 0.5, 0.01), (100.0, 2.0, 0.003)]  # (sharpness, noise, lr)
REPLICATES = 50
STEPS = 300

SCRIPT = textwrap.dedent(
    """
    import json, math, sys
    import numpy as np
    import torch
    sys.path.insert(0, {here!r})
    import toy_reference as R
    from focus_optim.landscape import rng, simulate as S, valley as V
    from focus_optim.landscape.triton_valley import valley_step_

    torch.set_num_threads(1)
    from test_triton_valley import gradient_errors
    out = {{"valley": {{}}, "first_steps": {{}}, "packed_equals_alone": {{}}, "cells": {{}}}}

    # 1. One valley step against the tensor code (noise from rng.step_normals), R not a multiple of a block.
    for dim in (2, 3, 100):
        land = V.rotated() if dim == 2 else V.random_axis(dim)
        R_, step = 300, 7
        gen = torch.Generator().manual_seed(dim)
        keys = rng.row_keys(5, R_)
        x = (0.3 * torch.randn(dim, R_, generator=gen)).t()
        a, sigma = 10 * torch.rand(R_, generator=gen), 3 * torch.rand(R_, generator=gen)
        e = land.axis_tensor()
        g = torch.full((dim, R_), math.nan).t()
        min_loss, max_u = torch.full((R_,), 0.5), torch.full((R_,), -0.5)
        valley_step_(x, g, a, sigma, keys, e, min_loss, max_u, c=land.c, step=step)
        loss, grad, u = V.loss_and_grad(x, a, e, land.c)
        ref = V.noisy(grad, sigma, rng.step_normals(keys, step, dim))
        out["valley"][dim] = {{
            **gradient_errors(g, ref, x, a, sigma, keys, e, land.c, step),
            "min_loss": (min_loss - torch.minimum(loss, torch.tensor(0.5))).abs().max().item(),
            "max_u": (max_u - torch.maximum(u, torch.tensor(-0.5))).abs().max().item(),
        }}

    # 2. Five steps of each optimizer: kernels vs eager, to rounding (before chaos amplifies it).
    for dim in (2, 7):
        land = V.rotated() if dim == 2 else V.random_axis(dim)
        rows = S.Rows.make(0, torch.tensor([1.0, 10.0, 100.0])[:, None, None],
                           torch.tensor([0.0, 1.0, 2.0])[None, :, None], 0.05, torch.full((1, 1, 20), 0.1))
        for opt in S.PAPER_SETUPS:
            a = S.simulate(opt, rows, land, 5, S.Options(compile=False))[0]
            b = S.simulate(opt, rows, land, 5, S.Options(kernels=True))[0]
            out["first_steps"][f"{{opt}}-{{dim}}"] = ((a - b).abs() / (a.abs() + 1e-3)).max().item()

    # 3. Cells packed into one launch equal the same cells run alone, bit for bit.
    blocks = [S.Rows.make(seed, a, 1.0, np.full(40, 0.01), 0.1) for seed, a in [(31, 10.0), (32, 100.0)]]
    for land in (V.rotated(), V.random_axis(7)):
        kern = S.Options(kernels=True, pack_cells=True)
        for opt in S.PAPER_SETUPS:
            packed = S.simulate(opt, blocks, land, 10, kern)
            alone = [S.simulate(opt, [b], land, 10, kern)[0] for b in blocks]
            same = all(torch.equal(p, q) for p, q in zip(packed, alone))
            out["packed_equals_alone"][f"{{opt}}-{{land.dim}}"] = same

    # 4. Recorded runs (Figures 1c, 4): loss, u and theta at every step, kernels vs eager.
    out["recorded"] = {{}}
    for land in (V.rotated(), V.random_axis(7)):
        rows = S.Rows.make(3, 10.0, torch.tensor([0.0, 1.0])[:, None], 0.01, torch.full((1, 5), 0.1))
        for opt in S.PAPER_SETUPS:
            (ma,), (ra,) = S.simulate(opt, rows, land, 6, S.Options(compile=False), record=True)
            (mb,), (rb,) = S.simulate(opt, rows, land, 6, S.Options(kernels=True), record=True)
            rel = lambda x, y: ((x - y).abs() / (x.abs() + 1e-3)).max().item()
            out["recorded"][f"{{opt}}-{{land.dim}}"] = {{
                "shapes": [list(ra.theta.shape), list(rb.theta.shape), list(rb.loss.shape), list(rb.u.shape)],
                "rel": max(rel(ra.loss, rb.loss), rel(ra.u, rb.u), rel(ra.theta, rb.theta), rel(ma, mb)),
            }}

    # 6. The fused steps (the valley kernel applying the optimizer's recorded launches, 9 steps in
    #    one launch or as 4 + 4 + 1) against the two-launch step: bit for bit, packed cells and
    #    recorded runs (one launch a step) included.
    out["fused_equals_two_launches"] = {{}}
    for land in (V.rotated(), V.random_axis(7)):
        lrs = np.logspace(-3, -1, 24)
        blocks = [S.Rows.make(seed, a, 1.5, lrs, 0.1) for seed, a in [(41, 10.0), (42, 99.0)]]
        for opt in S.PAPER_SETUPS:
            two = S.simulate(opt, blocks, land, 9, S.Options(kernels=True))
            one = S.simulate(opt, blocks, land, 9, S.Options(kernels=True, fuse_update=True))
            by4 = S.Options(kernels=True, fuse_update=True, steps_per_launch=4)
            fours = S.simulate(opt, blocks, land, 9, by4)
            fused = S.Options(kernels=True, fuse_update=True)
            _, (r2,) = S.simulate(opt, blocks[:1], land, 5, S.Options(kernels=True), record=True)
            _, (r1,) = S.simulate(opt, blocks[:1], land, 5, fused, record=True)
            same = all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(two, one, fours))
            same &= all(torch.equal(getattr(r2, k), getattr(r1, k)) for k in ("loss", "u", "theta"))
            out["fused_equals_two_launches"][f"{{opt}}-{{land.dim}}"] = bool(same)

    # 7. recorded_launches around optimizer.step(): host work done, the update left to the caller.
    from focus_optim.optim import make_optimizer
    from focus_optim.optim._kernels import recorded_launches
    out["recorded_launch"] = {{}}
    for opt in S.PAPER_SETUPS:
        setup = S.PAPER_SETUPS[opt]
        theta = torch.randn(3, 16).t().requires_grad_()  # [16, 3], column-major as the simulator keeps it
        lr, wd = torch.full((16,), 0.01), torch.full((16,), 0.1)
        o = make_optimizer(setup.registry, [theta], ensemble_dims=1, decay_norms_and_biases=True, lr=lr,
                           weight_decay=wd, fused=True, **dict(setup.hparams))
        theta.grad = torch.randn(3, 16).t()
        o.step()
        before = theta.detach().clone()
        moments = [v.clone() for k, v in o.state[theta].items() if k != "step"]
        with recorded_launches() as launches:
            o.step()
        step_t = o.state[theta]["step"]
        out["recorded_launch"][opt] = {{
            "launches": len(launches),
            "params_unchanged": bool(torch.equal(theta.detach(), before)),
            "moments_unchanged": all(torch.equal(a, b) for a, b in
                                     zip(moments, [v for k, v in o.state[theta].items() if k != "step"])),
            "steps": [1.0, float(step_t.sum() / step_t.numel())],
            "bc2": launches[0].args.get("bc2") if launches else None,
        }}
        o.step()
        out["recorded_launch"][opt]["changed_after"] = not bool(torch.equal(theta.detach(), before))

    # 5. Metrics of whole runs, for the statistical comparison with the paper's loop (in pytest).
    #    Through the fused step, which section 6 shows equal to the two-launch step bit for bit
    #    (half the interpreted launches).
    for opt in S.PAPER_SETUPS:
        cells = enumerate({cells})
        blocks = [S.Rows.make(200 + i, a, s, np.full({reps}, lr), 0.1) for i, (a, s, lr) in cells]
        res = S.simulate(opt, blocks, V.rotated(), {steps}, S.Options(kernels=True, fuse_update=True))
        out["cells"][opt] = [m.double().tolist() for m in res]
    print(json.dumps(out))
    """
)


def gradient_errors(g, ref, x, a, sigma, keys, e, c, step) -> dict[str, float]:
    """Per-row error (max over the row / the row's largest component) of the kernel's noisy gradient
    ``g`` and of the float32 tensor code's ``ref``, both against the tensor code in float64. A row
    whose gradient nearly cancels is ill-conditioned in float32 whatever the order of the sums, so
    the kernel is held to the tensor code's own accuracy rather than to a fixed tolerance."""
    from focus_optim.landscape import rng

    _, grad64, _ = V.loss_and_grad(x.double(), a.double(), e.double(), c)
    ref64 = V.noisy(grad64, sigma.double(), rng.step_normals(keys, step, x.shape[1]).double())
    scale = ref64.abs().amax(1)
    kernel = ((g.double() - ref64).abs().amax(1) / scale).max().item()
    tensor = ((ref.double() - ref64).abs().amax(1) / scale).max().item()
    return {"grad_err": kernel, "tensor_err": tensor}


@pytest.fixture(scope="module")
def interpreted() -> dict:
    pytest.importorskip("triton")
    script = SCRIPT.format(here=str(HERE), cells=CELLS, reps=REPLICATES, steps=STEPS)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.slow


def test_valley_kernel_equals_the_tensor_code(interpreted) -> None:
    """Loss, gradient and noise of one step (same hashes; Box-Muller through Triton's math)."""
    for dim, err in interpreted["valley"].items():
        assert err["grad_err"] <= 2 * err["tensor_err"] + 1e-6, (dim, err)
        assert err["min_loss"] < 1e-6 and err["max_u"] < 1e-6, (dim, err)


def test_kernel_steps_track_the_eager_steps(interpreted) -> None:
    for key, rel in interpreted["first_steps"].items():
        tol = 5e-3 if key.startswith("adamw") else 1e-4  # Adam's bias corrections: exp2 in the kernel
        assert rel < tol, (key, rel)


def test_kernel_recorded_runs_track_the_eager_ones(interpreted) -> None:
    for key, rec in interpreted["recorded"].items():
        dim = int(key.split("-")[1])
        assert rec["shapes"] == [[7, 10, dim], [7, 10, dim], [7, 10], [7, 10]], key
        assert rec["rel"] < (5e-3 if key.startswith("adamw") else 1e-4), (key, rec)


def test_kernel_cells_packed_equal_cells_alone(interpreted) -> None:
    assert interpreted["packed_equals_alone"] and all(interpreted["packed_equals_alone"].values())


@pytest.mark.parametrize("opt", list(S.PAPER_SETUPS))
def test_kernel_runs_match_the_scalar_paper_loop(interpreted, opt: str) -> None:
    """Mean of each metric over 50 replicates within 3 standard errors of the paper's loop (fused
    step; the two-launch step equals it bit for bit, ``test_fused_update_equals_the_two_launch_step``)."""
    for i, (a, sigma, lr) in enumerate(CELLS):
        ref = R.run(opt, a, sigma, lr, 0.1, STEPS, REPLICATES, seed=50 + i)
        sim = np.asarray(interpreted["cells"][opt][i])
        for k, metric in enumerate(S.METRICS):
            se = np.sqrt(sim[:, k].var(ddof=1) / REPLICATES + ref[:, k].var(ddof=1) / REPLICATES)
            diff = sim[:, k].mean() - ref[:, k].mean()
            assert abs(diff) <= 3 * se, f"{opt} a={a} sigma={sigma} {metric}: {diff:+.4f} vs se {se:.4f}"


def test_fused_update_equals_the_two_launch_step(interpreted) -> None:
    """``fuse_update``: the valley kernel applying the optimizer's recorded launch computes what the
    valley kernel followed by the optimizer's own kernel does, bit for bit (interpreter)."""
    res = interpreted["fused_equals_two_launches"]
    assert sorted(res) == sorted(f"{o}-{d}" for o in S.PAPER_SETUPS for d in (2, 7))
    assert all(res.values()), res


def test_fuse_update_needs_kernels() -> None:
    with pytest.raises(ValueError, match="fuse_update=True without kernels=True"):
        S.simulate("focus", S.Rows.make(0, 1.0, 0.0, [0.1], 0.0), V.rotated(), 3, S.Options(fuse_update=True))


def test_steps_per_launch_must_be_positive() -> None:
    opts = S.Options(kernels=False, steps_per_launch=0)
    with pytest.raises(ValueError, match="steps_per_launch: 0 \\(allowed: an integer >= 1\\)"):
        S.simulate("focus", S.Rows.make(0, 1.0, 0.0, [0.1], 0.0), V.rotated(), 3, opts)


def test_launches_applied_together_must_differ_only_per_step() -> None:
    """One kernel applies many recorded steps only when nothing but the per-step bias correction
    changed between them: a new lr tensor (as a scheduler would set) or changed flags are refused
    before anything runs. (That launches which do differ only per step are applied bit for bit as
    one launch each is the interpreter test above.)"""
    pytest.importorskip("triton")
    from focus_optim.landscape.triton_valley import valley_update_
    from focus_optim.optim._kernels import Launch

    n = 8
    theta, m, avg = (torch.zeros(2, n).t() for _ in range(3))
    lr, wd = torch.full((n,), 0.01), torch.full((n,), 0.1)
    flags = dict(MEMBER=True, MODE=0, MAXIMIZE=False, HAS_AVG=True, DECAY=True, W1_HIGH=False)

    def launch(step: int, lr_t: torch.Tensor = lr, **changed: object) -> Launch:
        args = dict(lr=0.0, lr_t=lr_t, wd=0.0, wd_t=wd, members=n, strides0=theta, w1=0.1, b2=0.9,
                    w2=0.1, gamma=0.2, bc2=1 - 0.9**step, eta_wd_hat=0.0)  # fmt: skip
        tensors = dict(params=[theta], exp_avgs=[m], param_avgs=[avg])
        return Launch("sign_family", tensors, args, {**flags, **changed})

    ones = torch.ones(n)
    keys, axis = torch.zeros(n, dtype=torch.int32), V.rotated().axis_tensor()
    rest = (ones, ones, keys, axis, ones.clone(), ones.clone())
    for second in (launch(2, lr_t=lr * 0.5), launch(2, MAXIMIZE=True)):
        with pytest.raises(ValueError, match="differ only in bc2"):
            valley_update_(theta, [launch(1), second], *rest, c=0.1, step=1)
    assert not theta.any() and not m.any() and not avg.any()


def test_recorded_launches_leave_the_update_to_the_caller(interpreted) -> None:
    """Inside ``recorded_launches`` the optimizer advances its step count and computes its bias
    correction, records one launch, and leaves the parameters and moments alone."""
    for opt, rec in interpreted["recorded_launch"].items():
        assert rec["launches"] == 1 and rec["params_unchanged"] and rec["moments_unchanged"], (opt, rec)
        assert rec["steps"] == [1.0, 2.0], (opt, rec)  # advanced while recording, as by a real step
        assert rec["changed_after"], (opt, rec)  # the same step outside the block updates
        if opt == "focus":
            assert rec["bc2"] == pytest.approx(1 - 0.9**2), rec


def test_kernels_need_cuda_or_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="kernels=True"):
        S.simulate("focus", S.Rows.make(0, 1.0, 0.0, [0.1], 0.0), V.rotated(), 3, S.Options(kernels=True))


@pytest.mark.gpu
@pytest.mark.parametrize("opt", list(S.PAPER_SETUPS))
def test_cuda_kernels_packed_equal_alone_and_match_cpu(opt: str) -> None:
    blocks = [S.Rows.make(seed, a, 1.0, np.full(512, 0.01), 0.1) for seed, a in [(31, 10.0), (32, 100.0)]]
    for land, kern in itertools.product(
        (V.rotated(), V.random_axis(100)),
        (S.Options(device="cuda", kernels=True), S.Options(device="cuda", kernels=True, fuse_update=True)),
    ):
        packed = S.simulate(opt, blocks, land, 200, kern)
        alone = [S.simulate(opt, [b], land, 200, kern)[0] for b in blocks]
        cpu = S.simulate(opt, blocks, land, 200, S.Options(compile=False))
        for p, a, c in zip(packed, alone, cpu):
            assert torch.equal(p, a)
            p, c = p[:, 0].double(), c[:, 0].double()
            assert (p.mean() - c.mean()).abs() <= 3 * (p.var() / p.numel() + c.var() / c.numel()).sqrt()


@pytest.mark.gpu
@pytest.mark.parametrize("opt", list(S.PAPER_SETUPS))
def test_cuda_fused_update_matches_the_two_launch_step(opt: str) -> None:
    """Compiled, the fused step may contract the gradient into the update's first FMA (rounding
    differs from the stored gradient's): equal to rounding over a few steps, packed == alone."""
    lrs = np.logspace(-3, -1, 256)
    blocks = [S.Rows.make(seed, a, 1.0, lrs, 0.1) for seed, a in [(51, 10.0), (52, 100.0)]]
    for land in (V.rotated(), V.random_axis(100)):
        two = S.simulate(opt, blocks, land, 3, S.Options(device="cuda", kernels=True))
        fused = S.Options(device="cuda", kernels=True, fuse_update=True)
        one = S.simulate(opt, blocks, land, 3, fused)
        alone = [S.simulate(opt, [b], land, 3, fused)[0] for b in blocks]
        for a, b, c in zip(two, one, alone):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
            assert torch.equal(b, c)


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [2, 3, 100])
def test_cuda_valley_kernel_equals_the_tensor_code(dim: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled kernel (not the interpreter): one step's noisy gradient and metrics. With exact
    sines and cosines to the tensor code's own accuracy; with the hardware's approximate ones
    (``FAST_SINCOS``, the default) each normal within 4e-6 of the exact one (|cos, sin error| <
    2**-20.5 times a radius below sqrt(2 ln 2**24) = 5.77), so each gradient component within
    ``|grad| sigma 4e-6`` of the exact kernel's, plus float32 rounding."""
    from focus_optim.landscape import rng
    from focus_optim.landscape import triton_valley as TV

    land = V.rotated() if dim == 2 else V.random_axis(dim)
    n, step = 1000, 7
    gen = torch.Generator(device="cuda").manual_seed(dim)
    keys = rng.row_keys(5, n, device="cuda")
    x = (0.3 * torch.randn(dim, n, generator=gen, device="cuda")).t()
    a = 10 * torch.rand(n, generator=gen, device="cuda")
    sigma = 3 * torch.rand(n, generator=gen, device="cuda")
    e = land.axis_tensor("cuda")
    loss, grad, u = V.loss_and_grad(x, a, e, land.c)
    ref = V.noisy(grad, sigma, rng.step_normals(keys, step, dim))
    grads = {}
    for fast in (False, True):
        monkeypatch.setattr(TV, "FAST_SINCOS", fast)
        g = torch.full((dim, n), float("nan"), device="cuda").t()
        min_loss, max_u = torch.full((n,), 0.5, device="cuda"), torch.full((n,), -0.5, device="cuda")
        TV.valley_step_(x, g, a, sigma, keys, e, min_loss, max_u, c=land.c, step=step)
        grads[fast] = g
        torch.testing.assert_close(
            min_loss, torch.minimum(loss, torch.tensor(0.5, device="cuda")), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            max_u, torch.maximum(u, torch.tensor(-0.5, device="cuda")), rtol=1e-5, atol=1e-6
        )
    err = gradient_errors(grads[False], ref, x, a, sigma, keys, e, land.c, step)
    assert err["grad_err"] <= 2 * err["tensor_err"] + 1e-6, err
    bound = grad.abs() * sigma[:, None] * 4e-6 + 1e-6 * grads[False].abs() + 1e-30
    assert ((grads[True] - grads[False]).abs() <= bound).all()
    assert not torch.equal(grads[True], grads[False])  # the approximate instructions did run
