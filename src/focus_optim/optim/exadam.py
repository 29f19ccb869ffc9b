r"""EXAdam: Adam with adaptive cross-moment debiasing (Adly, 2024, arXiv 2412.20302).

For each parameter, with :math:`b_1 = \beta_1^t`, :math:`b_2 = \beta_2^t` (AhmedMostafa16/EXAdam
``exadam.py``):

.. math::
    \theta &\leftarrow \theta(1 - \eta\lambda) \qquad\text{(decoupled, base } \eta\text{, first)} \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    d_1 &= 1 + b_2\,\frac{v_t}{v_t+\epsilon},\qquad d_2 = 1 + b_1\,\frac{m_t^2}{m_t^2+\epsilon} \\
    \tilde m &= \frac{m_t}{1-b_1} d_1,\qquad \tilde v = \frac{v_t}{1-b_2} d_2,\qquad
        \tilde g = \frac{g_t}{1-b_1} d_1 \\
    \theta &\leftarrow \theta - \alpha_t\,\frac{\tilde m + \tilde g}{\sqrt{\tilde v} + \epsilon}

Paper versions (the code followed them):

* v2 (2025, HEAD code, **default**): :math:`\alpha_t = \eta`.
* v1 (2024, initial commit ``9ff8463``): the growing step size
  :math:`\alpha_t = \eta\ln(\sqrt2\sqrt{t+1})`; ``growing_step=True``. It multiplies any external
  schedule and is unbounded (:math:`\approx 4.95\eta` at :math:`t=10^4`).

The official HEAD (``989d7b6``) no longer imports numpy but still calls ``np.sqrt`` and raises
NameError on construction; the initial commit is the runnable code. The docstring calls the decay
"L2 penalty" but it is decoupled, as here. Early steps are large by design of the debiasing: at
t=1, with the default betas, about 16x Adam's (v2, the default), or 11x with v1's growing step
(:math:`\alpha_1 = 0.693\eta`).

State per parameter: ``exp_avg``, ``exp_avg_sq`` and ``step``.
"""

from __future__ import annotations

import math
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
    step_value,
    working_views,
    write_back,
)


class EXAdam(BaseOptimizer):
    r"""EXAdam with the paper-v2 update by default and v1's growing step size as an option.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (>= 0): float, 0-d tensor or 1-D per-ensemble-member tensor.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon` (> 0), used in :math:`d_1`, :math:`d_2` and the denominator.
        weight_decay: decoupled decay :math:`\lambda` (>= 0), applied first with the base lr.
        growing_step: paper v1's :math:`\alpha_t = \eta\ln(\sqrt{2(t+1)})` (default False: v2).
        maximize, foreach, fp32_state: as in :class:`~focus_optim.optim.lion.Lion`.

    Defaults: the official class's (lr 1e-3, betas (0.9, 0.999), eps 1e-8, no decay).
    """

    _hparam_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": V.check_nonneg,
        "betas": V.check_betas,
        "eps": V.check_positive,
        "weight_decay": V.check_nonneg,
        "growing_step": V.check_bool,
    }
    _state_keys = ("exp_avg", "exp_avg_sq")
    _foreach_ensemble = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | Tensor = 0.0,
        *,
        growing_step: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=V.as_tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            growing_step=growing_step,
            maximize=maximize,
            foreach=foreach,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        exadam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states],
            path=self._select_path(group, params),
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            growing_step=group["growing_step"],
            maximize=group["maximize"],
        )


def exadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    path: str = "single",
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float | Tensor,
    growing_step: bool = False,
    maximize: bool = False,
) -> None:
    """Functional EXAdam: updates ``params``, ``exp_avgs``, ``exp_avg_sqs`` and ``state_steps`` in place."""
    impl = {"single": _single_tensor_exadam, "foreach": _multi_tensor_exadam}[path]
    impl(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
         weight_decay=weight_decay, growing_step=growing_step, maximize=maximize)  # fmt: skip


def step_size_factor(step: float | Tensor, growing_step: bool) -> float | Tensor:
    r""":math:`\alpha_t/\eta`: 1 (paper v2) or :math:`\ln(\sqrt2\sqrt{t+1})` (paper v1)."""
    if not growing_step:
        return 1.0
    if isinstance(step, Tensor):
        return torch.log(torch.sqrt(step + 1) * math.sqrt(2.0))
    return math.log(math.sqrt(step + 1) * math.sqrt(2.0))


def _single_tensor_exadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float | Tensor,
    growing_step: bool,
    maximize: bool,
) -> None:
    for p, g, m, v, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps):
        p_real, work, g, (m, v) = working_views(p, g, m, v, maximize=maximize)
        eta = per_member(lr, work)
        wd = per_member(weight_decay, work)

        if not is_zero(wd):
            add_scaled_(work, work, -(eta * wd))
        step_t += 1
        step = step_value(step_t)
        b1, b2 = beta1**step, beta2**step
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        d1 = (v / (v + eps)).mul_(b2).add_(1)
        m_sq = m.square()
        d2 = m_sq.div_(m_sq + eps).mul_(b1).add_(1)
        # m~ + g~ = (m + g) d1 / (1 - b1)
        numer = torch.add(m, g).mul_(d1).div_(1 - b1)
        denom = d2.mul_(v).div_(1 - b2).sqrt_().add_(eps)
        add_scaled_(work, numer.div_(denom), -(eta * step_size_factor(step, growing_step)))
        write_back(p_real, work)


def _multi_tensor_exadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float | Tensor,
    growing_step: bool,
    maximize: bool,
) -> None:
    groups = foreach_groups(
        params, grads, [exp_avgs, exp_avg_sqs], state_steps, maximize=maximize, split_by_step=True
    )
    for _, work, g, (m, v), steps in groups:
        step = steps[0]
        eta, wd = member_hparam(lr, work[0]), member_hparam(weight_decay, work[0])
        if not is_zero(wd):
            foreach_add_scaled_(work, work, member_views(-(eta * wd), work))
        b1, b2 = beta1**step, beta2**step
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, g, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        d1 = torch._foreach_div(v, torch._foreach_add(v, eps))
        torch._foreach_mul_(d1, b2)
        torch._foreach_add_(d1, 1)
        d2 = torch._foreach_mul(m, m)
        torch._foreach_div_(d2, torch._foreach_add(d2, eps))
        torch._foreach_mul_(d2, b1)
        torch._foreach_add_(d2, 1)
        numer = torch._foreach_add(m, g)
        torch._foreach_mul_(numer, d1)
        torch._foreach_div_(numer, 1 - b1)
        torch._foreach_mul_(d2, v)
        torch._foreach_div_(d2, 1 - b2)
        torch._foreach_sqrt_(d2)
        torch._foreach_add_(d2, eps)
        torch._foreach_div_(numer, d2)
        foreach_add_scaled_(work, numer, member_views(-(eta * step_size_factor(step, growing_step)), work))
