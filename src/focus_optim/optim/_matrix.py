"""What the matrix optimizers (Muon, ROOT, Conda) share.

* Every param group carries ``matrix`` (bool): ``True`` groups get the class's matrix update,
  ``False`` groups (embeddings, output head, gains, biases) its auxiliary AdamW. Groups built
  by :func:`~focus_optim.optim.registry.make_optimizer` are tagged already; a group without the
  key gets the constructor's ``matrix`` (default ``True``), so plain parameter lists must hold
  matrices only.
* ``ensemble_dims`` (int, also a group key): that many leading dims of every parameter index
  independent ensemble members; the matrix is given by the remaining dims, and the update
  (orthogonalisation, norms, quantiles, SVDs) is batched over the members.
* Complex parameters are refused.
* ``DTensor`` (FSDP2) parameters: the auxiliary AdamW updates local shards; the matrix update
  gathers what needs the whole matrix and keeps the local shard (:mod:`._dtensor`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from ._common import BaseOptimizer, V
from ._validate import check_bool
from .adamw import adamw


class MatrixOptimizer(BaseOptimizer):
    """Base class: ``matrix``/``ensemble_dims`` group keys, per-kind state, aux AdamW dispatch.

    Subclasses set ``_matrix_state_keys`` (buffers shaped like the parameter for matrix groups),
    ``_state_keys`` (every floating state key of either kind; ``load_state_dict`` restores their
    dtype per ``fp32_state``), ``_max_matrix_ndim`` (largest number of per-member dims a matrix
    parameter may have; ``None``: any, flattened by the subclass) and implement
    ``_update_matrices`` and ``_update_aux``.
    """

    _matrix_state_keys: tuple[str, ...] = ()
    _aux_state_keys: tuple[str, ...] = ("exp_avg", "exp_avg_sq")
    _max_matrix_ndim: int | None = 2

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        super()._validate_group(group, where)
        if "matrix" in group:
            check_bool(where + "matrix", group["matrix"])
        if "ensemble_dims" in group:
            V.check_int(where + "ensemble_dims", group["ensemble_dims"], 0)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        where = f"param_groups[{index}]."
        if not group["matrix"]:
            return
        lo, hi = 2, self._max_matrix_ndim
        for p in group["params"]:
            nd = p.ndim - group["ensemble_dims"]
            if nd < lo or (hi is not None and nd > hi):
                allowed = f"{lo}" if hi == lo else f">= {lo}" if hi is None else f"{lo}..{hi}"
                raise ValueError(
                    f"Invalid {where}matrix: {type(self).__name__}'s matrix update needs {allowed} dims per "
                    f"ensemble member, got a parameter of shape {tuple(p.shape)} with "
                    f"ensemble_dims={group['ensemble_dims']}; put it in a group with matrix=False"
                )

    def _supports_complex(self) -> bool:
        return False

    def _local_shards(self, group: dict[str, Any]) -> bool:
        return not group["matrix"]

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        dtype = self._state_dtype(group, p)
        keys = self._matrix_state_keys if group["matrix"] else self._aux_state_keys
        for key in keys:
            state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        if group["matrix"]:
            self._update_matrices(group, params, grads, states)
        else:
            self._update_aux(group, params, grads, states)

    def _update_matrices(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        raise NotImplementedError

    def _update_aux(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        raise NotImplementedError

    def _aux_adamw(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        **hparams: Any,
    ) -> None:
        """The functional AdamW of :mod:`focus_optim.optim.adamw` on this group's aux state."""
        adamw(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states],
            path=self._select_path(group, params),
            maximize=group["maximize"],
            **hparams,
        )


def working_copy(p: Tensor, like: Tensor) -> Tensor:
    """``p`` itself, or a copy in the state's dtype (fp32 state of a low-precision parameter)."""
    return p if p.dtype == like.dtype else p.to(like.dtype)


def member_shape(p: Tensor, ensemble_dims: int) -> tuple[int, ...]:
    """The per-member shape of ``p`` (its dims after the ensemble dims)."""
    return tuple(p.shape[ensemble_dims:])


def split_matrix(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of the 2-D view of a per-member shape: (d0, d1*d2*...)."""
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return rows, cols
