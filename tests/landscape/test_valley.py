"""The valley loss: Eq. (1) and its rotation, the exact gradient against autograd, the
generalisations of Figure 6."""

from __future__ import annotations

import math

import pytest
import torch

from focus_optim.landscape import valley as V


def eq1(x: torch.Tensor, y: torch.Tensor, a: float, c: float, angle: float) -> torch.Tensor:
    """Eq. (1) with (u, v) from appendix A.1's rotation matrix: (x, y) = R(angle) (u, v)."""
    rot = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
    )
    uv = torch.stack((x, y), -1) @ rot  # = (R^T (x, y)^T)^T
    u, v = uv[..., 0], uv[..., 1]
    return a / 2 * u**2 * v**2 - c * u


def test_rotated_loss_is_eq1_with_u_axis_counter_clockwise() -> None:
    torch.manual_seed(0)
    theta = torch.randn(64, 2, dtype=torch.float64) * 2
    a = torch.rand(64, dtype=torch.float64) * 100
    land = V.rotated()
    e = land.axis_tensor(dtype=torch.float64)
    got = V.loss(theta, a, e, land.c)
    want = eq1(theta[:, 0], theta[:, 1], a, land.c, math.pi / 6)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the valley floor (v = 0) is the line at +30 degrees from x, and loss falls along +u
    p = torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]], dtype=torch.float64) * 3
    loss, grad, u = V.loss_and_grad(p, 1000.0, e, land.c)
    assert u.item() == pytest.approx(3.0)
    assert loss.item() == pytest.approx(-0.3)
    torch.testing.assert_close(grad, -land.c * e[None])


@pytest.mark.parametrize(
    "land",
    [V.rotated(), V.unrotated(), V.random_axis(5, seed=1), V.random_axis(100)],
    ids=["rotated", "unrotated", "5d", "100d"],
)
@pytest.mark.parametrize("ordered", [False, True])
def test_gradient_matches_autograd(land: V.Valley, ordered: bool) -> None:
    torch.manual_seed(1)
    n = land.dim
    theta = (torch.randn(32, n, dtype=torch.float64) * 1.5).requires_grad_()
    a = torch.logspace(-1, 3, 32, dtype=torch.float64)
    e = land.axis_tensor(dtype=torch.float64)
    loss, grad, u = V.loss_and_grad(theta, a, e, land.c, ordered)
    (auto,) = torch.autograd.grad(loss.sum(), theta)
    torch.testing.assert_close(grad, auto, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(u, theta.detach() @ e)


def test_unrotated_is_u_x_v_y() -> None:
    theta = torch.tensor([[2.0, 0.5], [-1.0, 3.0]], dtype=torch.float64)
    land = V.unrotated()
    got = V.loss(theta, 4.0, land.axis_tensor(dtype=torch.float64), land.c)
    x, y = theta[:, 0], theta[:, 1]
    torch.testing.assert_close(got, 2.0 * x**2 * y**2 - 0.1 * x)


def test_high_dimensional_valley_is_axially_symmetric() -> None:
    land = V.random_axis(100, seed=3)
    e = land.axis_tensor(dtype=torch.float64)
    assert e.norm().item() == pytest.approx(1.0)
    assert V.random_axis(100, seed=3) == land and V.random_axis(100, seed=4) != land
    torch.manual_seed(2)
    theta = torch.randn(8, 100, dtype=torch.float64)
    # a random rotation that fixes e: Householder reflections in the complement of e
    w = torch.randn(100, dtype=torch.float64)
    w = w - (w @ e) * e
    w = w / w.norm()
    h = torch.eye(100, dtype=torch.float64) - 2 * torch.outer(w, w)
    torch.testing.assert_close(V.loss(theta @ h, 7.0, e, 0.1), V.loss(theta, 7.0, e, 0.1))
    # and along the axis it is L(u, v=0) = -c u
    torch.testing.assert_close(V.loss(2.5 * e[None], 7.0, e, 0.1), torch.tensor([-0.25], dtype=torch.float64))


def test_noisy_gradient_is_multiplicative_per_component() -> None:
    g = torch.tensor([[2.0, -3.0]])
    z = torch.tensor([[0.5, -1.0]])
    torch.testing.assert_close(V.noisy(g, torch.tensor([2.0]), z), torch.tensor([[4.0, 3.0]]))
    assert V.noisy(g, 0.0, z).equal(g)


def test_make_rejects_unknown_landscape() -> None:
    with pytest.raises(ValueError, match="Invalid landscape"):
        V.make("spiral")
