r"""Conda: Column-Normalized Adam (Wang et al., 2025, arXiv 2509.24218).

Source: jie040109/Conda@449af71 ``conda_torch/conda.py`` and ``projector.py``. Matrix groups
(``matrix=True``; the official "Conda group" of attention/MLP Linear weights),
:math:`W\in\mathbb R^{m\times n}`, gradient :math:`G`, step count :math:`t` *before* its increment:

.. math::
    M &\leftarrow \beta_1 M + (1-\beta_1) G \qquad\text{(original coordinates)} \\
    Q &\leftarrow \begin{cases} V_h & m \ge n \\ U & m < n \end{cases}
        \ \text{of the thin SVD } M = U\Sigma V_h \text{ (fp32), when } t \bmod T = 0 \\
    \hat G, \hat M &= G Q^\top, M Q^\top \ (m \ge n) \quad\text{or}\quad Q^\top G, Q^\top M \ (m < n) \\
    V &\leftarrow \beta_2 V + (1-\beta_2)\,\hat G\odot\hat G \qquad\text{(rotated frame, element-wise)} \\
    W &\leftarrow W - \eta\,\frac{\sqrt{1-\beta_2^{t+1}}}{1-\beta_1^{t+1}}\; s\cdot
        \Bigl(\frac{\hat M}{\sqrt V + \epsilon}\Bigr) Q \ \ (m \ge n;\ Q(\cdot)\text{ if } m < n) \\
    W &\leftarrow W - \eta\lambda W \qquad\text{(decoupled decay after the update, un-bias-corrected } \eta)

:math:`Q` is square and orthogonal (a rotation of the smaller side, not a low-rank projection).
When it is refreshed, :math:`V` is neither rotated nor reset. ``proj_type="std"`` is the only
rule the official scripts use and the only one offered.

Regular groups (``matrix=False``: embeddings, head, norms, biases) run the same class without
projection, i.e. :func:`~focus_optim.optim.adamw.adamw` with :math:`\epsilon` before bias
correction and decay after the update, at the group's ``lr``/``weight_decay``/``betas``/``eps``.

Defaults: the class's (lr 1e-3, betas (0.9, 0.999), eps 1e-8, the docstring's 1e-6 is stale;
no decay) and ``torchrun_main.py``'s CLI (``update_proj_gap`` 50, ``scale`` 1.0). The shipped
LLaMA and GPT-2 scripts use ``update_proj_gap=2000``, ``scale=0.25``, betas (0.9, 0.99) and the
same (large) lr for both kinds of group.

The official projector is a Python object in ``optimizer.state``; here it is two tensors,
``ortho`` (:math:`Q`) and ``last_svd_step`` (:math:`t` of the last refresh, -1 before the
first), so ``state_dict()`` holds tensors only. Ensembles (``ensemble_dims=k``) use a batched SVD.

Sharded matrices (FSDP2 ``DTensor``, rows split over a 1-D mesh) are updated on each rank's rows
(``ROTATE_ON_SHARDS``; the SVD refreshes go to one owner rank each, :mod:`._owners`). The momentum
is element-wise. A tall matrix (:math:`m \ge n`; GPT-2's attention and MLP-in weights) rotates on
the right, by a replicated :math:`n\times n` basis, so each row of :math:`\hat G`, :math:`V` and
the update depends on the same row of :math:`G` and :math:`M` only: no communication. A wide
matrix rotates its rows into each other: each rank all-gathers :math:`G` and :math:`M`, keeps its
rows of the rotated frame (:math:`V` is sharded that way), and all-gathers the normalised rows to
rotate back its own rows of the update. The numbers equal the unsharded computation's up to the
rounding of matrix products over fewer rows; ``ROTATE_ON_SHARDS = False`` gathers and updates
every matrix whole on every rank instead (bit-equal to one process).

Paper vs code: the paper speaks of "column-wise second-moment normalization"; the code keeps a
full element-wise second moment of the one-sided rotated gradient. The code is implemented; the
paper's exact column-wise rule is not specified precisely enough to offer as an option.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype, _get_value

from . import _dtensor, _owners
from ._common import V, add_scaled_, is_zero, number, per_member
from ._matrix import MatrixOptimizer, check_bool, member_shape, working_copy

PROJ_TYPES = ("std",)


class Conda(MatrixOptimizer):
    r"""Conda for ``matrix=True`` groups, plain (HF-style) Adam for ``matrix=False`` groups.

    Args:
        params: iterable of parameters or of param-group dicts (with a ``matrix`` key; a group
            without one is a matrix group).
        lr: learning rate :math:`\eta` (>= 0); float, 0-d or 1-D per-member tensor.
        betas: :math:`(\beta_1, \beta_2)`.
        eps: :math:`\epsilon` (> 0), added to :math:`\sqrt V` before bias correction.
        weight_decay: :math:`\lambda` (>= 0), applied after the update.
        update_proj_gap: :math:`T` (>= 1), steps between SVD refreshes of :math:`Q`.
        scale: :math:`s`, multiplies the projected groups' update only.
        proj_type: ``"std"``.
        correct_bias: apply Adam's bias corrections (official default True).
        distributed: share the SVD refreshes of :math:`Q` over ranks holding the same matrices,
            each computed by one rank (:mod:`focus_optim.optim._owners`): ``None`` (default) for
            ``DTensor`` matrices (FSDP2); ``True`` also plain tensors over the default process
            group (DDP); ``False``: never.
        matrix, ensemble_dims, maximize, foreach, fp32_state: as in :class:`~focus_optim.optim.muon.Muon`.
    """

    _hparam_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": V.check_nonneg,
        "betas": V.check_betas,
        "eps": V.check_positive,
        "weight_decay": V.check_nonneg,
        "update_proj_gap": lambda n, v: V.check_int(n, v, 1),
        "scale": V.check_finite,
        "proj_type": lambda n, v: V.check_choice(n, v, PROJ_TYPES),
        "correct_bias": check_bool,
        "distributed": _owners.check_distributed,
    }
    _matrix_state_keys = ("exp_avg", "exp_avg_sq")
    _state_keys = ("exp_avg", "exp_avg_sq", "ortho")  # floating state, cast per fp32_state on load
    _max_matrix_ndim = 2

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | Tensor = 0.0,
        *,
        update_proj_gap: int = 50,
        scale: float = 1.0,
        proj_type: str = "std",
        correct_bias: bool = True,
        distributed: bool | None = None,
        matrix: bool = True,
        ensemble_dims: int = 0,
        maximize: bool = False,
        foreach: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=V.as_tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj_type=proj_type,
            correct_bias=correct_bias,
            distributed=distributed,
            matrix=matrix,
            ensemble_dims=ensemble_dims,
            maximize=maximize,
            foreach=foreach,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(group, p, state)
        if group["matrix"]:
            m, n = member_shape(p, group["ensemble_dims"])
            k = n if m >= n else m
            lead = p.shape[: group["ensemble_dims"]]
            state["ortho"] = torch.zeros(*lead, k, k, dtype=self._state_dtype(group, p), device=p.device)
            state["last_svd_step"] = torch.tensor(-1.0, dtype=_get_scalar_dtype())

    def _restore_loaded(self, state_dict: dict[str, Any]) -> None:
        # torch casts floating state to the parameter's dtype and device; ``last_svd_step`` is a
        # CPU float32 scalar like ``step`` (a bf16 copy would round step counts).
        super()._restore_loaded(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        live = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, live):
            saved = state_dict["state"].get(pid, {})
            if "last_svd_step" in saved and p in self.state:
                self.state[p]["last_svd_step"] = saved["last_svd_step"].to(
                    "cpu", _get_scalar_dtype(), copy=True
                )

    def _update_matrices(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        # (the SVD basis magnifies rounding differences between a tensor's and a number's arithmetic)
        beta1, beta2 = (number(b) for b in group["betas"])
        grads = [-g if group["maximize"] else g for g in grads]
        for g, state in zip(grads, states):
            conda_momentum_(state["exp_avg"], g, beta1)  # element-wise: on the shard where it lives
        gap = group["update_proj_gap"]
        due = [i for i, s in enumerate(states) if basis_due(s["step"], s["last_svd_step"], gap)]
        bases = _owners.map_whole(
            conda_basis,
            [states[i]["exp_avg"] for i in due],
            distributed=group["distributed"],
            out_shape=basis_shape,
        )
        for i, basis in zip(due, bases):
            states[i]["ortho"].copy_(basis)
            states[i]["last_svd_step"].fill_(_get_value(states[i]["step"]))
        hparams = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                       weight_decay=group["weight_decay"], scale=group["scale"],
                       correct_bias=group["correct_bias"])  # fmt: skip
        for p, g, state in zip(params, grads, states):
            if group["ensemble_dims"] == 0 and updates_on_shards(p):
                p_shard, v_shard = _dtensor.local(p), _dtensor.local(state["exp_avg_sq"])
                if p.size(-2) >= p.size(-1):  # tall: rows stay apart
                    g_shard, m_shard = _dtensor.local_grad(g, p), _dtensor.local(state["exp_avg"])
                    conda_apply_(p_shard, g_shard, m_shard, v_shard, state["ortho"], state["step"],
                                 tall=True, **hparams)  # fmt: skip
                else:  # wide: this rank's rows of the rotated frame, from the whole G and M
                    whole_g, whole_m = _dtensor.full(g), _dtensor.full(state["exp_avg"])
                    gather = functools.partial(_dtensor.gather_rows, like=p)
                    rows = _dtensor.own_rows(p)
                    conda_apply_(p_shard, whole_g, whole_m, v_shard, state["ortho"], state["step"],
                                 tall=False, rows=rows, gather_rows=gather, **hparams)  # fmt: skip
                continue
            # Otherwise a sharded (DTensor) matrix is updated whole on every rank, which keeps its shard.
            kept = (p, state["exp_avg_sq"])
            whole_p, exp_avg_sq = (_dtensor.full(t) for t in kept)
            whole_g, whole_m = _dtensor.full(g), _dtensor.full(state["exp_avg"])
            conda_apply_(whole_p, whole_g, whole_m, exp_avg_sq, state["ortho"], state["step"], **hparams)
            if whole_p is not p:
                for dst, whole in zip(kept, (whole_p, exp_avg_sq)):
                    _dtensor.store(dst, whole)

    def _update_aux(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        beta1, beta2 = group["betas"]
        self._aux_adamw(group, params, grads, states, lr=group["lr"], beta1=beta1, beta2=beta2,
                        eps=group["eps"], weight_decay=group["weight_decay"],
                        eps_mode="before_bias_correction", decay_mode="post_update",
                        bias_correction=group["correct_bias"])  # fmt: skip


ROTATE_ON_SHARDS = True  # False: every sharded matrix gathered and updated whole (bit-equal)


def updates_on_shards(p: Tensor) -> bool:
    """Whether matrix ``p`` is updated row shard by row shard (its rows split over the ranks)
    rather than gathered and updated whole on every rank."""
    return ROTATE_ON_SHARDS and _dtensor.row_sharded(p)


def conda_basis(M: Tensor) -> Tensor:
    """'std' rule: right singular vectors ``Vh`` (n x n) if m >= n, else left ``U`` (m x m); fp32 SVD."""
    U, _, Vh = torch.linalg.svd(M.float(), full_matrices=False)
    return (Vh if M.size(-2) >= M.size(-1) else U).to(M.dtype)


def basis_shape(M: Tensor) -> torch.Size:
    """Shape of :func:`conda_basis` of ``M``: (..., n, n) if m >= n, else (..., m, m)."""
    k = min(M.size(-2), M.size(-1))
    return torch.Size((*M.shape[:-2], k, k))


def basis_due(step_t: Tensor, last_svd_step: Tensor, update_proj_gap: int) -> bool:
    """Whether step :math:`t` (before its increment) refreshes :math:`Q`: ``t % T == 0``, or never
    refreshed yet (e.g. a state loaded from elsewhere)."""
    return int(_get_value(step_t)) % update_proj_gap == 0 or _get_value(last_svd_step) < 0


def conda_momentum_(exp_avg: Tensor, g: Tensor, beta1: float) -> None:
    r""":math:`M \leftarrow \beta_1 M + (1-\beta_1) G` in place (in ``exp_avg``'s dtype)."""
    g = g if g.dtype == exp_avg.dtype else g.to(exp_avg.dtype)
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)


def conda_update_(
    p: Tensor,
    g: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    ortho: Tensor,
    step_t: Tensor,
    last_svd_step: Tensor,
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float | Tensor,
    update_proj_gap: int,
    scale: float = 1.0,
    correct_bias: bool = True,
) -> None:
    """One Conda step of matrix parameter ``p``; updates ``p`` and every state tensor in place:
    the momentum (:func:`conda_momentum_`), the basis when due (:func:`conda_basis`), then
    :func:`conda_apply_`."""
    conda_momentum_(exp_avg, g, beta1)
    if basis_due(step_t, last_svd_step, update_proj_gap):
        ortho.copy_(conda_basis(exp_avg))
        last_svd_step.fill_(_get_value(step_t))
    conda_apply_(p, g, exp_avg, exp_avg_sq, ortho, step_t, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                 weight_decay=weight_decay, scale=scale, correct_bias=correct_bias)  # fmt: skip


def conda_apply_(
    p: Tensor,
    g: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    ortho: Tensor,
    step_t: Tensor,
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float | Tensor,
    scale: float = 1.0,
    correct_bias: bool = True,
    tall: bool | None = None,
    rows: slice | None = None,
    gather_rows: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """The rest of a Conda step, with the momentum ``exp_avg`` and the basis ``ortho`` current:
    the rotated second moment, the update of ``p`` and the decay; increments ``step_t``.

    Row shards of a matrix: ``tall`` (:math:`m \\ge n`, rotate on the right; default: from
    ``p``'s shape) is the whole matrix's. A tall shard passes every tensor as its rows. A wide
    one passes ``p`` and ``exp_avg_sq`` as its ``rows`` (of the parameter and of the rotated
    frame), ``g`` and ``exp_avg`` whole, and ``gather_rows``, which returns the whole normalised
    update in the rotated frame given this shard's rows (the other ranks give theirs)."""
    work = working_copy(p, exp_avg)
    g = g if g.dtype == exp_avg.dtype else g.to(exp_avg.dtype)
    eta = per_member(lr, work)
    wd = per_member(weight_decay, work)
    tall = p.size(-2) >= p.size(-1) if tall is None else tall
    t = int(_get_value(step_t))

    Qt = ortho.mT
    if tall:
        g_hat, m_hat = g @ Qt, exp_avg @ Qt
    else:
        Qt_rows = Qt if rows is None else Qt[..., rows, :]
        g_hat, m_hat = Qt_rows @ g, Qt_rows @ exp_avg
    exp_avg_sq.mul_(beta2).addcmul_(g_hat, g_hat, value=1 - beta2)
    denom = exp_avg_sq.sqrt().add_(eps)

    step_t += 1
    step_size = eta
    if correct_bias:
        t1 = t + 1
        step_size = eta * (1 - beta2**t1) ** 0.5 / (1 - beta1**t1)
    normed = m_hat.div_(denom)
    if tall:
        update = normed @ ortho
    else:
        Q_rows = ortho if rows is None else ortho[..., rows, :]
        update = Q_rows @ (normed if gather_rows is None else gather_rows(normed))
    update.mul_(scale)
    add_scaled_(work, update, -step_size)
    if not is_zero(wd):
        add_scaled_(work, work, -(eta * wd))
    if work is not p:
        p.copy_(work)
