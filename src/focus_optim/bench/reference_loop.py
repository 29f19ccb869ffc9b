"""A restatement of the authors' ``focus.py`` (liuyz0/FOCUS@bdda7f8): a per-parameter Python loop.

Used ONLY as a timing baseline for ``bench-step`` and as a test oracle for
``FOCUS(decay_mode="reference")``; the library's FOCUS lives in ``focus_optim.optim.focus``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ReferenceLoopFOCUS(torch.optim.Optimizer):
    """The authors' loop: m, pbar EMAs; sign step with attraction; decay by pbar_hat after."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-2, betas=(0.9, 0.999), gamma=0.1,
                 weight_decay=0.0) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, gamma=gamma, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["pbar"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, pbar = state["exp_avg"], state["pbar"]
                exp_avg.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                pbar.mul_(beta2).add_(p, alpha=1 - beta2)
                pbar_hat = pbar / (1 - beta2 ** state["step"])
                p.add_(torch.sign(exp_avg) + group["gamma"] * torch.sign(p - pbar_hat), alpha=-group["lr"])
                if group["weight_decay"] != 0:
                    p.add_(pbar_hat, alpha=-group["lr"] * group["weight_decay"])
