r"""FOCUS: First Order Concentrated Updating Scheme (Liu, Liu & Gore, 2025, arXiv 2501.12243).

Algorithm 1 of the paper, for each parameter tensor :math:`\theta` with gradient :math:`g_t`:

.. math::
    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
    \bar\theta_t &= \beta_2 \bar\theta_{t-1} + (1-\beta_2)\, \theta_t \\
    \hat\theta_t &= \bar\theta_t / (1-\beta_2^t) \\
    \theta_t &\leftarrow \theta_t - \eta_t\, \omega\, \hat\theta_t
        \quad\text{(weight decay toward 0 by the averaged parameters)} \\
    \theta_{t+1} &= \theta_t - \eta_t \bigl(\operatorname{sign}(m_t)
        + \gamma\, \operatorname{sign}(\theta_t - \hat\theta_t)\bigr)

Variants, chosen by ``decay_mode``:

* ``"algorithm1"`` (default): exactly the above; decay before the sign step.
* ``"reference"``: the authors' ``focus.py`` (liuyz0/FOCUS@bdda7f8): the sign step uses the
  pre-decay :math:`\theta`, then :math:`\theta \leftarrow \theta - \eta\omega\hat\theta`.
  Use it to match published GPT-2 curves.
* ``"decoupled"``: the toy-landscape code: :math:`\theta_{t+1} = \theta_t - \eta_t(\operatorname{sign}(m_t)
  + \gamma\operatorname{sign}(\theta_t-\hat\theta_t) + \omega\theta_t)`, i.e. AdamW-style decay on
  :math:`\theta` inside the same update.

The attraction sign is evaluated as :math:`\operatorname{sign}((1-\beta_2^t)\theta_t - \bar\theta_t)`,
which equals :math:`\operatorname{sign}(\theta_t - \hat\theta_t)` but makes the paper's
:math:`\hat\theta_1 = \theta_1` an exact tie (zero attraction at the first step) instead of a
rounding-error coin flip. Later ties are not exact: a parameter that has not moved since its first
step (an exactly zero gradient, no decay, or lr 0 warm-up steps) has an average that differs from
:math:`(1-\beta_2^t)\theta` by rounding, so its attraction is :math:`\pm\gamma` rather than 0,
as in the reference code. Freeze such parameters (``requires_grad=False``) rather than relying on
zero gradients.

State per parameter: ``exp_avg`` (:math:`m`), ``param_avg`` (:math:`\bar\theta`) and ``step``.
With ``gamma=0`` and ``betas[1]=0`` the update is exactly :class:`~focus_optim.Signum`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from ._common import (
    BaseOptimizer,
    V,
    add_scaled_,
    foreach_add_scaled_,
    foreach_groups,
    fused_hparam,
    is_zero,
    member_hparam,
    member_views,
    number,
    per_member,
    step_value,
    working_views,
    write_back,
)

DecayMode = Literal["algorithm1", "reference", "decoupled"]
DECAY_MODES: tuple[str, ...] = ("algorithm1", "reference", "decoupled")


class FOCUS(BaseOptimizer):
    r"""FOCUS optimizer (sign of momentum + attraction toward the parameter EMA).

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (>= 0). A float, a 0-d tensor, or a 1-D tensor giving one
            value per ensemble member along dim 0 (see :mod:`focus_optim.optim._common`).
        betas: :math:`(\beta_1, \beta_2)`; :math:`\beta_1` for the gradient momentum, :math:`\beta_2`
            for the parameter EMA. Each in [0, 1).
        gamma: attraction strength :math:`\gamma`; any finite value (negative = repulsion).
        weight_decay: :math:`\omega` (>= 0), float or tensor like ``lr``.
        decay_mode: ``"algorithm1"`` (paper, default), ``"reference"`` (authors' code) or
            ``"decoupled"`` (toy-landscape code); see the module docstring.
        maximize: maximize the objective instead of minimizing it (``.grad`` is not modified).
        foreach: use the ``torch._foreach_*`` multi-tensor path (default: on CUDA).
        fused: use the fused path: one Triton kernel per group on CUDA (each state tensor read
            and written once per step; 1-D per-member ``lr``/``weight_decay`` included); a compiled
            graph on CPU (the per-tensor update for per-member hyperparameters).
        fp32_state: keep ``exp_avg``/``param_avg`` in float32 for bf16/fp16 parameters.

    Defaults follow the reference code's class (lr 1e-2, betas (0.9, 0.999), gamma 0.1, no
    decay). The paper's GPT-2 setting is lr 6e-4, betas (0.9, 0.99), gamma 0.2, weight_decay 0.2.
    """

    _hparam_checks = {
        "lr": V.check_nonneg,
        "betas": V.check_betas,
        "gamma": V.check_finite,
        "weight_decay": V.check_nonneg,
        "decay_mode": lambda name, v: V.check_choice(name, v, DECAY_MODES),
    }
    _state_keys = ("exp_avg", "param_avg")
    _supports_fused = True
    _foreach_ensemble = True
    _fused_ensemble = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        gamma: float = 0.1,
        weight_decay: float | Tensor = 0.0,
        *,
        decay_mode: DecayMode = "algorithm1",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=V.as_tuple(betas),
            gamma=gamma,
            weight_decay=weight_decay,
            decay_mode=decay_mode,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        focus(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["param_avg"] for s in states],
            [s["step"] for s in states],
            path=self._select_path(group, params),
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            gamma=group["gamma"],
            weight_decay=group["weight_decay"],
            decay_mode=group["decay_mode"],
            maximize=group["maximize"],
        )


def focus(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    param_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    path: str = "single",
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    gamma: float,
    weight_decay: float | Tensor,
    decay_mode: str = "algorithm1",
    maximize: bool = False,
) -> None:
    """Functional FOCUS: updates ``params``, ``exp_avgs``, ``param_avgs`` and ``state_steps`` in place."""
    impl = {"single": _single_tensor_focus, "foreach": _multi_tensor_focus, "fused": _fused_focus}[path]
    # (the fused kernel takes numbers, not tensors)
    beta1, beta2, gamma = number(beta1), number(beta2), number(gamma)
    impl(
        params,
        grads,
        exp_avgs,
        param_avgs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        gamma=gamma,
        weight_decay=weight_decay,
        decay_mode=decay_mode,
        maximize=maximize,
    )


def _single_tensor_focus(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    param_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    gamma: float,
    weight_decay: float | Tensor,
    decay_mode: str,
    maximize: bool,
) -> None:
    for p, g, m, a, step_t in zip(params, grads, exp_avgs, param_avgs, state_steps):
        step_t += 1
        bc2 = 1 - beta2 ** step_value(step_t)
        focus_update_(p, g, m, a, lr=lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2, gamma=gamma,
                      bc2=bc2, decay_mode=decay_mode, maximize=maximize)  # fmt: skip


def focus_update_(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    a: Tensor,
    *,
    lr: float | Tensor,
    weight_decay: float | Tensor,
    beta1: float,
    beta2: float,
    gamma: float,
    bc2: float | Tensor,
    decay_mode: str,
    maximize: bool,
) -> None:
    """The element-wise FOCUS update of one tensor, given its bias correction ``bc2 = 1 - beta2**t``."""
    p_real, work, g, (m, a) = working_views(p, g, m, a, maximize=maximize)
    eta = per_member(lr, work)
    wd = per_member(weight_decay, work)

    m.lerp_(g, 1 - beta1)
    # As the reference code (not a lerp, whose second branch a compiler may contract into an FMA):
    # at the first step a == (1 - beta2) * theta exactly on every path, the tie the sign relies on.
    a.mul_(beta2).add_(work, alpha=1 - beta2)
    decay = not is_zero(wd)
    if decay and decay_mode != "decoupled":
        eta_wd_hat = -(eta * wd) / bc2  # -eta*omega applied to theta_hat = a / bc2
    if decay and decay_mode == "algorithm1":
        add_scaled_(work, a, eta_wd_hat)
    if gamma != 0:
        update = attraction_sign(torch.mul(work, bc2), a).mul_(gamma).add_(m.sign())
    else:
        update = m.sign()
    if decay and decay_mode == "decoupled":
        add_scaled_(update, work, wd)
    add_scaled_(work, update, -eta)
    if decay and decay_mode == "reference":
        add_scaled_(work, a, eta_wd_hat)
    write_back(p_real, work)


def attraction_sign(scaled: Tensor, avg: Tensor) -> Tensor:
    """``sign(scaled - avg)`` as two comparisons: the same numbers eagerly, but a compiler cannot
    contract ``theta * bc2 - avg`` into one FMA, which would turn the exact tie of the first step
    into a rounding-error sign."""
    return torch.gt(scaled, avg).to(scaled.dtype).sub_(torch.lt(scaled, avg).to(scaled.dtype))


def _multi_tensor_focus(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    param_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    gamma: float,
    weight_decay: float | Tensor,
    decay_mode: str,
    maximize: bool,
) -> None:
    groups = foreach_groups(
        params, grads, [exp_avgs, param_avgs], state_steps, maximize=maximize, split_by_step=True
    )
    for _, work, g, (m, a), steps in groups:
        eta, wd = member_hparam(lr, work[0]), member_hparam(weight_decay, work[0])
        bc2 = 1 - beta2 ** steps[0]
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(a, beta2)
        torch._foreach_add_(a, work, alpha=1 - beta2)
        decay = not is_zero(wd)
        if decay and decay_mode != "decoupled":
            eta_wd_hat = member_views(-(eta * wd) / bc2, work)
        if decay and decay_mode == "algorithm1":
            foreach_add_scaled_(work, a, eta_wd_hat)
        if gamma != 0:
            update = torch._foreach_mul(work, bc2)
            torch._foreach_sub_(update, a)
            torch._foreach_sign_(update)
            torch._foreach_mul_(update, gamma)
            torch._foreach_add_(update, torch._foreach_sign(m))
        else:
            update = torch._foreach_sign(m)
        if decay and decay_mode == "decoupled":
            foreach_add_scaled_(update, work, member_views(wd, work))
        foreach_add_scaled_(work, update, member_views(-eta, work))
        if decay and decay_mode == "reference":
            foreach_add_scaled_(work, a, eta_wd_hat)


def _fused_focus(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    param_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    gamma: float,
    weight_decay: float | Tensor,
    decay_mode: str,
    maximize: bool,
) -> None:
    from ._kernels import fused_sign_family_

    fused_sign_family_(
        params,
        grads,
        exp_avgs,
        param_avgs,
        state_steps,
        update_fn=focus_update_,
        lr=fused_hparam(lr),
        beta1=beta1,
        beta2=beta2,
        gamma=gamma,
        weight_decay=fused_hparam(weight_decay),
        decay_mode=decay_mode,
        maximize=maximize,
    )
