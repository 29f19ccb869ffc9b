"""Property-based tests (hypothesis) of the optimizers in :mod:`focus_optim.optim`.

For drawn shapes, hyperparameters, gradients and step counts:

* FOCUS (float64, per-tensor and foreach paths) equals an independent numpy restatement of the
  update of its module docstring (Algorithm 1 and the ``reference``/``decoupled`` decay modes);
* the per-tensor, foreach and (on CPU, compiled) fused paths give the same parameters and state
  (FOCUS, Signum; foreach vs per-tensor also for AdamW, Lion and EXAdam from the registry);
* Signum is FOCUS with ``gamma=0`` and ``betas[1]=0``;
* every registered optimizer rejects an out-of-range ``lr`` / beta with a ValueError naming it;
* a ``state_dict`` round trip through ``torch.save``/``torch.load`` continues a run bit for bit.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn import Parameter

from focus_optim import FOCUS, Signum, make_optimizer
from focus_optim.optim.registry import available_optimizers, get_spec

F32, F64 = torch.float32, torch.float64
DECAY_MODES = ("algorithm1", "reference", "decoupled")  # spelled out: the restatement imports nothing

# Deterministic, database-free runs (no .hypothesis directory), no per-example deadline.
BASE = settings(derandomize=True, database=None, deadline=None)


def examples(n: int) -> settings:
    """``BASE`` with ``n`` examples per test."""
    return settings(BASE, max_examples=n)


# --- strategies ----------------------------------------------------------------------------------
unit = st.floats(0.0, 1.0, exclude_max=True)
betas_st = st.tuples(unit, unit)
# lr, weight decay and |gamma| are 0 or at least 1e-3 (a 1e-300 learning rate makes every sign a
# rounding tie); 0 is one branch in three, so that combinations of nonzero values are common
lr_st = st.one_of(st.floats(1e-3, 0.1), st.floats(0.1, 1.0), st.just(0.0))
wd_st = st.one_of(st.floats(1e-3, 0.1), st.floats(0.1, 1.0), st.just(0.0))
gamma_st = st.one_of(st.floats(-2.0, -1e-3), st.floats(1e-3, 2.0), st.just(0.0))
shape_st = st.lists(st.integers(1, 4), max_size=3).map(tuple)  # includes 0-d parameters
seed_st = st.integers(0, 2**32 - 1)


def hparams_st(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid constructor keyword arguments of registry optimizer ``name`` (without paths)."""
    common: dict[str, st.SearchStrategy[Any]] = dict(lr=lr_st, weight_decay=wd_st, maximize=st.booleans())
    extra: dict[str, st.SearchStrategy[Any]] = {
        "focus": dict(betas=betas_st, gamma=gamma_st, decay_mode=st.sampled_from(DECAY_MODES)),
        "signum": dict(momentum=unit),
        "adamw": dict(
            betas=betas_st,
            eps=st.floats(1e-10, 1e-3),
            eps_mode=st.sampled_from(("after_bias_correction", "before_bias_correction")),
            decay_mode=st.sampled_from(("decoupled", "post_update")),
        ),
        "lion": dict(betas=betas_st),
        "exadam": dict(betas=betas_st, eps=st.floats(1e-10, 1e-3), growing_step=st.booleans()),
    }[name]
    return st.fixed_dictionaries({**common, **extra})


# --- an independent float64 restatement of FOCUS (numpy only) ------------------------------------
TIE = 1e-9  # |x| below TIE * (size of the terms that produced x): a sign decided by rounding


class AmbiguousSign(Exception):
    """A sign that matters is a tie up to rounding: the restatement cannot predict the library."""


def _near_tie(x: np.ndarray, scale: np.ndarray) -> bool:
    return bool(np.any(np.abs(x) <= TIE * scale))


def restate_focus(
    theta0: np.ndarray,
    grads: Sequence[np.ndarray],
    lrs: Sequence[float],
    *,
    beta1: float,
    beta2: float,
    gamma: float,
    weight_decay: float,
    decay_mode: str,
    maximize: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(theta, m, pbar) after ``len(grads)`` steps of the FOCUS docstring's update."""
    theta = np.array(theta0, dtype=np.float64)
    m, pbar = np.zeros_like(theta), np.zeros_like(theta)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = -g if maximize else g
        m_new = beta1 * m + (1 - beta1) * g
        if lr != 0 and _near_tie(m_new, beta1 * np.abs(m) + (1 - beta1) * np.abs(g)):
            raise AmbiguousSign
        m = m_new
        pbar = beta2 * pbar + (1 - beta2) * theta
        bc2 = 1 - beta2**t
        hat = pbar / bc2
        pre = theta
        if decay_mode == "algorithm1":
            theta = theta - lr * weight_decay * hat
        compared = theta  # algorithm1: the decayed theta; the other modes: theta itself
        diff = bc2 * compared - pbar  # the docstring's sign((1 - beta2^t) theta - pbar)
        # At t = 1 (or with beta2 = 0) theta_hat is exactly the averaged theta, so where that is
        # the theta compared, the sign is an exact 0: the tie the docstring promises.
        tie = (t == 1 or beta2 == 0) & (compared == pre)
        # Any other tie up to rounding is unpredictable. That includes ties exact in arithmetic but
        # not in floating point (theta unmoved since step 1; see the FOCUS module docstring).
        scale = bc2 * np.abs(compared) + np.abs(pbar)
        if lr != 0 and gamma != 0 and _near_tie(diff[~tie], scale[~tie]):
            raise AmbiguousSign
        attraction = np.where(tie, 0.0, np.sign(diff))
        update = np.sign(m) + gamma * attraction
        if decay_mode == "decoupled":
            update = update + weight_decay * pre
        theta = theta - lr * update
        if decay_mode == "reference":
            theta = theta - lr * weight_decay * hat
    return theta, m, pbar


# --- helpers ---------------------------------------------------------------------------------------
def draw_tensors(
    shapes: Sequence[tuple[int, ...]], steps: int, seed: int, dtype: torch.dtype = F64
) -> tuple[list[Tensor], list[list[Tensor]]]:
    """Initial values and per-step gradients (float64 draws, then cast)."""
    gen = torch.Generator().manual_seed(seed)
    inits = [torch.randn(s, generator=gen, dtype=F64).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=F64).to(dtype) for s in shapes] for _ in range(steps)]
    return inits, grads


def train(
    opt: torch.optim.Optimizer,
    params: Sequence[Tensor],
    grads: Sequence[Sequence[Tensor]],
    start: int,
    stop: int,
    joins: Sequence[int] | None = None,
) -> None:
    """Steps ``start..stop-1``; parameter ``i`` has no gradient before step ``joins[i]``."""
    for t in range(start, stop):
        for i, p in enumerate(params):
            late = joins is not None and t < joins[i]
            p.grad = None if late else grads[t][i].clone()
        opt.step()


def assert_same_run(
    opt_a: torch.optim.Optimizer,
    params_a: Sequence[Tensor],
    opt_b: torch.optim.Optimizer,
    params_b: Sequence[Tensor],
    atol: float | None = None,
) -> None:
    """Equal parameters and per-parameter state: bit for bit, or to ``atol`` (and rtol 0)."""

    def same(x: Any, y: Any, what: str) -> None:
        if not torch.is_tensor(x):
            assert x == y, what
        elif atol is None:
            assert x.dtype == y.dtype and torch.equal(x, y), f"{what}: max diff {(x - y).abs().max()}"
        else:
            torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")

    for i, (p, q) in enumerate(zip(params_a, params_b)):
        same(p.detach(), q.detach(), f"param {i}")
        sa, sb = opt_a.state.get(p, {}), opt_b.state.get(q, {})
        assert set(sa) == set(sb), f"state keys of param {i}"
        for key in sa:
            same(sa[key], sb[key], f"state[{key!r}] of param {i}")


def make(name: str, params: Sequence[Tensor], hparams: dict[str, Any], **flags: Any) -> torch.optim.Optimizer:
    """Registry optimizer ``name`` on ``params`` with ``hparams`` and path ``flags``."""
    return make_optimizer(name, list(params), **hparams, **flags)


# --- 1. FOCUS equals the restatement ---------------------------------------------------------------
@examples(100)
@given(
    shapes=st.lists(shape_st, min_size=1, max_size=2),
    lrs=st.lists(lr_st, min_size=1, max_size=5),
    betas=betas_st,
    gamma=gamma_st,
    weight_decay=wd_st,
    decay_mode=st.sampled_from(DECAY_MODES),
    maximize=st.booleans(),
    foreach=st.booleans(),
    seed=seed_st,
)
def test_focus_matches_restatement(
    shapes, lrs, betas, gamma, weight_decay, decay_mode, maximize, foreach, seed
):
    """float64, one group of one or two parameters, a drawn lr per step (a schedule), state too."""
    steps = len(lrs)
    inits, grads = draw_tensors(shapes, steps, seed)
    hp = dict(beta1=betas[0], beta2=betas[1], gamma=gamma, weight_decay=weight_decay)
    try:
        want = [
            restate_focus(x.numpy(), [g[i].numpy() for g in grads], lrs, **hp, decay_mode=decay_mode,
                          maximize=maximize)
            for i, x in enumerate(inits)
        ]  # fmt: skip
    except AmbiguousSign:
        reject()

    params = [Parameter(x.clone()) for x in inits]
    opt = FOCUS(params, lr=lrs[0], betas=betas, gamma=gamma, weight_decay=weight_decay,
                decay_mode=decay_mode, maximize=maximize, foreach=foreach)  # fmt: skip
    for t in range(steps):
        opt.param_groups[0]["lr"] = lrs[t]
        train(opt, params, grads, t, t + 1)
    for p, (theta, m, pbar) in zip(params, want):
        state = opt.state[p]
        for got, exp, what in ((p.detach(), theta, "param"), (state["exp_avg"], m, "exp_avg"),
                               (state["param_avg"], pbar, "param_avg")):  # fmt: skip
            torch.testing.assert_close(got, torch.from_numpy(np.asarray(exp)), rtol=1e-12, atol=1e-12,
                                       msg=lambda s, what=what: f"{what}: {s}")  # fmt: skip
        assert state["step"].item() == steps


# --- 2. the paths compute the same function --------------------------------------------------------
path_case = dict(
    shapes=st.lists(shape_st, min_size=2, max_size=3, unique=True),
    steps=st.integers(1, 5),
    joins=st.lists(st.integers(0, 3), min_size=2, max_size=2).map(lambda j: [0, *j]),  # first from step 0
    seed=seed_st,
)


@pytest.mark.parametrize("name", ["focus", "signum", "adamw", "lion", "exadam"])
@examples(30)
@given(data=st.data(), **path_case)
def test_foreach_equals_per_tensor_bit_for_bit(name, data, shapes, steps, joins, seed):
    """float32, several shapes in one group, some parameters joining late (other step counts)."""
    hp = data.draw(hparams_st(name), label="hparams")
    inits, grads = draw_tensors(shapes, steps, seed, F32)
    runs = []
    for foreach in (False, True):
        params = [Parameter(x.clone()) for x in inits]
        opt = make(name, params, hp, foreach=foreach)
        train(opt, params, grads, 0, steps, joins)
        runs.append((opt, params))
    assert_same_run(*runs[0], *runs[1])


@pytest.mark.parametrize("name", ["focus", "signum"])
@examples(3)
@given(data=st.data(), **path_case)
def test_fused_cpu_path_equals_per_tensor(name, data, shapes, steps, joins, seed):
    """The compiled fused path, as test_paths.py checks it: float64 and atol 1e-12.

    Dynamo is reset per example: the compiled update specialises on beta1, beta2, gamma, ... and
    after ``recompile_limit`` new values it would silently run eagerly, which proves nothing."""
    hp = data.draw(hparams_st(name), label="hparams")
    inits, grads = draw_tensors(shapes, steps, seed, F64)
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    runs = []
    for flags in (dict(foreach=False), dict(fused=True)):
        params = [Parameter(x.clone()) for x in inits]
        opt = make(name, params, hp, **flags)
        train(opt, params, grads, 0, steps, joins)
        runs.append((opt, params))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, "the fused path compiled nothing"
    assert_same_run(*runs[0], *runs[1], atol=1e-12)


# --- 3. Signum is FOCUS with gamma = 0 and betas[1] = 0 ---------------------------------------------
@examples(40)
@given(
    shapes=st.lists(shape_st, min_size=1, max_size=3),
    steps=st.integers(1, 5),
    lr=lr_st,
    momentum=unit,
    weight_decay=wd_st,
    maximize=st.booleans(),
    foreach=st.booleans(),
    seed=seed_st,
)
def test_signum_is_focus_without_attraction_and_averaging(
    shapes, steps, lr, momentum, weight_decay, maximize, foreach, seed
):
    """Signum's decay ``theta -= lr*wd*theta`` before the sign step is FOCUS's ``"algorithm1"``
    decay by ``theta_hat``, which is ``theta`` itself when ``betas[1] = 0``: equal bit for bit
    (float32). ``"reference"`` (decay after the step) and ``"decoupled"`` (inside the step) add the
    same two terms in another order: equal to rounding (float64)."""
    common = dict(lr=lr, weight_decay=weight_decay, maximize=maximize, foreach=foreach)
    for mode, dtype, atol in (
        ("algorithm1", F32, None),
        ("reference", F64, 1e-12),
        ("decoupled", F64, 1e-12),
    ):
        inits, grads = draw_tensors(shapes, steps, seed, dtype)
        runs = []
        for cls, kw in ((Signum, dict(momentum=momentum)),
                        (FOCUS, dict(betas=(momentum, 0.0), gamma=0.0, decay_mode=mode))):  # fmt: skip
            params = [Parameter(x.clone()) for x in inits]
            opt = cls(params, **common, **kw)
            train(opt, params, grads, 0, steps)
            runs.append((opt, params))
        (signum, ps), (focus, qs) = runs
        for i, (p, q) in enumerate(zip(ps, qs)):
            m, m_focus = signum.state[p]["exp_avg"], focus.state[q]["exp_avg"]
            if atol is None:
                assert torch.equal(p, q), f"{mode}: param {i}"
                assert torch.equal(m, m_focus), f"{mode}: exp_avg {i}"
            else:
                torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=atol)
                torch.testing.assert_close(m, m_focus, rtol=0, atol=atol)
            assert signum.state[p]["step"].item() == focus.state[q]["step"].item() == steps


# --- 4. validation names the argument ------------------------------------------------------------
# Every registered optimizer builds in one CPU process (OneBitAdam without torch.distributed runs as
# one worker), so none is skipped. A matrix is included for the matrix-only ones (Muon, ROOT, Conda).
def validation_params() -> list[Tensor]:
    return [Parameter(torch.zeros(3, 2)), Parameter(torch.zeros(3))]


bad_lr = st.one_of(
    st.floats(max_value=-1e-300),  # negative, -inf included
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
bad_beta = st.one_of(
    st.floats(max_value=-1e-300),
    st.floats(min_value=1.0),  # 1 and above, inf included
    st.just(math.nan),
)
as_tensor_or_float = st.sampled_from([float, lambda v: torch.tensor(v, dtype=F64)])


def beta_keys(name: str) -> list[str]:
    """Hyperparameters of ``name`` that hold a pair of betas (``betas``, ``adamw_betas``) or one."""
    hp = get_spec(name).hyperparameters()
    return [k for k in hp if k.endswith("betas") or k == "momentum"]


@pytest.mark.parametrize("name", available_optimizers())
@examples(20)
@given(value=bad_lr, wrap=as_tensor_or_float)
def test_out_of_range_lr_is_a_value_error_naming_lr(name, value, wrap):
    with pytest.raises(ValueError, match=r"^Invalid lr: .*\(allowed: "):
        make_optimizer(name, validation_params(), lr=wrap(value))


@pytest.mark.parametrize("name", [n for n in available_optimizers() if beta_keys(n)])
@examples(20)
@given(data=st.data(), value=bad_beta, index=st.integers(0, 1))
def test_out_of_range_beta_is_a_value_error_naming_it(name, data, value, index):
    key = data.draw(st.sampled_from(beta_keys(name)), label="key")
    default = get_spec(name).hyperparameters()[key]
    if isinstance(default, tuple):
        bad: Any = tuple(value if i == index else b for i, b in enumerate(default))
        needle = f"{key}[{index}]"
    else:
        bad, needle = value, key
    with pytest.raises(ValueError, match="^Invalid " + re.escape(needle) + r": .*\(allowed: "):
        make_optimizer(name, validation_params(), **{key: bad})


# --- 5. state_dict round trip -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["focus", "signum", "adamw", "lion", "exadam"])
@examples(25)
@given(
    data=st.data(),
    shapes=st.lists(shape_st, min_size=1, max_size=3),
    k=st.integers(1, 4),
    m=st.integers(1, 4),
    joins=st.lists(st.integers(0, 5), min_size=3, max_size=3),
    foreach=st.booleans(),
    seed=seed_st,
)
def test_state_dict_round_trip_continues_bit_for_bit(name, data, shapes, k, m, joins, foreach, seed):
    """k steps, save (torch.save/torch.load(weights_only=True)), load into a fresh optimizer built
    with other hyperparameters on a copy of the parameters, m more steps == k + m uninterrupted."""
    hp = data.draw(hparams_st(name), label="hparams")
    inits, grads = draw_tensors(shapes, k + m, seed, F32)

    ps = [Parameter(x.clone()) for x in inits]
    straight = make(name, ps, hp, foreach=foreach)
    train(straight, ps, grads, 0, k + m, joins)

    qs = [Parameter(x.clone()) for x in inits]
    first = make(name, qs, hp, foreach=foreach)
    train(first, qs, grads, 0, k, joins)
    buf = io.BytesIO()
    torch.save({"opt": first.state_dict(), "params": [q.detach() for q in qs]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    rs = [Parameter(x.clone()) for x in saved["params"]]
    # other hyperparameters (the registry defaults, the other path): the load must restore them
    resumed = make_optimizer(name, rs, foreach=not foreach)
    resumed.load_state_dict(saved["opt"])
    train(resumed, rs, grads, k, k + m, joins)
    assert_same_run(straight, ps, resumed, rs)
