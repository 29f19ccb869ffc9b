r"""Signum: sign of the momentum (Bernstein et al., ICML 2018, arXiv 1802.04434).

.. math::
    m_t &= \beta\, m_{t-1} + (1-\beta)\, g_t \\
    \theta_{t+1} &= \theta_t - \eta_t\,\omega\,\theta_t - \eta_t \operatorname{sign}(m_t)

with decoupled weight decay :math:`\omega` on the pre-update weights (MXNet's ``wd_lh``) and
:math:`\operatorname{sign}(0)=0`, as in MXNet's ``SignumKernel``. With
``decoupled_weight_decay=False`` the decay is MXNet's coupled ``wd`` instead (an L2 term inside the
momentum, as the Signum paper's ImageNet runs used):

.. math::
    m_t = \beta\, m_{t-1} + (1-\beta)\,(g_t + \omega\,\theta_t), \qquad
    \theta_{t+1} = \theta_t - \eta_t \operatorname{sign}(m_t).

State: ``exp_avg`` and ``step`` only. With decoupled decay this is exactly FOCUS with ``gamma=0``
and ``betas[1]=0`` (the paper's definition of Signum), without FOCUS's parameter-EMA buffer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._common import (
    BaseOptimizer,
    V,
    add_scaled_,
    foreach_add_scaled,
    foreach_add_scaled_,
    foreach_groups,
    fused_hparam,
    is_zero,
    member_hparam,
    member_views,
    number,
    per_member,
    working_views,
    write_back,
)


class Signum(BaseOptimizer):
    r"""Signum with decoupled weight decay.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (>= 0): float, 0-d tensor or 1-D per-ensemble-member tensor.
        momentum: :math:`\beta` in [0, 1); 0 gives signSGD.
        weight_decay: decay :math:`\omega` (>= 0).
        decoupled_weight_decay: ``True`` (default): decay the weights directly (MXNet ``wd_lh``);
            ``False``: add :math:`\omega\theta` to the gradient inside the momentum (MXNet ``wd``;
            with ``maximize``, to the negated gradient, as ``torch.optim.SGD`` does). At
            ``momentum=0`` MXNet runs its signSGD kernel instead, which applies ``wd`` as
            decoupled decay: use the default there to reproduce it.
        maximize, foreach, fused, fp32_state: as in :class:`~focus_optim.FOCUS`.

    Defaults: MXNet's (lr 0.01, momentum 0.9, no decay).
    """

    _hparam_checks = {
        "lr": V.check_nonneg,
        "momentum": V.check_beta,
        "weight_decay": V.check_nonneg,
        "decoupled_weight_decay": V.check_bool,
    }
    _state_keys = ("exp_avg",)
    _supports_fused = True
    _foreach_ensemble = True
    _fused_ensemble = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        momentum: float = 0.9,
        weight_decay: float | Tensor = 0.0,
        *,
        decoupled_weight_decay: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        signum(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["step"] for s in states],
            path=self._select_path(group, params),
            lr=group["lr"],
            beta1=group["momentum"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group.get("decoupled_weight_decay", True),  # older state dicts lack it
            maximize=group["maximize"],
        )


def signum(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    path: str = "single",
    lr: float | Tensor,
    beta1: float,
    weight_decay: float | Tensor,
    decoupled_weight_decay: bool = True,
    maximize: bool = False,
) -> None:
    """Functional Signum: updates ``params``, ``exp_avgs`` and ``state_steps`` in place."""
    beta1 = number(beta1)
    if path == "fused":
        from ._kernels import fused_sign_family_

        fused_sign_family_(
            params, grads, exp_avgs, None, state_steps, update_fn=signum_update_,
            lr=fused_hparam(lr), beta1=beta1, beta2=0.0, gamma=0.0,
            weight_decay=fused_hparam(weight_decay),
            decay_mode="algorithm1" if decoupled_weight_decay else "coupled", maximize=maximize,
        )  # fmt: skip
        return
    impl = _single_tensor_signum if path == "single" else _multi_tensor_signum
    impl(params, grads, exp_avgs, state_steps, lr=lr, beta1=beta1, weight_decay=weight_decay,
         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)  # fmt: skip


def _single_tensor_signum(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    weight_decay: float | Tensor,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    for p, g, m, step_t in zip(params, grads, exp_avgs, state_steps):
        step_t += 1
        signum_update_(p, g, m, lr=lr, weight_decay=weight_decay, beta1=beta1,
                       decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)  # fmt: skip


def signum_update_(
    p: Tensor, g: Tensor, m: Tensor, *, lr: float | Tensor, weight_decay: float | Tensor, beta1: float,
    maximize: bool, decoupled_weight_decay: bool = True,
) -> None:  # fmt: skip
    """The element-wise Signum update of one tensor."""
    p_real, work, g, (m,) = working_views(p, g, m, maximize=maximize)
    eta = per_member(lr, work)
    wd = per_member(weight_decay, work)
    if not decoupled_weight_decay and not is_zero(wd):
        g = g + wd * work  # a new tensor: ``.grad`` is untouched
    m.lerp_(g, 1 - beta1)
    if decoupled_weight_decay and not is_zero(wd):
        add_scaled_(work, work, -(eta * wd))
    add_scaled_(work, m.sign(), -eta)
    write_back(p_real, work)


def _multi_tensor_signum(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    weight_decay: float | Tensor,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    for _, work, g, (m,), _ in foreach_groups(params, grads, [exp_avgs], state_steps, maximize=maximize):
        eta, wd = member_hparam(lr, work[0]), member_hparam(weight_decay, work[0])
        if not decoupled_weight_decay and not is_zero(wd):
            g = foreach_add_scaled(g, work, member_views(wd, work))  # new tensors: ``.grad`` untouched
        torch._foreach_lerp_(m, g, 1 - beta1)
        if decoupled_weight_decay and not is_zero(wd):
            foreach_add_scaled_(work, work, member_views(-(eta * wd), work))
        foreach_add_scaled_(work, torch._foreach_sign(m), member_views(-eta, work))
