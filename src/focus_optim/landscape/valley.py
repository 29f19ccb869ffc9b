r"""The narrowing-valley loss of the FOCUS paper (Eq. 1) and its generalisations (Figure 6).

.. math::
    L(\theta) = \tfrac{a}{2}\, u^2 \lVert v\rVert^2 - c\, u,
    \qquad u = e\cdot\theta,\quad v = \theta - u\, e,

where :math:`e` is the unit vector of the valley axis in parameter space. This single form covers

* the paper's 2-D landscape (Eq. 1, Figure 1c, 2): :math:`e = (\cos\vartheta, \sin\vartheta)` with
  :math:`\vartheta = \pi/6`, i.e. :math:`(x, y) = R(\vartheta)(u, v)` with appendix A.1's rotation
  matrix :math:`R`, so the :math:`u` axis is rotated counter-clockwise from :math:`x` by
  :math:`\vartheta` and :math:`v = -x\sin\vartheta + y\cos\vartheta`;
* Figure 6 (left), no rotation: :math:`e = (1, 0)`, :math:`u = x`, :math:`v = y`;
* Figure 6 (right), :math:`N`-dimensional: :math:`v` is the :math:`(N-1)`-vector orthogonal to
  :math:`e`, so the landscape is axially symmetric about the :math:`u` axis, and :math:`e` is a
  uniformly random unit vector (the first row of a Haar-random rotation; by the axial symmetry
  the other rows do not change the loss).

The exact gradient is

.. math::
    \nabla L = \bigl(a\, u \lVert v\rVert^2 - c\bigr)\, e + a\, u^2\, v .

Gradient queries are noisy: each component is multiplied by an independent
:math:`\mathcal N(1, \sigma^2)` draw (section 2.2), see :func:`noisy`.

All functions take batched ``theta`` of shape ``[R, N]`` (one trajectory per row) and a sharpness
``a`` that is a number or a per-row tensor of shape ``[R]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

PAPER_ANGLE = math.pi / 6
PAPER_C = 0.1


@dataclass(frozen=True)
class Valley:
    """A narrowing valley: the loss function's fixed parameters (``a`` varies per trajectory).

    Attributes:
        axis: the unit vector :math:`e` of the valley axis (length N = parameter dimension).
        c: slope along the valley (:math:`c > 0`: lower loss toward +u).
        kind: ``"rotated"``, ``"unrotated"`` or ``"random"`` (for labels and configs).
    """

    axis: tuple[float, ...]
    c: float = PAPER_C
    kind: str = "rotated"

    @property
    def dim(self) -> int:
        return len(self.axis)

    def axis_tensor(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.tensor(self.axis, device=device, dtype=dtype)

    def config(self) -> dict[str, object]:
        """What identifies this landscape in a sweep's configuration."""
        return {"kind": self.kind, "dim": self.dim, "c": self.c, "axis": list(self.axis)}


def rotated(angle: float = PAPER_ANGLE, c: float = PAPER_C) -> Valley:
    """The paper's 2-D valley: the u axis at ``angle`` counter-clockwise from x (default pi/6)."""
    return Valley(axis=(math.cos(angle), math.sin(angle)), c=c, kind="rotated")


def unrotated(c: float = PAPER_C) -> Valley:
    """Figure 6 (left): u = x, v = y."""
    return Valley(axis=(1.0, 0.0), c=c, kind="unrotated")


def random_axis(dim: int = 100, seed: int = 0, c: float = PAPER_C) -> Valley:
    """Figure 6 (right): an N-dimensional valley whose axis is a uniformly random unit vector.

    The vector is the first row of a Haar-random orthogonal matrix, drawn in float64 from a
    ``torch.Generator`` seeded with ``seed`` (so it is the same on every machine).
    """
    if dim < 2:
        raise ValueError(f"Invalid dim: {dim} (allowed: an integer >= 2)")
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(dim, generator=gen, dtype=torch.float64)
    e = e / e.norm()
    return Valley(axis=tuple(float(v) for v in e), c=c, kind="random")


def make(kind: str, dim: int = 100, c: float = PAPER_C, seed: int = 0) -> Valley:
    """A valley by name: ``rotated`` (paper), ``unrotated`` (Fig. 6 left), ``random`` (Fig. 6 right)."""
    if kind == "rotated":
        return rotated(c=c)
    if kind == "unrotated":
        return unrotated(c=c)
    if kind == "random":
        return random_axis(dim=dim, seed=seed, c=c)
    raise ValueError(f"Invalid landscape: {kind!r} (allowed: rotated, unrotated, random)")


def _col(x: Tensor | float) -> Tensor | float:
    return x.unsqueeze(-1) if isinstance(x, Tensor) else x


def _dot(theta: Tensor, e: Tensor, ordered: bool) -> Tensor:
    """``theta @ e`` per row; ``ordered``: a left-to-right sum of columns, i.e. the same rounding
    for every row whatever the batch (no reduction kernel whose order a compiler may tune)."""
    if not ordered:
        return (theta * e).sum(-1)
    out = theta[..., 0] * e[0]
    for i in range(1, theta.shape[-1]):
        out = out + theta[..., i] * e[i]
    return out


def _sumsq(v: Tensor, ordered: bool) -> Tensor:
    if not ordered:
        return (v * v).sum(-1)
    out = v[..., 0] * v[..., 0]
    for i in range(1, v.shape[-1]):
        out = out + v[..., i] * v[..., i]
    return out


def coordinates(theta: Tensor, e: Tensor, ordered: bool = False) -> tuple[Tensor, Tensor]:
    """``(u, v)``: the projection on the axis ``[R]`` and the orthogonal part ``[R, N]``.

    For N = 2 the orthogonal part is computed from the perpendicular axis (no reduction, so
    the batched update is purely element-wise).
    """
    if theta.shape[-1] == 2:
        x, y = theta[..., 0], theta[..., 1]
        u = x * e[0] + y * e[1]
        s = y * e[0] - x * e[1]  # signed v along e_perp = (-e1, e0)
        v = torch.stack((-s * e[1], s * e[0])).transpose(0, -1)
        return u, v
    u = _dot(theta, e, ordered)
    return u, theta - _col(u) * e


def loss_and_grad(
    theta: Tensor, a: Tensor | float, e: Tensor, c: float, ordered: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss [R], grad [R, N], u [R])`` of the valley at ``theta`` ``[R, N]``, exactly.

    ``ordered``: sum over coordinates in a fixed order (N > 2; see :func:`_dot`).
    """
    if theta.shape[-1] == 2:
        x, y = theta[..., 0], theta[..., 1]
        u = x * e[0] + y * e[1]
        s = y * e[0] - x * e[1]
        au = a * u
        w = s * s
        loss = 0.5 * au * u * w - c * u
        k = au * w - c  # coefficient of e
        q = au * u * s  # coefficient of e_perp
        grad = torch.stack((k * e[0] - q * e[1], k * e[1] + q * e[0]))
        return loss, grad.transpose(0, -1), u  # [R, 2] with each coordinate contiguous
    u, v = coordinates(theta, e, ordered)
    w = _sumsq(v, ordered)
    au = a * u
    loss = 0.5 * au * u * w - c * u
    grad = _col(au * w - c) * e + _col(au * u) * v
    return loss, grad, u


def loss(theta: Tensor, a: Tensor | float, e: Tensor, c: float) -> Tensor:
    """The loss ``[R]`` at ``theta`` ``[R, N]``."""
    return loss_and_grad(theta, a, e, c)[0]


def noisy(grad: Tensor, sigma: Tensor | float, z: Tensor) -> Tensor:
    """Multiplicative noise: ``grad * (1 + sigma * z)`` with standard normal ``z`` (per component),
    i.e. each component times an independent N(1, sigma^2) draw; ``sigma`` is a number or ``[R]``."""
    return grad * (1 + _col(sigma) * z)


__all__ = [
    "PAPER_ANGLE",
    "PAPER_C",
    "Valley",
    "coordinates",
    "loss",
    "loss_and_grad",
    "make",
    "noisy",
    "random_axis",
    "rotated",
    "unrotated",
]
