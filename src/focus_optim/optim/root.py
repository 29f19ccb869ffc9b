r"""ROOT: Robust Orthogonalized Optimizer (He, Han, Zhou, Chen, Liu, Chen & Wang, 2025, arXiv 2511.20626).

Source: huawei-noah/noah-research@aa0f80c ``ROOT/examples/example_train.py`` (class ``ROOT`` and
``root5``; the only official code). Matrix groups (``matrix=True``), :math:`W\in\mathbb R^{m\times n}`:

.. math::
    B_t &= \mu B_{t-1} + G_t \qquad\text{(running sum, no dampening)} \\
    X_t &= G_t + \mu B_t \qquad(\text{Nesterov; } X_t = B_t \text{ if } nesterov=False) \\
    \tau_t &= q_{0.9}(\lvert X_t\rvert) + 10^{-9} \qquad\text{(fp32, linear interpolation)} \\
    C_t &= \operatorname{clamp}(X_t, -\tau_t, \tau_t)
        \qquad(= X_t - \operatorname{sign}(X_t)\max(\lvert X_t\rvert-\tau_t, 0)) \\
    W_t &= W_{t-1}(1 - \eta\lambda) - 0.2\sqrt{\max(m,n)}\;\eta\;\mathrm{NS}_{a,b,c}(C_t)

:math:`\mathrm{NS}_{a,b,c}` is :func:`~focus_optim.optim.muon.newton_schulz` with ``root_steps``
iterations in the tensor's own dtype, with (a, b, c) looked up by (min(m,n), max(m,n)) in
:data:`ROOT_COEFFICIENTS`; other shapes fall back to Muon's (3.4445, -4.7750, 2.0315) with a
logged warning (once per shape here; the official code warns on every call). The decay uses the
unscaled :math:`\eta`. The outlier part :math:`X - C` is discarded.

Aux groups (``matrix=False``) run the official "AdamW backup": :func:`~focus_optim.optim.adamw.adamw`
with :math:`\epsilon` before bias correction and decay first,
:math:`W \leftarrow W(1-\eta\lambda)
- \eta\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\frac{m}{\sqrt v + \epsilon}`,
using the group's ``lr`` and ``weight_decay`` (shared with the matrices, as in the official single
group) and ``adamw_betas``/``adamw_eps``.

README vs code (the code is the default):

* The README's algorithm thresholds the plain momentum :math:`M_t=\mu M_{t-1}+G_t`:
  ``nesterov=False``. The code thresholds the Nesterov blend.
* The README's threshold :math:`\varepsilon` is a fixed hyperparameter (``threshold=eps``); the
  code sets it each step to the 0.9 quantile of :math:`\lvert X\rvert` (``threshold=None``,
  quantile ``threshold_quantile``), so about 10% of the entries are clipped every step.
* The README's update has neither the :math:`0.2\sqrt{\max(m,n)}` rescale nor decay
  (``lr`` absorbs the former, ``weight_decay=0`` gives the latter). The code's docstring says
  updates "have spectral norm of lr", inherited from Muon; with the rescale, ROOT's lr is
  AdamW-scale (1e-3), not Muon-scale.

The official class asserts exactly 2-D matrices; so does this one (per ensemble member).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _dtensor, _owners
from ._common import V, add_scaled_, is_zero, per_member
from ._matrix import MatrixOptimizer, check_bool, member_shape, working_copy
from .muon import MUON_COEFFICIENTS, newton_schulz

logger = logging.getLogger(__name__)

#: (min dim, max dim) -> (a, b, c), as shipped for the toy LLaMA's shapes.
ROOT_COEFFICIENTS: dict[tuple[int, int], tuple[float, float, float]] = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}
_warned_shapes: set[tuple[int, int]] = set()

#: torch.quantile refuses inputs with more elements than this.
QUANTILE_MAX_NUMEL = 2**24


def root_coefficients(rows: int, cols: int) -> tuple[float, float, float]:
    """The shape-keyed AdaNewton coefficients, or Muon's with a warning (once per shape)."""
    key = (min(rows, cols), max(rows, cols))
    if key in ROOT_COEFFICIENTS:
        return ROOT_COEFFICIENTS[key]
    if key not in _warned_shapes:
        _warned_shapes.add(key)
        logger.warning(
            "ROOT: no AdaNewton coefficients for shape %s; using Muon's %s", key, MUON_COEFFICIENTS
        )
    return MUON_COEFFICIENTS


def quantile(x: Tensor, q: float) -> Tensor:
    """Linear-interpolation ``q`` quantile along the last dim (keepdim), as ``torch.quantile``.

    Above ``torch.quantile``'s input limit, two ``kthvalue`` selections and a lerp (the official
    ``simple_quantile``) give the same value.
    """
    n = x.size(-1)
    if n <= QUANTILE_MAX_NUMEL:
        return torch.quantile(x, q, dim=-1, keepdim=True)
    return kth_quantile(x, q)


def kth_quantile(x: Tensor, q: float) -> Tensor:
    """:func:`quantile` by order statistics (the official ``simple_quantile``): with ``i = q(n-1)``,
    the ``floor(i)``-th and ``ceil(i)``-th smallest values (0-based) lerped by ``i - floor(i)``."""
    n = x.size(-1)
    index = q * (n - 1)
    lo, hi = math.floor(index), math.ceil(index)
    lower = x.kthvalue(lo + 1, dim=-1, keepdim=True).values
    if hi == lo:
        return lower
    upper = x.kthvalue(hi + 1, dim=-1, keepdim=True).values
    return torch.lerp(lower, upper, index - lo)


class ROOT(MatrixOptimizer):
    r"""ROOT for ``matrix=True`` groups plus the official AdamW backup for ``matrix=False`` groups.

    Args:
        params: iterable of parameters or of param-group dicts (with a ``matrix`` key; a group
            without one is a matrix group).
        lr: learning rate :math:`\eta` (>= 0), shared by both kinds; float, 0-d or 1-D per-member.
        weight_decay: decoupled decay :math:`\lambda` (>= 0), applied first with the unscaled lr.
        momentum: :math:`\mu` in [0, 1).
        nesterov: threshold :math:`G+\mu B` (code, default) or :math:`B` (README).
        root_steps: Newton-Schulz iterations (>= 0).
        adamw_betas, adamw_eps: the AdamW backup's betas and eps.
        threshold: ``None`` (code: adaptive quantile) or a fixed :math:`\varepsilon > 0` (README).
        threshold_quantile: the quantile q of :math:`\lvert X\rvert` used when ``threshold`` is None.
        distributed: share the clip + Newton-Schulz work over ranks holding the same matrices
            (``None``: FSDP2/``DTensor`` matrices; ``True``: also DDP replicas; ``False``: never),
            as :class:`~focus_optim.optim.muon.Muon`.
        matrix, ensemble_dims, maximize, foreach, fp32_state: as in :class:`~focus_optim.optim.muon.Muon`.

    Defaults: the official class (lr 1e-3, wd 0.1, momentum 0.95, nesterov, 5 steps, AdamW betas
    (0.9, 0.95), eps 1e-8). The official code decays every parameter with the one ``wd``.
    """

    _hparam_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": V.check_nonneg,
        "weight_decay": V.check_nonneg,
        "momentum": V.check_beta,
        "nesterov": check_bool,
        "root_steps": lambda n, v: V.check_int(n, v, 0, V.MAX_ITERATIONS),
        "adamw_betas": V.check_betas,
        "adamw_eps": V.check_positive,
        "threshold": lambda n, v: _check_threshold(n, v),
        "threshold_quantile": lambda n, v: _check_unit_interval(n, v),
        "distributed": _owners.check_distributed,
    }
    _matrix_state_keys = ("momentum_buffer",)
    _state_keys = ("momentum_buffer", "exp_avg", "exp_avg_sq")  # all floating state (load casts)
    _max_matrix_ndim = 2

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        weight_decay: float | Tensor = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        root_steps: int = 5,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        *,
        threshold: float | None = None,
        threshold_quantile: float = 0.9,
        distributed: bool | None = None,
        matrix: bool = True,
        ensemble_dims: int = 0,
        maximize: bool = False,
        foreach: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            root_steps=root_steps,
            adamw_betas=V.as_tuple(adamw_betas),
            adamw_eps=adamw_eps,
            threshold=threshold,
            threshold_quantile=threshold_quantile,
            distributed=distributed,
            matrix=matrix,
            ensemble_dims=ensemble_dims,
            maximize=maximize,
            foreach=foreach,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def _update_matrices(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        blends = []
        for g, state in zip(grads, states):
            state["step"] += 1
            g = -g if group["maximize"] else g
            blends.append(root_momentum_(g, state["momentum_buffer"], group["momentum"], group["nesterov"]))
        updates = _owners.map_whole(
            partial(
                root_direction,
                root_steps=group["root_steps"],
                threshold=group["threshold"],
                threshold_quantile=group["threshold_quantile"],
                ensemble_dims=group["ensemble_dims"],
            ),
            blends,
            distributed=group["distributed"],
        )
        for p, state, update in zip(params, states, updates):
            root_apply_(p, state["momentum_buffer"], update, lr=group["lr"],
                        weight_decay=group["weight_decay"], ensemble_dims=group["ensemble_dims"])  # fmt: skip

    def _update_aux(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        beta1, beta2 = group["adamw_betas"]
        self._aux_adamw(group, params, grads, states, lr=group["lr"], beta1=beta1, beta2=beta2,
                        eps=group["adamw_eps"], weight_decay=group["weight_decay"],
                        eps_mode="before_bias_correction")  # fmt: skip


def soft_threshold_clip(
    X: Tensor, q: float, ensemble_dims: int = 0, threshold: float | None = None
) -> Tensor:
    r""":math:`\operatorname{clamp}(X, -\tau, \tau)`, :math:`\tau = q`-quantile of :math:`\lvert X\rvert`
    per ensemble member (fp32) + 1e-9, or the fixed ``threshold``."""
    if threshold is not None:
        return X.clamp(-threshold, threshold)
    flat = X.detach().abs().float().reshape(*X.shape[:ensemble_dims], -1)
    tau = (quantile(flat, q) + 1e-9).to(X.dtype)
    tau = tau.reshape(*X.shape[:ensemble_dims], *([1] * (X.ndim - ensemble_dims)))
    return torch.clamp(X, -tau, tau)


def root_update_(
    p: Tensor,
    g: Tensor,
    buf: Tensor,
    *,
    lr: float | Tensor,
    weight_decay: float | Tensor,
    momentum: float,
    nesterov: bool = True,
    root_steps: int = 5,
    threshold: float | None = None,
    threshold_quantile: float = 0.9,
    ensemble_dims: int = 0,
) -> None:
    """One ROOT step of matrix parameter ``p`` (gradient ``g``, momentum sum ``buf``), in place."""
    X = root_momentum_(g, buf, momentum, nesterov)
    update = root_direction(_dtensor.full(X), root_steps, threshold, threshold_quantile, ensemble_dims)
    update = _dtensor.like(update, X)
    root_apply_(p, buf, update, lr=lr, weight_decay=weight_decay, ensemble_dims=ensemble_dims)


def root_momentum_(g: Tensor, buf: Tensor, momentum: float, nesterov: bool) -> Tensor:
    r""":math:`B \leftarrow \mu B + G` in place; returns :math:`X` (:math:`G + \mu B` or :math:`B`)."""
    g = g if g.dtype == buf.dtype else g.to(buf.dtype)
    buf.mul_(momentum).add_(g)
    return g.add(buf, alpha=momentum) if nesterov else buf


def root_direction(
    X: Tensor,
    root_steps: int = 5,
    threshold: float | None = None,
    threshold_quantile: float = 0.9,
    ensemble_dims: int = 0,
) -> Tensor:
    r""":math:`\mathrm{NS}_{a,b,c}(\operatorname{clamp}(X, -\tau, \tau))` of a whole matrix ``X``."""
    if X.numel() == 0:  # a zero-size matrix: nothing to clip (no quantile exists) or orthogonalise
        return torch.zeros_like(X)
    rows, cols = member_shape(X, ensemble_dims)
    C = soft_threshold_clip(X, threshold_quantile, ensemble_dims, threshold)
    return newton_schulz(C, root_steps, root_coefficients(rows, cols))


def root_apply_(
    p: Tensor,
    buf: Tensor,
    update: Tensor,
    *,
    lr: float | Tensor,
    weight_decay: float | Tensor,
    ensemble_dims: int = 0,
) -> None:
    r""":math:`W \leftarrow W(1-\eta\lambda) - 0.2\sqrt{\max(m,n)}\,\eta\,O` (in ``buf``'s dtype)."""
    work = working_copy(p, buf)
    eta = per_member(lr, work)
    wd = per_member(weight_decay, work)
    rows, cols = member_shape(p, ensemble_dims)
    if not is_zero(wd):
        work.mul_(1 - eta * wd)
    add_scaled_(work, update, -(eta * (0.2 * math.sqrt(max(rows, cols)))))
    if work is not p:
        p.copy_(work)


def _check_threshold(name: str, value: Any) -> None:
    """``None`` (the adaptive quantile) or a positive number."""
    if value is not None:
        V.check_positive(name, value)


def _check_unit_interval(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: a number in [0, 1])")
