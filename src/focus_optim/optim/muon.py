r"""Muon: MomentUm Orthogonalized by Newton-Schulz (Jordan et al., 2024), with its auxiliary Adam.

Source: KellerJordan/Muon@857d1ad ``muon.py`` (``muon_update``, ``adam_update``,
``SingleDeviceMuonWithAuxAdam``). Matrix groups (``matrix=True``), weight :math:`W`, gradient :math:`G`:

.. math::
    B_t &= \beta B_{t-1} + (1-\beta)\,G_t \\
    X_t &= (1-\beta)\,G_t + \beta B_t \qquad(\text{Nesterov; } X_t = B_t \text{ if } nesterov=False) \\
    O_t &= \mathrm{NS}_5(X_t)\,\sqrt{\max(1, \mathrm{rows}/\mathrm{cols})} \\
    W_t &= W_{t-1}(1-\eta\lambda) - \eta\,O_t

:math:`\mathrm{NS}_5` is :func:`newton_schulz` in bfloat16 with :math:`(a,b,c)=(3.4445,-4.7750,2.0315)`:
transpose if rows > cols, :math:`X_0 = X/(\lVert X\rVert_F + 10^{-7})`, five times
:math:`A = XX^\top,\ X \leftarrow aX + (bA + cA^2)X`, transpose back. The result is about
:math:`US'V^\top` with :math:`S'` in roughly [0.5, 1.5], not exactly :math:`UV^\top`.

Parameters with more than 2 dims per member (conv filters) are flattened to (d0, d1*d2*...). As in
the official code, the shape factor uses the last two dims of the *unflattened* gradient (kh/kw
for a 4-D conv weight), not out/(in*kh*kw); keep this quirk in mind when comparing conv runs with
other Muon implementations. (The official code flattens only 4-D tensors; here any >2-D member is.)

Aux groups (``matrix=False``: embeddings, head, gains, biases) run the official ``adam_update``,
i.e. :func:`~focus_optim.optim.adamw.adamw` with :math:`\epsilon` added after bias correction and
decay first: :math:`W \leftarrow W(1-\eta\lambda) - \eta\,\hat m/(\sqrt{\hat v}+\epsilon)`. Their
``lr`` and ``weight_decay`` default to ``adamw_lr`` and ``adamw_wd`` (a group may set its own,
as the official param groups do); betas and eps come from ``adamw_betas``/``adamw_eps``.

Ensembles (``ensemble_dims=k``): parameters of shape (E..., m, n) are E independent matrices; NS is
batched over the members, each normalised by its own Frobenius norm, and the shape factor comes
from the last two dims. A 1-D ``lr``/``weight_decay`` gives one value per member.

History: the first version (Nov 2024) used :math:`B \leftarrow \mu B + G`, :math:`X = G + \mu B`
and 6 NS steps. For the same gradients that :math:`X` is a positive multiple of the EMA form's,
so after the Frobenius normalisation the update is the same (``ns_steps=6`` for the step count).
Moonlight-style scaling (:math:`0.2\sqrt{\max(m,n)}` with AdamW-scale lr) is a different
convention (see :mod:`~focus_optim.optim.root`); it is not an option here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _dtensor, _owners
from ._common import V, add_scaled_, check_member_hparam, is_zero, per_member
from ._matrix import MatrixOptimizer, check_bool, member_shape, working_copy

MUON_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    X: Tensor,
    steps: int,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    *,
    dtype: torch.dtype | None = None,
    eps: float = 1e-7,
) -> Tensor:
    r"""Quintic Newton-Schulz orthogonalisation of the last two dims of ``X`` (batched over the rest).

    :math:`X_0 = X/(\lVert X\rVert_F + \epsilon)` per matrix (transposed when rows > cols), then
    ``steps`` times :math:`A = XX^\top,\ X \leftarrow aX + (bA + cA^2)X`. Runs in ``dtype``
    (default: ``X``'s own) and returns the result in that dtype.
    """
    if X.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(X.shape)}")
    a, b, c = coefficients
    Y = X if dtype is None else X.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        Y = Y.mT
    Y = Y / (Y.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = Y @ Y.mT
        B = b * A + c * A @ A
        Y = a * Y + B @ Y
    if tall:
        Y = Y.mT
    return Y


class Muon(MatrixOptimizer):
    r"""Muon for ``matrix=True`` groups plus the official auxiliary Adam for ``matrix=False`` groups.

    Args:
        params: iterable of parameters or of param-group dicts (with a ``matrix`` key; a group
            without one is a matrix group).
        lr: Muon learning rate :math:`\eta` (spectral-norm units; >= 0); float, 0-d or 1-D
            per-member tensor.
        momentum: :math:`\beta` in [0, 1).
        weight_decay: decoupled decay of the matrix groups (>= 0), applied first.
        nesterov: use the Nesterov blend (official default True).
        ns_steps: Newton-Schulz iterations (>= 0).
        ns_coefficients: :math:`(a, b, c)` of the quintic iteration.
        adamw_lr, adamw_betas, adamw_eps, adamw_wd: the aux Adam's defaults for ``matrix=False`` groups.
        distributed: share the Newton-Schulz work over ranks holding the same matrices, each
            matrix computed by one rank and broadcast (as the official distributed ``Muon``).
            ``None``: for FSDP2/``DTensor`` matrices; ``True``: also plain tensors, over the
            default process group (DDP); ``False``: never. See :mod:`focus_optim.optim._owners`.
        matrix: ``matrix`` of groups that do not set it.
        ensemble_dims: leading dims indexing ensemble members (see the module docstring).
        maximize: maximize the objective (``.grad`` is not modified).
        foreach: foreach path for the aux Adam groups.
        fp32_state: keep state in float32 for bf16/fp16 parameters.

    Defaults are the official ones (lr 0.02, momentum 0.95, no decay, nesterov, 5 steps; aux Adam
    lr 3e-4, betas (0.9, 0.95), eps 1e-10, no decay). README example: lr 0.02 and weight_decay
    0.01 for both kinds.
    """

    _hparam_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": V.check_nonneg,
        "momentum": V.check_beta,
        "weight_decay": V.check_nonneg,
        "nesterov": check_bool,
        "ns_steps": lambda n, v: V.check_int(n, v, 0, V.MAX_ITERATIONS),
        "ns_coefficients": lambda n, v: _check_coefficients(n, v),
        "adamw_lr": V.check_nonneg,
        "adamw_betas": V.check_betas,
        "adamw_eps": V.check_positive,
        "adamw_wd": V.check_nonneg,
        "distributed": _owners.check_distributed,
    }
    _member_sources = ("adamw_lr", "adamw_wd")
    _matrix_state_keys = ("momentum_buffer",)
    _state_keys = ("momentum_buffer", "exp_avg", "exp_avg_sq")  # all floating state (load casts)
    _max_matrix_ndim = None

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 0.02,
        momentum: float = 0.95,
        weight_decay: float | Tensor = 0.0,
        nesterov: bool = True,
        ns_steps: int = 5,
        *,
        ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
        adamw_lr: float | Tensor = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        adamw_wd: float | Tensor = 0.0,
        distributed: bool | None = None,
        matrix: bool = True,
        ensemble_dims: int = 0,
        maximize: bool = False,
        foreach: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=V.as_tuple(ns_coefficients),
            adamw_lr=adamw_lr,
            adamw_betas=V.as_tuple(adamw_betas),
            adamw_eps=adamw_eps,
            adamw_wd=adamw_wd,
            distributed=distributed,
            matrix=matrix,
            ensemble_dims=ensemble_dims,
            maximize=maximize,
            foreach=foreach,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not param_group.get("matrix", self.defaults["matrix"]):
            params = param_group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            param_group["params"] = params
            for source, key in (("adamw_lr", "lr"), ("adamw_wd", "weight_decay")):
                if key not in param_group:  # checked under the name the caller gave it
                    value = param_group.get(source, self.defaults[source])
                    where = f"param_groups[{len(self.param_groups)}]." if source in param_group else ""
                    self._hparam_checks[source](where + source, value)
                    V.check_scalar_tensors(where + source, value, per_member=True)
                    for p in params:
                        check_member_hparam(source, value, p)
                    param_group[key] = value
        super().add_param_group(param_group)

    def _update_matrices(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        blends = []
        for g, state in zip(grads, states):
            state["step"] += 1
            buf = state["momentum_buffer"]
            g = -g if group["maximize"] else g
            # NS starts by rounding to bf16: rounding first halves the bytes gathered and broadcast
            blends.append(muon_momentum_(g, buf, group["momentum"], group["nesterov"]).to(torch.bfloat16))
        updates = _owners.map_whole(
            partial(
                muon_orthogonalize,
                ns_steps=group["ns_steps"],
                ns_coefficients=group["ns_coefficients"],
                ensemble_dims=group["ensemble_dims"],
            ),
            blends,
            distributed=group["distributed"],
            out_dtype=torch.bfloat16,
        )
        for p, g, state, update in zip(params, grads, states, updates):
            muon_apply_(p, state["momentum_buffer"], update, g.shape, lr=group["lr"],
                        weight_decay=group["weight_decay"])  # fmt: skip

    def _update_aux(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        beta1, beta2 = group["adamw_betas"]
        self._aux_adamw(group, params, grads, states, lr=group["lr"], beta1=beta1, beta2=beta2,
                        eps=group["adamw_eps"], weight_decay=group["weight_decay"])  # fmt: skip


def muon_update_(
    p: Tensor,
    g: Tensor,
    buf: Tensor,
    *,
    lr: float | Tensor,
    momentum: float,
    weight_decay: float | Tensor,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    ensemble_dims: int = 0,
) -> None:
    """One Muon step of parameter ``p`` (gradient ``g``, momentum ``buf``), in place."""
    blend = muon_momentum_(g, buf, momentum, nesterov)
    update = muon_orthogonalize(_dtensor.full(blend), ns_steps, ns_coefficients, ensemble_dims)
    muon_apply_(p, buf, _dtensor.like(update, blend), g.shape, lr=lr, weight_decay=weight_decay)


def muon_momentum_(g: Tensor, buf: Tensor, momentum: float, nesterov: bool) -> Tensor:
    r""":math:`B \leftarrow \beta B + (1-\beta)G` in place; returns
    :math:`X` (the Nesterov blend, or :math:`B`)."""
    g = g if g.dtype == buf.dtype else g.to(buf.dtype)
    buf.lerp_(g, 1 - momentum)
    return g.lerp(buf, momentum) if nesterov else buf


def muon_orthogonalize(
    X: Tensor,
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    ensemble_dims: int = 0,
) -> Tensor:
    r""":math:`\mathrm{NS}_5(X)` of a whole matrix (per member, flattened to 2-D), in bfloat16,
    shaped as ``X``."""
    shape = member_shape(X, ensemble_dims)
    flat = X.reshape(*X.shape[:ensemble_dims], shape[0], -1) if len(shape) > 2 else X
    return newton_schulz(flat, ns_steps, ns_coefficients, dtype=torch.bfloat16).reshape(X.shape)


def muon_apply_(
    p: Tensor,
    buf: Tensor,
    update: Tensor,
    grad_shape: torch.Size,
    *,
    lr: float | Tensor,
    weight_decay: float | Tensor,
) -> None:
    r""":math:`W \leftarrow W(1-\eta\lambda) - \eta\,O\sqrt{\max(1, \mathrm{rows}/\mathrm{cols})}`
    (in ``buf``'s dtype: fp32 state of a low-precision ``p`` works on an fp32 copy)."""
    work = working_copy(p, buf)
    eta = per_member(lr, work)
    wd = per_member(weight_decay, work)
    # Official quirk: the factor uses the last two dims of the unflattened gradient.
    update = (update * max(1, grad_shape[-2] / grad_shape[-1]) ** 0.5).to(work.dtype)
    if not is_zero(wd):
        work.mul_(1 - eta * wd)
    add_scaled_(work, update, -eta)
    if work is not p:
        p.copy_(work)


def _check_coefficients(name: str, value: Any) -> None:
    if not isinstance(value, tuple | list) or len(value) != 3:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: a tuple of three finite numbers (a, b, c))")
    for i, v in enumerate(value):
        V.check_finite(f"{name}[{i}]", v)
