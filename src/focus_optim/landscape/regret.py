r"""Section 4 check: FOCUS's average regret on an online convex problem falls as :math:`O(1/\sqrt T)`.

Theorem 4.2 assumes :math:`\eta_t = \eta/\sqrt t`, :math:`\beta_{1,t} = \beta_1\lambda^t` and
:math:`\gamma_t = \gamma\lambda^t`. We drive the project's :class:`~focus_optim.FOCUS` through its
``param_groups`` before every step, as a scheduler would (no second implementation).

The problem: online absolute deviation, :math:`L_t(\theta) = \frac1d\lVert\theta - z_t\rVert_1` with
:math:`z_t \sim \mathcal N(\mu, s^2 I)` i.i.d., with :math:`\mu \sim \mathcal N(0, \text{offset}^2 I)` per
sequence (FOCUS starts at 0, away from the optimum). It is convex, its gradients are bounded
(:math:`G_\infty = 1/d`), and the best fixed point in hindsight is exact: the coordinate-wise
median of :math:`z_1..z_T`, so :math:`R(T) = \sum_{t\le T} L_t(\theta_t) - \min_\theta\sum_{t\le T}
L_t(\theta)` needs no inner optimisation. Gradient noise does not vanish at the optimum, so the
:math:`\eta_t`-sized fluctuations of a sign method cost :math:`\propto\eta_t` per step and the
regret grows as :math:`\sqrt T`: the log-log slope of :math:`R(T)/T` is about -1/2. Many
independent sequences run at once as rows of one ensemble parameter.

Defaults: :math:`\eta = 1` (the noise scale of :math:`z`), :math:`\beta_1 = 0.9`, :math:`\beta_2 = 0.9`,
:math:`\gamma = 0.2`, :math:`\lambda = 0.9`. With a slow decay (:math:`\lambda = 0.999`) the
momentum and attraction fade *during* the fitted window, which shrinks the fluctuation cost over
time and steepens the finite-T slope (about -0.7 at T <= 10^4), still within the O(1/sqrt T) bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import make_optimizer


@dataclass
class RegretResult:
    """Average regret ``R(T)/T`` (mean over sequences) at the checkpoints ``T`` and the fitted slope."""

    T: np.ndarray
    avg_regret: np.ndarray
    slope: float
    intercept: float
    config: dict[str, float | int] = field(default_factory=dict)


def run(
    steps: int = 10000,
    sequences: int = 32,
    dim: int = 10,
    lr: float = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.9,
    gamma: float = 0.2,
    decay: float = 0.9,
    offset: float = 1.0,
    scale: float = 1.0,
    seed: int = 0,
    checkpoints: int = 16,
    fit_from: int = 100,
) -> RegretResult:
    """Run FOCUS on ``sequences`` independent online problems and fit ``log(R/T) ~ slope*log T``.

    Args:
        decay: :math:`\\lambda` for both :math:`\\beta_{1,t}` and :math:`\\gamma_t`.
        offset, scale: spread of the sequences' optima and of the data around them (``s``).
        fit_from: the smallest ``T`` used in the fit (early steps are dominated by the start).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2 * fit_from:
        raise ValueError(f"Invalid steps: {steps!r} (allowed: an integer >= 2 * fit_from = {2 * fit_from})")
    if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences < 1:
        raise ValueError(f"Invalid sequences: {sequences!r} (allowed: an integer >= 1)")
    gen = torch.Generator().manual_seed(seed)
    mu = offset * torch.randn(sequences, dim, generator=gen, dtype=torch.float64)
    z = mu + scale * torch.randn(steps, sequences, dim, generator=gen, dtype=torch.float64)
    theta = torch.zeros(sequences, dim, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer("focus", [theta], ensemble_dims=1, lr=lr, betas=(beta1, beta2), gamma=gamma)
    group = opt.param_groups[0]
    losses = torch.empty(steps, sequences, dtype=torch.float64)
    for t in range(1, steps + 1):
        group["lr"] = lr / t**0.5
        group["betas"] = (beta1 * decay**t, beta2)
        group["gamma"] = gamma * decay**t
        with torch.no_grad():
            diff = theta - z[t - 1]
            losses[t - 1] = diff.abs().sum(-1) / dim
            theta.grad = diff.sign() / dim
        opt.step()
    Ts = np.unique(np.geomspace(10, steps, checkpoints).astype(int))
    cum = torch.cumsum(losses, 0)
    avg = []
    for T in Ts:
        best = torch.median(z[:T], dim=0).values  # lower median: a minimiser of sum |theta - z|
        best_loss = (best - z[:T]).abs().sum((0, 2)) / dim
        avg.append(float(((cum[T - 1] - best_loss) / T).mean()))
    avg_arr = np.asarray(avg)
    sel = Ts >= fit_from
    slope, intercept = np.polyfit(np.log(Ts[sel]), np.log(avg_arr[sel]), 1)
    config = dict(
        steps=steps,
        sequences=sequences,
        dim=dim,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        gamma=gamma,
        decay=decay,
        offset=offset,
        scale=scale,
        seed=seed,
        fit_from=fit_from,
    )
    return RegretResult(Ts, avg_arr, float(slope), float(intercept), config)


__all__ = ["RegretResult", "run"]
