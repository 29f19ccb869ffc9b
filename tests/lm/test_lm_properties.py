"""Property-based tests (hypothesis) of ``chunked_linear_cross_entropy``: for any sizes and chunk
size it equals ``F.cross_entropy(x @ weight.T, targets)`` in value and in the gradients w.r.t. ``x``
and ``weight`` (float64), on the training branch (custom autograd function) and the evaluation
branch (no_grad, or inputs that need no gradient)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from focus_optim.lm import losses

FAST = settings(max_examples=80, deadline=None, database=None)


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(x [N, C], weight [V, C], targets [N], chunk_size) in float64 with 1 <= chunk_size <= N + 5."""
    n = draw(st.integers(1, 40), label="N")
    hidden = draw(st.integers(1, 12), label="hidden")
    vocab = draw(st.integers(1, 30), label="vocab")
    chunk = draw(st.integers(1, n + 5), label="chunk_size")
    spread = draw(st.sampled_from([0.1, 1.0, 5.0]), label="logit scale")
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1), label="seed"))
    x = torch.randn(n, hidden, generator=gen, dtype=torch.float64) * spread
    weight = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return x, weight, targets, chunk


def reference(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(x @ weight.T, targets)


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@FAST
@given(
    problem=problems(),
    upstream=st.floats(-3.0, 3.0).filter(lambda v: abs(v) > 1e-3),
    wrt=st.sampled_from(["x", "weight", "both"]),
)
def test_value_and_gradients_equal_cross_entropy(
    problem: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int], upstream: float, wrt: str
) -> None:
    x0, w0, targets, chunk = problem
    leaves = {"x": (True, False), "weight": (False, True), "both": (True, True)}[wrt]
    x, w = (t.clone().requires_grad_(g) for t, g in zip((x0, w0), leaves))
    xr, wr = (t.clone().requires_grad_(g) for t, g in zip((x0, w0), leaves))
    got = losses.chunked_linear_cross_entropy(x, w, targets, chunk)
    want = reference(xr, wr, targets)
    assert got.shape == () and got.dtype == torch.float64 and got.requires_grad
    close(got, want)
    # a non-unit upstream gradient must scale both gradients
    (upstream * got).backward()
    (upstream * want).backward()
    for mine, ref in zip((x, w), (xr, wr)):
        if mine.requires_grad:
            assert mine.grad is not None and mine.grad.dtype == torch.float64
            close(mine.grad, ref.grad)
        else:
            assert mine.grad is None


@FAST
@given(problem=problems(), requires_grad=st.booleans())
def test_evaluation_branch_equals_cross_entropy(
    problem: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int], requires_grad: bool
) -> None:
    x, weight, targets, chunk = problem
    want = reference(x, weight, targets)
    with torch.no_grad():
        xs, ws = x.clone().requires_grad_(requires_grad), weight.clone().requires_grad_(requires_grad)
        got = losses.chunked_linear_cross_entropy(xs, ws, targets, chunk)
    assert got.shape == () and not got.requires_grad
    close(got, want)
    # with grad enabled but nothing to differentiate, the same evaluation branch
    plain = losses.chunked_linear_cross_entropy(x, weight, targets, chunk)
    assert not plain.requires_grad
    close(plain, want)


@settings(max_examples=30, deadline=None, database=None)
@given(problem=problems(), other=st.integers(1, 45))
def test_result_does_not_depend_on_chunk_size(
    problem: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int], other: int
) -> None:
    x0, w0, targets, chunk = problem
    results = []
    for c in (chunk, other):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = losses.chunked_linear_cross_entropy(x, w, targets, c)
        loss.backward()
        results.append((loss.detach(), x.grad, w.grad))
    for a, b in zip(*results):
        close(a, b)
