"""Property-based tests (hypothesis) of the toy lab's building blocks: the counter-based generator
(tensor hash == Python reference bit for bit, injectivity, normals == reference, independence from
row batching) and the valley (exact gradient == autograd for every kind, axial symmetry)."""

from __future__ import annotations

import math

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from focus_optim.landscape import rng
from focus_optim.landscape import valley as V

INT32_EDGES = [0, 1, -1, -(2**31), 2**31 - 1, 2**15, -(2**16), 0x7FEB352D]
int32s = st.one_of(st.sampled_from(INT32_EDGES), st.integers(-(2**31), 2**31 - 1))
SEEDS = st.integers(0, 2**64 - 1)
FAST = settings(max_examples=60, deadline=None, database=None)


def as_words(t: torch.Tensor) -> list[int]:
    """An int32 tensor as unsigned 32-bit words."""
    return [v & rng.MASK32 for v in t.tolist()]


# --- the generator ------------------------------------------------------------------------------
@FAST
@given(st.lists(int32s, min_size=1, max_size=64))
@example(INT32_EDGES)
def test_mix32_equals_python_reference_bit_for_bit(words: list[int]) -> None:
    got = as_words(rng.mix32(torch.tensor(words, dtype=torch.int32)))
    assert got == [rng.mix32_py(w & rng.MASK32) for w in words]
    # the reference agrees whether it is given the signed or the unsigned spelling of a word
    assert got == [rng.mix32_py(w) for w in words]


@FAST
@given(st.lists(int32s, min_size=2, max_size=200, unique=True))
@example(INT32_EDGES)
def test_mix32_is_injective(words: list[int]) -> None:
    out = rng.mix32(torch.tensor(words, dtype=torch.int32))
    assert out.dtype == torch.int32
    assert torch.unique(out).numel() == len(words)


@FAST
@given(
    keys=st.lists(int32s, min_size=1, max_size=8),
    counters=st.lists(st.one_of(st.integers(0, 2**31 - 1), int32s), min_size=1, max_size=6),
)
def test_normals_equal_python_reference(keys: list[int], counters: list[int]) -> None:
    k = torch.tensor(keys, dtype=torch.int32)
    c = torch.tensor(counters, dtype=torch.int32).view(-1, 1)
    z = rng.normals(k, c)  # [2P, R]: cosines of the P counters, then their sines
    p = len(counters)
    assert z.shape == (2 * p, len(keys)) and z.dtype == torch.float32
    want = torch.empty(2 * p, len(keys), dtype=torch.float64)
    for j, counter in enumerate(counters):
        for i, key in enumerate(keys):
            want[j, i], want[p + j, i] = rng.normals_py(key & rng.MASK32, counter & rng.MASK32)
    # float32 rounding: |r| <= sqrt(2 * 24 ln 2) ~ 5.8 and the angle carries ~1 ulp of 2 pi
    torch.testing.assert_close(z.double(), want, rtol=1e-6, atol=1e-5)


@st.composite
def row_batches(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(start, n, lo, hi): a batch of rows start..start+n-1 of a cell and a chunk lo..hi-1 of it."""
    n = draw(st.integers(1, 48))
    start = draw(st.one_of(st.integers(0, 1000), st.integers(2**31 - 64, 2**31 + 64), st.just(2**32 - n)))
    start = draw(st.sampled_from([0, start]))  # row 0 half of the time
    start = min(start, 2**32 - n)
    lo = draw(st.integers(0, n - 1))
    hi = draw(st.integers(lo + 1, n))
    return start, n, lo, hi


@FAST
@given(
    seed=SEEDS,
    rows=row_batches(),
    step=st.integers(0, 100_000),
    dim=st.integers(1, 9),
    count=st.one_of(st.none(), st.integers(1, 4)),
)
def test_step_normals_do_not_depend_on_batching(
    seed: int, rows: tuple[int, int, int, int], step: int, dim: int, count: int | None
) -> None:
    start, n, lo, hi = rows
    keys = rng.row_keys(seed, hi - lo, start=start + lo)
    if start + hi <= 2048:  # anchored at row 0: the same keys as the first start + hi rows
        assert torch.equal(keys, rng.row_keys(seed, start + hi)[start + lo :])
    big = rng.step_normals(rng.row_keys(seed, n, start=start), step, dim, count)
    chunk = rng.step_normals(keys, step, dim, count)
    assert big.shape == ((n, dim) if count is None else (count, n, dim))
    assert torch.equal(chunk, big[..., lo:hi, :])
    if count is not None:  # a block of steps is the same as the steps one by one
        for i in range(count):
            assert torch.equal(big[i], rng.step_normals(rng.row_keys(seed, n, start=start), step + i, dim))


# --- the valley ---------------------------------------------------------------------------------
@st.composite
def valleys(draw: st.DrawFn, min_dim: int = 2) -> V.Valley:
    c = draw(st.floats(-1.0, 1.0))
    kinds = ["random"] if min_dim > 2 else ["rotated", "unrotated", "random"]
    kind = draw(st.sampled_from(kinds))
    if kind == "rotated":
        return V.rotated(angle=draw(st.floats(-math.pi, math.pi)), c=c)
    if kind == "unrotated":
        return V.unrotated(c=c)
    return V.random_axis(draw(st.integers(min_dim, 7)), seed=draw(st.integers(0, 2**31 - 1)), c=c)


@st.composite
def thetas(draw: st.DrawFn, dim: int) -> torch.Tensor:
    rows = draw(st.integers(1, 4))
    coord = st.floats(-3.0, 3.0, allow_subnormal=False)
    values = draw(st.lists(st.lists(coord, min_size=dim, max_size=dim), min_size=rows, max_size=rows))
    return torch.tensor(values, dtype=torch.float64)


@st.composite
def sharpness(draw: st.DrawFn, rows: int) -> float | torch.Tensor:
    """``a > 0``: a number, or one value per row."""
    a = st.floats(1e-3, 1e3)
    if draw(st.booleans()):
        return draw(a)
    return torch.tensor(draw(st.lists(a, min_size=rows, max_size=rows)), dtype=torch.float64)


def scale(theta: torch.Tensor, a: float | torch.Tensor, c: float) -> torch.Tensor:
    """Per-row bound on the terms of the loss and gradient (|u|, |v| <= |theta|), for tolerances."""
    r = theta.norm(dim=-1)
    return 1 + torch.as_tensor(a, dtype=torch.float64) * r**3 * (1 + r) + abs(c)


@settings(max_examples=100, deadline=None, database=None)
@given(data=st.data(), land=valleys(), ordered=st.booleans())
def test_gradient_equals_autograd(data: st.DataObject, land: V.Valley, ordered: bool) -> None:
    n = land.dim
    ordered = ordered and n > 2
    theta = data.draw(thetas(n), label="theta")
    a = data.draw(sharpness(theta.shape[0]), label="a")
    e = land.axis_tensor(dtype=torch.float64)
    loss, grad, u = V.loss_and_grad(theta, a, e, land.c, ordered)
    t = theta.clone().requires_grad_()
    want_loss = V.loss(t, a, e, land.c)
    (want_grad,) = torch.autograd.grad(want_loss.sum(), t)
    tol = 1e-13 * n * scale(theta, a, land.c)
    assert grad.shape == theta.shape and loss.shape == u.shape == theta.shape[:1]
    assert ((loss - want_loss.detach()).abs() <= tol).all()
    assert ((grad - want_grad).abs() <= tol[:, None]).all(), (grad, want_grad)
    torch.testing.assert_close(u, theta @ e, rtol=1e-12, atol=1e-12)


def orthonormal_complement(e: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` random orthonormal vectors ``[k, N]`` orthogonal to the unit vector ``e``."""
    out: list[torch.Tensor] = []
    while len(out) < k:
        w = torch.randn(e.numel(), generator=gen, dtype=torch.float64)
        for b in [e, *out]:
            w = w - (w @ b) * b
        if w.norm() > 1e-3:
            out.append(w / w.norm())
    return torch.stack(out)


@settings(max_examples=60, deadline=None, database=None)
@given(
    data=st.data(),
    land=valleys(min_dim=3),
    angle=st.floats(-math.pi, math.pi),
    seed=st.integers(0, 2**31 - 1),
)
def test_loss_is_axially_symmetric(data: st.DataObject, land: V.Valley, angle: float, seed: int) -> None:
    n = land.dim
    theta = data.draw(thetas(n), label="theta")
    a = data.draw(sharpness(theta.shape[0]), label="a")
    e = land.axis_tensor(dtype=torch.float64)
    p, q = orthonormal_complement(e, 2, torch.Generator().manual_seed(seed))
    # rotation by `angle` in the plane (p, q), which fixes e; and a Householder reflection fixing e
    rot = (
        torch.eye(n, dtype=torch.float64)
        + (math.cos(angle) - 1) * (torch.outer(p, p) + torch.outer(q, q))
        + math.sin(angle) * (torch.outer(q, p) - torch.outer(p, q))
    )
    refl = torch.eye(n, dtype=torch.float64) - 2 * torch.outer(p, p)
    torch.testing.assert_close(rot @ rot.T, torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(rot @ e, e)
    want = V.loss(theta, a, e, land.c)
    tol = 1e-12 * n * scale(theta, a, land.c)
    for m in (rot, refl):
        moved = theta @ m.T
        assert ((V.loss(moved, a, e, land.c) - want).abs() <= tol).all()
        for ordered in (False, True):
            loss, grad, _ = V.loss_and_grad(moved, a, e, land.c, ordered)
            assert ((loss - want).abs() <= tol).all()
            # the gradient is equivariant: grad(M theta) = M grad(theta)
            _, g0, _ = V.loss_and_grad(theta, a, e, land.c, ordered)
            assert ((grad - g0 @ m.T).abs() <= tol[:, None]).all()


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data(), land=valleys())
def test_loss_is_even_in_v_and_its_odd_part_in_u_is_minus_c_u(data: st.DataObject, land: V.Valley) -> None:
    """In every dimension (2 included) the loss depends on v only through |v|: v -> -v keeps it."""
    n = land.dim
    theta = data.draw(thetas(n), label="theta")
    a = data.draw(sharpness(theta.shape[0]), label="a")
    e = land.axis_tensor(dtype=torch.float64)
    mirror = 2 * torch.outer(e, e) - torch.eye(n, dtype=torch.float64)  # u e + v -> u e - v
    want = V.loss(theta, a, e, land.c)
    got = V.loss(theta @ mirror.T, a, e, land.c)
    assert ((got - want).abs() <= 1e-12 * n * scale(theta, a, land.c)).all()
    # ...while a reflection that flips the axis changes it (c u is odd in u) unless u = 0 or c = 0
    flipped = V.loss(theta @ (-mirror).T, a, e, land.c)
    tol = 1e-12 * n * scale(theta, a, land.c)
    assert ((flipped - want - 2 * land.c * (theta @ e)).abs() <= tol).all()
