r"""Sophia-G: clipped second-order steps with a Gauss-Newton-Bartlett Hessian estimate
(Liu, Li, Hall, Liang & Ma, 2023, arXiv 2305.14342; code Liuhong99/Sophia@a7e1572 ``sophia.py``).

``step(bs=B)``, every iteration, on the ordinary gradient :math:`g_t`:

.. math::
    \theta &\leftarrow \theta(1 - \eta\lambda) \qquad\text{(decoupled decay first)} \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    \theta &\leftarrow \theta - \eta\,\operatorname{clip}\!\Bigl(\frac{m_t}{\rho B h + \epsilon}, -1, 1\Bigr),
        \qquad \epsilon = 10^{-15}

``update_hessian()``, every k iterations, after a backward pass of the *sampled-label* loss (so
``.grad`` holds :math:`\hat g`): :math:`h \leftarrow \beta_2 h + (1-\beta_2)\hat g\odot\hat g`.
No bias correction of :math:`m` or :math:`h`; ``step`` is bookkeeping only. Before the first
``update_hessian`` :math:`h=0`, every coordinate saturates and the step is
:math:`-\eta\operatorname{sign}(m)`.

Training-loop protocol (``train_sophiag.py``; the hooks of :mod:`focus_optim.optim.protocol`):

1. Every iteration ``i`` (0-based): forward/backward over the micro-batches with the loss divided by
   the accumulation count, clip the global grad norm to 1.0, then
   ``opt.step(**protocol.step_kwargs(opt, tokens=T))`` where ``T`` is the number of **tokens** in
   the optimizer step (sequences x block size x accumulation steps; 480 x 1024 = 491,520 for the
   GPT-2 configs), not the number of sequences; then zero the grads.
2. If ``protocol.hessian_due(opt, i)`` (``i % k == k - 1``, ``k = hessian_interval``, default 10),
   *after* that step: forward over the same number of micro-batches of **fresh** batches, take
   :func:`sampled_label_loss` of the full-sequence logits, back-propagate it divided by the same
   accumulation count (all-reduced like a normal backward under DDP), clip its global norm to
   1.0, call ``opt.update_hessian()`` and zero the grads. The new ``h`` is first used at ``i+1``.

The model must return logits for every position in the Hessian pass (nanoGPT returns only the
last position when ``targets is None``). The README's minimal loop reuses the training batch
and does not clip; the official script's protocol above is the one to follow.

Paper vs code (the code is the default):

* :math:`\epsilon`: code adds 1e-15 to :math:`\rho B h`; the paper divides by
  :math:`\max(\rho B h, \epsilon)` with :math:`\epsilon=10^{-12}`: ``eps_mode="max", eps=1e-12``.
* :math:`\beta_1`: code 0.965, paper 0.96 (pass ``betas=(0.96, 0.99)``).
* The code's ``lr`` is :math:`\rho\times` the paper's step size (the paper clips :math:`m/h` at
  :math:`\rho`; the code clips :math:`m/(\rho h)` at 1), so lr/rho values are not comparable
  across the two without that conversion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    BaseOptimizer,
    V,
    as_real,
    foreach_groups,
    is_zero,
    member_hparam,
    member_views,
    per_member,
    working_views,
    write_back,
)

EPS_MODES = ("add", "max")


class SophiaG(BaseOptimizer):
    r"""Sophia-G (official code's parameterisation).

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (>= 0): float, 0-d tensor or 1-D per-ensemble-member tensor.
        betas: :math:`(\beta_1, \beta_2)`: gradient momentum and Hessian EMA.
        rho: clipping scale :math:`\rho` (>= 0).
        weight_decay: decoupled decay :math:`\lambda` (>= 0), applied first.
        hessian_interval: k; :meth:`hessian_due` is true every k-th iteration (``i % k == k-1``).
        eps: 1e-15 (code) added to, or (``eps_mode="max"``, paper) a floor of, :math:`\rho B h`.
        eps_mode: ``"add"`` (code, default) or ``"max"`` (paper).
        maximize, foreach, fp32_state: as in :class:`~focus_optim.optim.lion.Lion`.

    Defaults: the official class (lr 1e-4, betas (0.965, 0.99), rho 0.04, weight_decay 0.1,
    ``step(bs=5120)``). GPT-2 small config: lr 6e-4, rho 0.05, weight_decay 0.2, bs 491,520.
    """

    _hparam_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": V.check_nonneg,
        "betas": V.check_betas,
        "rho": V.check_nonneg,
        "weight_decay": V.check_nonneg,
        "eps": V.check_positive,
        "eps_mode": lambda n, v: V.check_choice(n, v, EPS_MODES),
        "hessian_interval": lambda n, v: V.check_int(n, v, 1),
    }
    _state_keys = ("exp_avg", "hessian")
    _foreach_ensemble = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float | Tensor = 0.1,
        *,
        hessian_interval: int = 10,
        eps: float = 1e-15,
        eps_mode: Literal["add", "max"] = "add",
        maximize: bool = False,
        foreach: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=V.as_tuple(betas),
            rho=rho,
            weight_decay=weight_decay,
            hessian_interval=hessian_interval,
            eps=eps,
            eps_mode=eps_mode,
            maximize=maximize,
            foreach=foreach,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        super()._validate_group(group, where)
        if where and group["hessian_interval"] != self.defaults["hessian_interval"]:  # ("": the defaults)
            k = self.defaults["hessian_interval"]
            raise ValueError(
                f"Invalid {where}hessian_interval: {group['hessian_interval']!r} (allowed: the optimizer's "
                f"hessian_interval, {k}; a refresh is one pass over the whole model: set it on the optimizer)"
            )

    # --- training-loop protocol (focus_optim.optim.protocol) ----------------------------------
    def step_kwargs(self, tokens: int) -> dict[str, Any]:
        """``step``'s extra arguments: ``bs`` = tokens in this optimizer step."""
        return {"bs": tokens}

    def hessian_due(self, iteration: int) -> bool:
        """True after the step of 0-based ``iteration`` when the Hessian EMA is to be refreshed."""
        k = self.defaults["hessian_interval"]
        return iteration % k == k - 1

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, bs: float = 5120) -> Any:  # type: ignore[override]
        """One optimization step; ``bs`` is the number of tokens (samples) in the step's batch."""
        V.check_positive("bs", bs)
        return super().step(closure, bs=bs)

    @torch.no_grad()
    def update_hessian(self) -> None:
        r""":math:`h \leftarrow \beta_2 h + (1-\beta_2)\,\hat g\odot\hat g` from the current ``.grad``."""
        for group in self.param_groups:
            params, grads, states = self._gather(group)
            if params:
                sophia_update_hessian(
                    grads,
                    [s["hessian"] for s in states],
                    path=self._select_path(group, params),
                    beta2=group["betas"][1],
                )

    def _update_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        bs: float = 5120,
    ) -> None:
        sophiag(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["hessian"] for s in states],
            [s["step"] for s in states],
            path=self._select_path(group, params),
            lr=group["lr"],
            beta1=group["betas"][0],
            rho=group["rho"],
            bs=bs,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            eps_mode=group["eps_mode"],
            maximize=group["maximize"],
        )


def sampled_label_loss(
    logits: Tensor,
    targets: Tensor | None = None,
    *,
    ignore_index: int = -1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Mean cross-entropy of ``logits`` (..., V) against labels drawn from ``softmax(logits)``.

    Labels are sampled independently per position, without gradient through the sampling; the
    gradient of this loss is Sophia-G's :math:`\hat g`. Positions where ``targets`` (optional, same
    leading shape) equal ``ignore_index`` are left out, as in the true-label loss; the official
    script passes ``ignore_index=-1`` to a CE whose sampled labels are never -1.
    """
    flat = logits.reshape(-1, logits.size(-1))
    with torch.no_grad():
        probs = torch.softmax(flat.float(), dim=-1)
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if targets is not None:
            labels = labels.masked_fill(targets.reshape(-1) == ignore_index, ignore_index)
    return F.cross_entropy(flat, labels, ignore_index=ignore_index)


def sophiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    *,
    path: str = "single",
    lr: float | Tensor,
    beta1: float,
    rho: float,
    bs: float,
    weight_decay: float | Tensor,
    eps: float = 1e-15,
    eps_mode: str = "add",
    maximize: bool = False,
) -> None:
    """Functional Sophia-G step: updates ``params``, ``exp_avgs`` and ``state_steps`` in place."""
    impl = {"single": _single_tensor_sophiag, "foreach": _multi_tensor_sophiag}[path]
    impl(params, grads, exp_avgs, hessians, state_steps, lr=lr, beta1=beta1, rho=rho, bs=bs,
         weight_decay=weight_decay, eps=eps, eps_mode=eps_mode, maximize=maximize)  # fmt: skip


def sophia_update_hessian(grads: list[Tensor], hessians: list[Tensor], *, path: str, beta2: float) -> None:
    """Functional Hessian-EMA refresh from the sampled-label gradients ``grads``."""
    gs, hs = [], []
    for g, h in zip(grads, hessians):
        g, h = as_real(g, h)
        gs.append(g if g.dtype == h.dtype else g.to(h.dtype))
        hs.append(h)
    if path == "foreach":
        torch._foreach_mul_(hs, beta2)
        torch._foreach_addcmul_(hs, gs, gs, value=1 - beta2)
    else:
        for g, h in zip(gs, hs):
            h.mul_(beta2).addcmul_(g, g, value=1 - beta2)


def _denominator(h: Tensor, rho: float, bs: float, eps: float, eps_mode: str) -> Tensor:
    if eps_mode == "add":
        return (rho * bs * h).add_(eps)
    return (rho * bs * h).clamp_min_(eps)


def _single_tensor_sophiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    rho: float,
    bs: float,
    weight_decay: float | Tensor,
    eps: float,
    eps_mode: str,
    maximize: bool,
) -> None:
    for p, g, m, h, step_t in zip(params, grads, exp_avgs, hessians, state_steps):
        step_t += 1
        p_real, work, g, (m, h) = working_views(p, g, m, h, maximize=maximize)
        eta = per_member(lr, work)
        wd = per_member(weight_decay, work)

        if not is_zero(wd):
            work.mul_(1 - eta * wd)
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        ratio = m.abs().div_(_denominator(h, rho, bs, eps, eps_mode)).clamp_(max=1)
        if isinstance(eta, Tensor):
            work.sub_(ratio.mul_(m.sign()).mul_(eta))
        else:
            work.addcmul_(m.sign(), ratio, value=-eta)
        write_back(p_real, work)


def _multi_tensor_sophiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    rho: float,
    bs: float,
    weight_decay: float | Tensor,
    eps: float,
    eps_mode: str,
    maximize: bool,
) -> None:
    groups = foreach_groups(params, grads, [exp_avgs, hessians], state_steps, maximize=maximize)
    for _, work, g, (m, h), _ in groups:
        eta, wd = member_hparam(lr, work[0]), member_hparam(weight_decay, work[0])
        if not is_zero(wd):
            torch._foreach_mul_(work, member_views(1 - eta * wd, work))
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, g, alpha=1 - beta1)
        denom = torch._foreach_mul(h, rho * bs)
        if eps_mode == "add":
            torch._foreach_add_(denom, eps)
        else:
            torch._foreach_clamp_min_(denom, eps)
        ratio = torch._foreach_abs(m)
        torch._foreach_div_(ratio, denom)
        torch._foreach_clamp_max_(ratio, 1.0)
        torch._foreach_mul_(ratio, torch._foreach_sign(m))
        if isinstance(eta, Tensor):
            torch._foreach_mul_(ratio, member_views(eta, work))
            torch._foreach_sub_(work, ratio)
        else:
            torch._foreach_add_(work, ratio, alpha=-eta)
