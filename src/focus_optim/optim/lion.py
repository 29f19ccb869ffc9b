r"""Lion: EvoLved Sign Momentum (Chen et al., 2023, arXiv 2302.06675).

The official PyTorch code (google/automl ``lion/lion_pytorch.py``), for each parameter:

.. math::
    \theta_t &\leftarrow \theta_{t-1}(1 - \eta_t\lambda) \\
    c_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
    \theta_t &\leftarrow \theta_t - \eta_t \operatorname{sign}(c_t) \\
    m_t &= \beta_2 m_{t-1} + (1-\beta_2)\, g_t

The interpolation :math:`c_t` is used only for the update; the momentum is refreshed afterwards
with the other beta. :math:`\operatorname{sign}(0)=0`. No second moment, no bias correction, no
:math:`\epsilon`. The paper's Program 1 writes the decay inside the update,
:math:`\theta - \eta(\operatorname{sign}(c) + \lambda\theta)`, which is the same arithmetic on the
pre-update :math:`\theta`; paper and code agree.

State per parameter: ``exp_avg`` (:math:`m`) and ``step`` (bookkeeping only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._common import (
    BaseOptimizer,
    V,
    add_scaled_,
    foreach_add_scaled_,
    foreach_groups,
    is_zero,
    member_hparam,
    member_views,
    per_member,
    working_views,
    write_back,
)


class Lion(BaseOptimizer):
    r"""Lion (sign of an interpolation between momentum and gradient).

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (>= 0): float, 0-d tensor or 1-D per-ensemble-member tensor.
        betas: :math:`(\beta_1, \beta_2)`: interpolation for the update, and momentum decay.
        weight_decay: decoupled decay :math:`\lambda` (>= 0), applied first, scaled by ``lr``.
        maximize: maximize the objective (``.grad`` is not modified).
        foreach: use the ``torch._foreach_*`` path (default: on CUDA).
        fp32_state: keep ``exp_avg`` in float32 for bf16/fp16 parameters.

    Defaults are the official class's (lr 1e-4, betas (0.9, 0.99), no decay). The README advises an
    lr 3-10x smaller and a decay 3-10x larger than AdamW's.
    """

    _hparam_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": V.check_nonneg,
        "betas": V.check_betas,
        "weight_decay": V.check_nonneg,
    }
    _state_keys = ("exp_avg",)
    _foreach_ensemble = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float | Tensor = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=V.as_tuple(betas),
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        lion(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["step"] for s in states],
            path=self._select_path(group, params),
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )


def lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    path: str = "single",
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float | Tensor,
    maximize: bool = False,
) -> None:
    """Functional Lion: updates ``params``, ``exp_avgs`` and ``state_steps`` in place."""
    impl = {"single": _single_tensor_lion, "foreach": _multi_tensor_lion}[path]
    impl(params, grads, exp_avgs, state_steps, lr=lr, beta1=beta1, beta2=beta2,
         weight_decay=weight_decay, maximize=maximize)  # fmt: skip


def _single_tensor_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float | Tensor,
    maximize: bool,
) -> None:
    for p, g, m, step_t in zip(params, grads, exp_avgs, state_steps):
        step_t += 1
        p_real, work, g, (m,) = working_views(p, g, m, maximize=maximize)
        eta = per_member(lr, work)
        wd = per_member(weight_decay, work)

        if not is_zero(wd):
            work.mul_(1 - eta * wd)
        update = torch.mul(m, beta1).add_(g, alpha=1 - beta1).sign_()
        add_scaled_(work, update, -eta)
        m.mul_(beta2).add_(g, alpha=1 - beta2)
        write_back(p_real, work)


def _multi_tensor_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float | Tensor,
    maximize: bool,
) -> None:
    groups = foreach_groups(params, grads, [exp_avgs], state_steps, maximize=maximize)
    for _, work, g, (m,), _ in groups:
        eta, wd = member_hparam(lr, work[0]), member_hparam(weight_decay, work[0])
        if not is_zero(wd):
            torch._foreach_mul_(work, member_views(1 - eta * wd, work))
        update = torch._foreach_mul(m, beta1)
        torch._foreach_add_(update, g, alpha=1 - beta1)
        torch._foreach_sign_(update)
        foreach_add_scaled_(work, update, member_views(-eta, work))
        torch._foreach_mul_(m, beta2)
        torch._foreach_add_(m, g, alpha=1 - beta2)
