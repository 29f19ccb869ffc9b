r"""AdamW (Loshchilov & Hutter, 2019), with the variants the baselines' official code uses.

Default (identical to ``torch.optim.AdamW``):

.. math::
    \theta_t &\leftarrow \theta_{t-1}(1 - \eta\lambda) \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    \theta_t &\leftarrow \theta_t - \eta\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

Options, each a documented convention of some official code (``specs/optimizers.md``):

* ``eps_mode="before_bias_correction"``:
  :math:`\eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)\cdot m/(\sqrt v+\epsilon)`
  (Hugging Face style; Conda's regular group, ROOT's AdamW backup).
* ``bias_correction=False``: no bias correction at all (DeepSpeed's 1-bit Adam).
* ``decay_mode="post_update"``: :math:`\theta \leftarrow \theta - \eta\lambda\theta` *after* the
  Adam step, on the updated weights (Conda).

Every path accepts 1-D per-ensemble-member ``lr``/``weight_decay`` (the labs use them to run many
learning rates at once). ``fused=True`` needs the default conventions: it calls PyTorch's fused
AdamW kernel, or, for per-member hyperparameters, the Triton kernel of
:mod:`~focus_optim.optim._kernels.triton_adamw` on CUDA (the per-tensor path elsewhere).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, cast

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from ._common import (
    BaseOptimizer,
    V,
    add_scaled_,
    as_real,
    foreach_add_scaled_,
    foreach_groups,
    group_by_device_and_dtype,
    is_member,
    is_zero,
    member_hparam,
    member_views,
    number,
    per_member,
    scalar,
    step_value,
    working_views,
    write_back,
)

EPS_MODES = ("after_bias_correction", "before_bias_correction")
DECAY_MODES = ("decoupled", "post_update")


class AdamW(BaseOptimizer):
    r"""AdamW with torch.optim semantics by default and the baselines' variants as options.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (>= 0); float, 0-d tensor or 1-D per-member tensor.
        betas: (beta1, beta2), each in [0, 1).
        eps: term added to the denominator (> 0).
        weight_decay: decoupled weight decay (>= 0).
        eps_mode: ``"after_bias_correction"`` (torch, default) or ``"before_bias_correction"``.
        bias_correction: apply Adam's bias corrections (default True).
        decay_mode: ``"decoupled"`` (torch, default) or ``"post_update"``.
        maximize, foreach, fused, fp32_state: as in :class:`torch.optim.AdamW`.
    """

    _hparam_checks = {
        "lr": V.check_nonneg,
        "betas": V.check_betas,
        "eps": V.check_positive,
        "weight_decay": V.check_nonneg,
        "eps_mode": lambda n, v: V.check_choice(n, v, EPS_MODES),
        "decay_mode": lambda n, v: V.check_choice(n, v, DECAY_MODES),
        "bias_correction": V.check_bool,
    }
    _state_keys = ("exp_avg", "exp_avg_sq")
    _supports_fused = True
    _foreach_ensemble = True
    _fused_ensemble = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | Tensor = 1e-2,
        *,
        eps_mode: Literal["after_bias_correction", "before_bias_correction"] = "after_bias_correction",
        bias_correction: bool = True,
        decay_mode: Literal["decoupled", "post_update"] = "decoupled",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=V.as_tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            eps_mode=eps_mode,
            bias_correction=bias_correction,
            decay_mode=decay_mode,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        super()._validate_group(group, where)
        if group.get("fused") and (
            group.get("eps_mode", "after_bias_correction") != "after_bias_correction"
            or not group.get("bias_correction", True)
            or group.get("decay_mode", "decoupled") != "decoupled"
            or group.get("fp32_state", False)
        ):
            raise ValueError(
                f"Invalid {where}fused: fused=True runs torch's AdamW kernel (or, for per-member "
                "hyperparameters, its Triton restatement) and needs the default eps_mode, "
                "bias_correction, decay_mode and fp32_state=False"
            )

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(group, p, state)
        if group.get("fused"):  # torch's fused kernel reads the step count on the device
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype(), device=p.device)

    def _place_step(self, group: dict[str, Any], p: Tensor, step: Tensor) -> Tensor:
        if group.get("fused"):
            return step.to(device=p.device, dtype=_get_scalar_dtype(), copy=True)
        return super()._place_step(group, p, step)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        adamw(
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
            eps_mode=group["eps_mode"],
            bias_correction=group["bias_correction"],
            decay_mode=group["decay_mode"],
            maximize=group["maximize"],
        )


def adamw(
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
    eps_mode: str = "after_bias_correction",
    bias_correction: bool = True,
    decay_mode: str = "decoupled",
    maximize: bool = False,
) -> None:
    """Functional AdamW; other optimizers call it for their auxiliary (non-matrix) groups."""
    impl = {"single": _single_tensor_adamw, "foreach": _multi_tensor_adamw, "fused": _fused_adamw}[path]
    # (the foreach ops take lists of numbers, not of tensors, and every path then rounds alike)
    beta1, beta2 = number(beta1), number(beta2)
    impl(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
         weight_decay=weight_decay, eps_mode=eps_mode, bias_correction=bias_correction, decay_mode=decay_mode,
         maximize=maximize)  # fmt: skip


def _coefficients(step: Any, lr: Any, beta1: float, beta2: float, eps_mode: str, bias_correction: bool):
    """(step size multiplying m/denom, divisor of sqrt(v) inside denom)."""
    if not bias_correction:
        return lr, 1.0
    bc1 = 1 - beta1**step
    bc2_sqrt = (1 - beta2**step) ** 0.5
    if eps_mode == "after_bias_correction":
        return lr / bc1, bc2_sqrt
    return lr * bc2_sqrt / bc1, 1.0


def _single_tensor_adamw(
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
    eps_mode: str,
    bias_correction: bool,
    decay_mode: str,
    maximize: bool,
) -> None:
    for p, g, m, v, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps):
        step_t += 1
        step = step_value(step_t)
        p_real, work, g, (m, v) = working_views(p, g, m, v, maximize=maximize)
        eta = per_member(lr, work)
        wd = per_member(weight_decay, work)
        decay = not is_zero(wd)

        if decay and decay_mode == "decoupled":
            work.mul_(1 - eta * wd)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size, bc2_sqrt = _coefficients(step, eta, beta1, beta2, eps_mode, bias_correction)
        denom = (v.sqrt() / bc2_sqrt).add_(eps) if not _is_one(bc2_sqrt) else v.sqrt().add_(eps)
        if isinstance(step_size, Tensor):
            work.sub_(m / denom * step_size)
        else:
            work.addcdiv_(m, denom, value=-step_size)
        if decay and decay_mode == "post_update":
            add_scaled_(work, work, -(eta * wd))
        write_back(p_real, work)


def _multi_tensor_adamw(
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
    eps_mode: str,
    bias_correction: bool,
    decay_mode: str,
    maximize: bool,
) -> None:
    groups = foreach_groups(params, grads, [exp_avgs, exp_avg_sqs], state_steps, maximize=maximize)
    for _, work, g, (m, v), steps in groups:
        eta, wd = member_hparam(lr, work[0]), member_hparam(weight_decay, work[0])
        decay = not is_zero(wd)
        if decay and decay_mode == "decoupled":
            torch._foreach_mul_(work, member_views(1 - eta * wd, work))
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        denom = torch._foreach_sqrt(v)
        by_step = {s: _coefficients(s, eta, beta1, beta2, eps_mode, bias_correction) for s in set(steps)}
        coeffs = [by_step[s] for s in steps]
        if not all(_is_one(c[1]) for c in coeffs):
            torch._foreach_div_(denom, [c[1] for c in coeffs])
        torch._foreach_add_(denom, eps)
        if isinstance(eta, Tensor) and eta.ndim == 1:  # per-member step sizes, as the per-tensor path
            update = torch._foreach_div(m, denom)
            # c[0] (eta over a bias correction) is 1-D too: member_views gives a view per tensor
            views = [cast("list[Tensor]", member_views(c[0], [t]))[0] for c, t in zip(coeffs, work)]
            torch._foreach_mul_(update, views)
            torch._foreach_sub_(work, update)
        else:
            torch._foreach_addcdiv_(work, m, denom, [-c[0] for c in coeffs])
        if decay and decay_mode == "post_update":
            foreach_add_scaled_(work, work, member_views(-(eta * wd), work))


def _fused_adamw(
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
    eps_mode: str,
    bias_correction: bool,
    decay_mode: str,
    maximize: bool,
) -> None:
    if is_member(lr) or is_member(weight_decay):
        _fused_adamw_ensemble(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1,
                              beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize)  # fmt: skip
        return
    lr, weight_decay = scalar(lr), scalar(weight_decay)
    # torch's kernel takes real tensors; complex ones update as real pairs, as on torch's other paths
    rows = [list(as_real(*ts)) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    grouped = group_by_device_and_dtype([*rows, state_steps])
    for (_device, _dtype), ((dp, dg, dm, dv, ds), _) in grouped.items():
        torch._foreach_add_(ds, 1)  # step counts live on the device for this path (see _init_state)
        torch._fused_adamw_(
            dp, dg, dm, dv, [], ds,
            # torch annotates weight_decay as a float, but takes a 0-d tensor too (scalar() keeps one
            # while compiling)
            lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,  # type: ignore[arg-type]
            amsgrad=False, maximize=maximize, grad_scale=None, found_inf=None,
        )  # fmt: skip


def _fused_adamw_ensemble(
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
    maximize: bool,
) -> None:
    """Per-member hyperparameters: one Triton launch per group on CUDA (PyTorch's fused kernel takes
    one lr), the per-tensor path elsewhere or for tensors the kernel cannot walk."""
    from ._kernels import triton_walkable, use_triton

    if use_triton(params[0].device) and triton_walkable([params, grads, exp_avgs, exp_avg_sqs]):
        from ._kernels.triton_adamw import adamw_ensemble_

        torch._foreach_add_(state_steps, 1)
        adamw_ensemble_(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2,
                        eps=eps, weight_decay=weight_decay, maximize=maximize)  # fmt: skip
        return
    _single_tensor_adamw(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2,
                         eps=eps, weight_decay=weight_decay, eps_mode="after_bias_correction",
                         bias_correction=True, decay_mode="decoupled", maximize=maximize)  # fmt: skip


def _is_one(x: Any) -> bool:
    return not isinstance(x, Tensor) and x == 1.0
