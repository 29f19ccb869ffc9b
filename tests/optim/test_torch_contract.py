"""Every registered optimizer honours the ``torch.optim`` contract a training loop relies on.

Each test runs one behaviour for all of them, built by ``make_optimizer`` on the same small model
(so the matrix-only optimizers also run their auxiliary AdamW groups), and compares against a
second run that reaches the same point another way: through ``GradScaler`` against without it, a
closure against ``backward(); step()``, ``add_param_group`` against building with every group, a
``weights_only`` checkpoint against an uninterrupted run. Equality is bit for bit: each pair does the
same arithmetic, so any difference is a defect, not rounding.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from focus_optim import make_optimizer
from focus_optim.optim import protocol
from focus_optim.optim.registry import available_optimizers, get_spec

STEPS = 5
# Every optimizer moves visibly within a few steps at this lr, sign-based ones included.
HPARAMS = {"lr": 1e-2, "weight_decay": 0.1}


def _model(case: Case, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    return model.to(case[2])


def _batches(case: Case, n: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]
    return [(x.to(case[2]), y.to(case[2])) for x, y in batches]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


Case = tuple[str, dict, str]  # optimizer name, path flags, device


def _cases() -> list:
    """Every optimizer on each of its paths: per-tensor, foreach and (FOCUS, Signum, AdamW) fused
    on the CPU; on CUDA (skipped without one) its default path (foreach) and fused (Triton)."""
    cases = []
    for name in available_optimizers():
        hparams = get_spec(name).hyperparameters()
        for path in ("foreach", "fused"):
            if path in hparams:
                cases.append(pytest.param((name, {"foreach": False, path: True}, "cpu"), id=f"{name}-{path}"))
        cases.append(pytest.param((name, {"foreach": False}, "cpu"), id=f"{name}-single"))
        gpu = pytest.mark.gpu
        cases.append(pytest.param((name, {}, "cuda"), id=f"{name}-cuda", marks=gpu))
        if "fused" in hparams:
            cases.append(pytest.param((name, {"fused": True}, "cuda"), id=f"{name}-cuda-fused", marks=gpu))
    return cases


CASES = _cases()


def _optimizer(case: Case, model_or_groups, **overrides) -> torch.optim.Optimizer:
    name, flags, _ = case
    return make_optimizer(name, model_or_groups, **{**HPARAMS, **flags, **overrides})


def _step(opt: torch.optim.Optimizer, **kw) -> object:
    return opt.step(**kw, **protocol.step_kwargs(opt, tokens=16))


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches) -> None:
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        _loss(model, batch).backward()
        _step(opt)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"parameter {i} differs by {(x - y).abs().max().item():.3g}"


def _reference(case: Case, batches) -> list[torch.Tensor]:
    model = _model(case)
    _train(model, _optimizer(case, model), batches)
    return _params(model)


@pytest.mark.parametrize("case", CASES)
def test_grad_scaler_trains_as_without_it_and_skips_a_step_with_an_inf(case):
    """Scaling by a power of two is exact, so a scaled run equals an unscaled one; a step whose
    gradient holds an inf changes no parameter and no optimizer state."""
    batches = _batches(case)
    model = _model(case)
    opt = _optimizer(case, model)
    scaler = torch.amp.GradScaler(case[2], init_scale=2.0**10, growth_interval=10_000)
    for i, batch in enumerate(batches):
        if i == 2:  # an overflowing step first: skipped, and the scale halves
            before = copy.deepcopy(opt.state_dict())
            params = _params(model)
            opt.zero_grad(set_to_none=True)
            scaler.scale(_loss(model, batch)).backward()
            next(model.parameters()).grad[0, 0] = float("inf")
            scaler.step(opt, **protocol.step_kwargs(opt, tokens=16))
            scaler.update()
            assert scaler.get_scale() == 2.0**9
            _assert_same(_params(model), params)
            _assert_state_equal(opt.state_dict(), before)
        opt.zero_grad(set_to_none=True)
        scaler.scale(_loss(model, batch)).backward()
        scaler.step(opt, **protocol.step_kwargs(opt, tokens=16))
        scaler.update()
    _assert_same(_params(model), _reference(case, batches))


def _assert_state_equal(a: object, b: object, where: str = "state_dict") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_state_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("case", CASES)
def test_step_with_a_closure_returns_its_loss_and_equals_backward_then_step(case):
    batches = _batches(case)
    model = _model(case)
    opt = _optimizer(case, model)
    for batch in batches:

        def closure(batch=batch):
            opt.zero_grad(set_to_none=True)
            loss = _loss(model, batch)
            loss.backward()
            return loss

        loss = _step(opt, closure=closure)
        assert isinstance(loss, torch.Tensor) and loss.requires_grad
    _assert_same(_params(model), _reference(case, batches))


@pytest.mark.parametrize("case", CASES)
def test_a_scheduled_lr_is_read_at_every_step(case):
    """LambdaLR sets each group's lr before a step; at a factor of 0 no parameter moves (every
    update, decay included, is scaled by lr), and the steps around it do."""
    batches = _batches(case)
    model = _model(case)
    # 1-bit Adam's first call is the reference's discarded dry run: skip it, so every step moves.
    opt = _optimizer(case, model, **({"init_dry_run": False} if case[0] == "onebit_adam" else {}))
    factors = [1.0, 0.0, 1.0, 0.0, 0.5]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: factors[min(t, len(factors) - 1)])
    for i, batch in enumerate(batches):
        before = _params(model)
        opt.zero_grad(set_to_none=True)
        _loss(model, batch).backward()
        _step(opt)
        sched.step()
        moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
        if factors[i] == 0.0:
            assert not any(moved), f"step {i} at lr 0 moved parameters {moved}"
        else:
            assert all(moved), f"step {i} at lr factor {factors[i]} left parameters {moved} in place"


@pytest.mark.parametrize("case", CASES)
def test_add_param_group_equals_building_with_every_group(case):
    batches = _batches(case)
    whole = _model(case)
    opt = _optimizer(case, whole)
    _train(whole, opt, batches)

    model = _model(case)
    groups = _optimizer(case, model).param_groups  # the registry's split, every key filled in
    later = _optimizer(case, [{**groups[0]}])
    for g in groups[1:]:
        later.add_param_group({**g})
    assert len(later.param_groups) == len(groups) > 1
    _train(model, later, batches)
    _assert_same(_params(model), _params(whole))


@pytest.mark.parametrize("case", CASES)
def test_a_weights_only_checkpoint_resumes_bit_for_bit(case):
    """``torch.save(opt.state_dict())`` loads with ``weights_only=True`` (no pickled code) into a
    fresh optimizer, which then continues exactly as the uninterrupted run."""
    batches = _batches(case, 7)
    model = _model(case)
    opt = _optimizer(case, model)
    _train(model, opt, batches[:3])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = _model(case, seed=123)  # other weights and no state until loaded
    resumed.load_state_dict(saved["model"])
    opt2 = _optimizer(case, resumed)
    opt2.load_state_dict(saved["optim"])
    _train(resumed, opt2, batches[3:])
    _train(model, opt, batches[3:])
    _assert_same(_params(resumed), _params(model))
    _assert_state_equal(opt2.state_dict(), opt.state_dict())


@pytest.mark.parametrize("case", CASES)
def test_maximize_on_the_negated_loss_equals_minimising_and_leaves_grad_alone(case):
    batches = _batches(case)
    model = _model(case)
    opt = _optimizer(case, model, maximize=True)
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        (-_loss(model, batch)).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        _step(opt)
        _assert_same([p.grad for p in model.parameters()], grads)
    _assert_same(_params(model), _reference(case, batches))


@pytest.mark.parametrize("case", CASES)
def test_a_parameter_without_grad_is_skipped_and_gets_no_state(case):
    model = _model(case)
    opt = _optimizer(case, model)
    frozen = model[2].weight  # a hidden matrix: the matrix-only optimizers' own update path
    before = frozen.detach().clone()
    for batch in _batches(case):
        opt.zero_grad(set_to_none=True)
        _loss(model, batch).backward()
        frozen.grad = None
        _step(opt)
    assert torch.equal(frozen.detach(), before)
    assert frozen not in opt.state or not opt.state[frozen]
    assert all(len(opt.state[p]) > 0 for p in model.parameters() if p is not frozen)


@pytest.mark.parametrize("case", CASES)
def test_a_0d_tensor_lr_equals_the_float(case):
    batches = _batches(case)
    model = _model(case)
    opt = _optimizer(case, model, lr=torch.tensor(HPARAMS["lr"]))
    _train(model, opt, batches)
    torch.testing.assert_close(_params(model), _reference(case, batches), rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_step_and_state_dict_hooks_run_once_in_order(case):
    model = _model(case)
    opt = _optimizer(case, model)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("state_dict"))
    _train(model, opt, _batches(case, 2))
    opt.state_dict()
    assert calls == ["pre", "post", "pre", "post", "state_dict"]


def _floating_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every floating state tensor but the step counters, in the state dict's order."""
    counters = ("step", "last_svd_step")
    states = opt.state_dict()["state"].values()
    return [v for st in states for k, v in st.items() if k not in counters and torch.is_floating_point(v)]


@pytest.mark.parametrize("case", CASES)
def test_load_hooks_change_what_is_loaded_as_in_torch(case):
    """A pre-hook's returned state dict is what loads (here: it renames legacy keys back, which
    must pass the check that refuses another optimizer's state), and a post-hook's changes stick;
    torch.optim documents both for adapting old checkpoints."""
    batches = _batches(case, 6)
    model = _model(case)
    opt = _optimizer(case, model)
    _train(model, opt, batches[:3])
    saved = copy.deepcopy(opt.state_dict())
    legacy = copy.deepcopy(saved)
    legacy["state"] = {i: {f"old_{k}": v for k, v in st.items()} for i, st in legacy["state"].items()}

    def rename(_, sd):
        sd = dict(sd)
        sd["state"] = {i: {k.removeprefix("old_"): v for k, v in st.items()} for i, st in sd["state"].items()}
        return sd

    resumed = copy.deepcopy(model)
    opt2 = _optimizer(case, resumed)
    opt2.register_load_state_dict_pre_hook(rename)
    opt2.load_state_dict(legacy)
    _assert_state_equal(opt2.state_dict(), saved)
    _train(resumed, opt2, batches[3:])
    _train(model, opt, batches[3:])
    _assert_same(_params(resumed), _params(model))

    def halve_state(o):
        for state in o.state.values():
            for k, v in state.items():
                if k not in ("step", "last_svd_step") and torch.is_floating_point(v):
                    state[k] = v / 2

    opt3 = _optimizer(case, copy.deepcopy(model))
    opt3.register_load_state_dict_post_hook(halve_state)
    opt3.load_state_dict(saved)
    expected = [v / 2 for v in _floating_state(_loaded(case, saved))]
    _assert_same(_floating_state(opt3), expected)


def _loaded(case: Case, state_dict: dict) -> torch.optim.Optimizer:
    opt = _optimizer(case, _model(case))
    opt.load_state_dict(state_dict)
    return opt


@pytest.mark.parametrize("case", CASES)
def test_0d_tensor_coefficients_equal_the_floats(case):
    """Betas, momentum and gamma given as 0-d tensors (e.g. to schedule them in place) equal the
    floats on every path. AdamW's foreach path (also the matrix optimizers' auxiliary groups) and
    the fused Triton FOCUS and Signum kernels once crashed on them."""
    names = ("betas", "adamw_betas", "momentum", "gamma")
    coefficients = {k: v for k, v in get_spec(case[0]).hyperparameters().items() if k in names}
    batches = _batches(case)
    model = _model(case)

    def as_tensor(x: float) -> torch.Tensor:
        # float64: the floats' own numbers (float32 would round 0.999, moving 1 - beta2 by 1e-4)
        return torch.tensor(x, dtype=torch.float64)

    tensors = {
        k: tuple(map(as_tensor, v)) if isinstance(v, tuple) else as_tensor(v) for k, v in coefficients.items()
    }
    _train(model, _optimizer(case, model, **tensors), batches)
    torch.testing.assert_close(_params(model), _reference(case, batches), rtol=0, atol=1e-6)


class _WithOddParams(nn.Module):
    """The contract model plus a 0-d parameter (a learnt temperature) and a zero-size matrix."""

    def __init__(self, case: Case, empty: bool) -> None:
        super().__init__()
        self.body = _model(case)
        self.temp = nn.Parameter(torch.tensor(1.5, device=case[2]))
        if empty:
            self.empty = nn.Parameter(torch.zeros(0, 4, device=case[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x) * self.temp
        return out + self.empty.sum() if hasattr(self, "empty") else out


@pytest.mark.parametrize("case", CASES)
def test_a_0d_parameter_trains_and_a_zero_size_one_changes_nothing(case):
    """torch.optim steps both; here a zero-size matrix once crashed ROOT's quantile clipping."""
    results = []
    for empty in (False, True):
        model = _WithOddParams(case, empty)
        _train(model, _optimizer(case, model), _batches(case))
        results.append({n: p.detach().clone() for n, p in model.named_parameters() if n != "empty"})
    assert results[1]["temp"] != 1.5  # the 0-d temperature moved
    _assert_same(list(results[1].values()), list(results[0].values()))


@pytest.mark.parametrize("case", CASES)
def test_complex_parameters_update_as_real_pairs_or_are_refused(case):
    """Element-wise optimizers treat a complex parameter as its (real, imaginary) pairs, as
    torch.optim does: the same numbers as the optimizer on ``view_as_real`` of it. The matrix and
    communication optimizers refuse it with a ValueError."""
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 3, dtype=torch.complex64, generator=gen).to(case[2])
    grads = [torch.randn(4, 3, dtype=torch.complex64, generator=gen).to(case[2]) for _ in range(3)]
    z = nn.Parameter(z0.clone())
    if get_spec(case[0]).matrix_only or case[0] == "onebit_adam":
        with pytest.raises(ValueError, match="complex"):
            _optimizer(case, [z])
        return
    r = nn.Parameter(torch.view_as_real(z0).clone())
    opts = [_optimizer(case, [z]), _optimizer(case, [r])]
    for g in grads:
        z.grad, r.grad = g, torch.view_as_real(g).clone()
        for opt in opts:
            _step(opt)
    _assert_same([torch.view_as_real(z.detach())], [r.detach()])


def test_adamw_on_complex_parameters_matches_torch_on_every_path():
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(5, 3, dtype=torch.complex128, generator=gen)
    grads = [torch.randn(5, 3, dtype=torch.complex128, generator=gen) for _ in range(4)]
    ref = nn.Parameter(z0.clone())
    torch_opt = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.1, foreach=False)
    ours = {}
    for flags in ({"foreach": False}, {"foreach": True}, {"fused": True}):
        ours[str(flags)] = (
            (z := nn.Parameter(z0.clone())),
            make_optimizer("adamw", [z], lr=0.01, weight_decay=0.1, **flags),
        )
    for g in grads:
        ref.grad = g
        torch_opt.step()
        for z, opt in ours.values():
            z.grad = g
            opt.step()
    for z, _ in ours.values():
        torch.testing.assert_close(z.detach(), ref.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_another_optimizers_state_dict_is_refused_and_nothing_is_loaded(case):
    """A state dict whose per-parameter state keys differ from this optimizer's (here AdamW's, or
    FOCUS's for AdamW) is a ValueError naming them, raised before anything is loaded. EXAdam and
    1-bit Adam keep Adam's keys, so only the keys' meaning would tell them apart: they load it."""
    model = _model(case)
    opt = _optimizer(case, model)
    _train(model, opt, _batches(case, 2))
    before = copy.deepcopy(opt.state_dict())
    other_name = "focus" if case[0] == "adamw" else "adamw"
    other_model = _model(case)
    other = make_optimizer(other_name, other_model, **HPARAMS)
    _train(other_model, other, _batches(case, 2))
    if case[0] in ("exadam", "onebit_adam"):
        opt.load_state_dict(other.state_dict())
        loaded, theirs = opt.state_dict()["state"], other.state_dict()["state"]
        assert loaded.keys() == theirs.keys() and loaded  # every parameter's state is AdamW's now
        for i, state in theirs.items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(loaded[i][key].cpu(), state[key].cpu()), (i, key)
        return
    with pytest.raises(ValueError, match=r"parameter 0 \(group 0\) has state .* another optimizer"):
        opt.load_state_dict(other.state_dict())
    _assert_state_equal(opt.state_dict(), before)


def test_the_triton_kernels_keep_the_contract_in_interpreter_mode():
    """The fused cases again, with Triton's CPU interpreter on, so that FOCUS's and Signum's
    fused steps run the CUDA path's Triton kernel (``use_triton``): the same contract without a GPU."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    select = "fused and not cuda and not interpreter"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        __file__,
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-k",
        select,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
