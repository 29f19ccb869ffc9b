"""Pieces every optimizer of the package shares: the torch.optim base behaviour, path selection,
lazy state, ensemble hyperparameters and a few scalar-or-tensor arithmetic helpers.

Ensemble hyperparameters
------------------------
``lr`` and ``weight_decay`` (and whatever else a class lists in ``_ensemble_hparams``) may be:

* a Python float;
* a 0-d tensor, which acts exactly like a float (torch.optim's "tensor lr");
* a 1-D tensor of length ``E``: slice ``i`` along dim 0 of *every* parameter of the group uses
  value ``i``. The labs stack ``E`` independent models or trajectories along dim 0 and train them
  all with one optimizer. Groups with such tensors run on the per-tensor path, or, for classes
  with ``_foreach_ensemble`` (FOCUS, Signum, AdamW, Lion, EXAdam, Sophia-G), on the foreach path
  when asked or by torch.optim's default (foreach on CUDA, not while compiling): the per-member
  values enter as broadcasting views (:func:`member_views`), with the per-tensor path's numbers
  bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    _default_to_fused_or_foreach,
    _get_scalar_dtype,
    _get_value,
)

from . import _dtensor
from . import _validate as V

if TYPE_CHECKING:
    from torch.utils._foreach_utils import TensorListList

Scalar = float | Tensor
#: a list of tensors, or the tuple a ``torch._foreach_*`` function returns
Tensors = list[Tensor] | tuple[Tensor, ...]


class BaseOptimizer(Optimizer):
    """``torch.optim.Optimizer`` plus validation of every param group and the path choice.

    Subclasses set ``_hparam_checks`` (name -> validator), ``_state_keys`` (names of the
    per-parameter state tensors) and ``_ensemble_hparams``.
    """

    _hparam_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {}
    _state_keys: tuple[str, ...] = ()
    _ensemble_hparams: tuple[str, ...] = ("lr", "weight_decay")
    #: hyperparameters that may be 1-D per-member tensors without being ``_ensemble_hparams``
    #: (Muon's ``adamw_lr``, copied into ``lr`` of its AdamW groups)
    _member_sources: tuple[str, ...] = ()
    _supports_fused: bool = False
    #: whether the foreach path takes 1-D (per-member) hyperparameters (see :func:`member_views`)
    _foreach_ensemble: bool = False
    #: whether the fused path takes 1-D (per-member) hyperparameters
    _fused_ensemble: bool = False
    #: whether the update is element-wise, so that a DTensor (FSDP2) parameter is updated on its
    #: local shard (see :mod:`~focus_optim.optim._dtensor`)
    _elementwise: bool = True

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._validate_group(defaults, where="")
        super().__init__(params, defaults)

    # --- validation -------------------------------------------------------------------------
    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        for name, check in self._hparam_checks.items():
            if name in group:
                check(where + name, group[name])
        for name in self._hparam_checks.keys() | self._ensemble_hparams:
            if name in group:
                per_member = name in self._ensemble_hparams or name in self._member_sources
                V.check_scalar_tensors(where + name, group[name], per_member)
        flags = (("foreach", True), ("fused", True), ("maximize", False), ("fp32_state", False))
        for name, optional in flags:  # (name, may be None)
            value = group.get(name)
            if name in group and not (isinstance(value, bool) or (optional and value is None)):
                allowed = "None, True or False" if optional else "True or False"
                raise ValueError(f"Invalid {where}{name}: {value!r} (allowed: {allowed})")
        if group.get("fused") and group.get("foreach"):
            raise ValueError("Invalid fused/foreach: `fused` and `foreach` cannot both be True")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group, where=f"param_groups[{len(self.param_groups) - 1}].")
        for p in group["params"]:
            if p.is_sparse:
                raise ValueError(f"{type(self).__name__} does not support sparse parameters")
            if p.is_complex() and not self._supports_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters")
            for name in self._ensemble_hparams:
                check_member_hparam(name, group.get(name), p)

    def _supports_complex(self) -> bool:
        return True

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                # torch's __setstate__ adds "differentiable" to the defaults; we have no such option,
                # and a loaded optimizer's param groups should equal a fresh one's.
                if key != "differentiable":
                    group.setdefault(key, value)

    # --- paths ------------------------------------------------------------------------------
    def _has_ensemble_hparams(self, group: dict[str, Any]) -> bool:
        return any(isinstance(group.get(n), Tensor) and group[n].ndim >= 1 for n in self._ensemble_hparams)

    def _select_path(self, group: dict[str, Any], params: list[Tensor]) -> str:
        """'single', 'foreach' or 'fused', with torch.optim's defaults (foreach on CUDA)."""
        ensemble = self._has_ensemble_hparams(group)
        fused, foreach = group.get("fused"), group.get("foreach")
        if fused:
            if ensemble and not self._fused_ensemble:
                raise ValueError(
                    f"fused=True: {type(self).__name__} does not support 1-D (per-member) tensor "
                    "hyperparameters on its fused path"
                )
            if not self._supports_fused:
                raise ValueError(f"{type(self).__name__} has no fused implementation")
            return "foreach" if torch.compiler.is_compiling() else "fused"
        if ensemble:
            if not self._foreach_ensemble:
                if foreach:
                    raise ValueError(
                        f"foreach=True: {type(self).__name__} does not support 1-D (per-member) tensor "
                        "hyperparameters on its foreach path"
                    )
                return "single"
            if foreach is None:
                # torch.optim's default (foreach on CUDA), but compiled code keeps the per-tensor
                # path: the compiler fuses it anyway, and the labs' compiled steps were built on it
                foreach = (
                    not torch.compiler.is_compiling()
                    and _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)[1]
                )
            return "foreach" if foreach else "single"
        if foreach is None:
            _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        return "foreach" if foreach else "single"

    # --- state ------------------------------------------------------------------------------
    def _state_dtype(self, group: dict[str, Any], p: Tensor) -> torch.dtype:
        if group.get("fp32_state") and p.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return p.dtype

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """Lazily create ``step`` (a CPU scalar tensor, as torch.optim does) and zeroed buffers."""
        state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        dtype = self._state_dtype(group, p)
        for key in self._state_keys:
            state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def init_state(self, *, step_on_device: bool = False) -> None:
        """Create every parameter's state now rather than at its first step, e.g. before
        ``torch.compile(opt.step)``, so that compiled code never traces the lazy creation.

        ``step_on_device``: keep each step count on its parameter's device (torch.optim's
        ``capturable`` convention), so that a compiled step stays on one device. Eager steps then
        read the count with a device sync, so use it only for compiled steps.
        """
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if len(state) == 0:
                    self._init_state(group, p, state)
                step = state.get("step")
                if step_on_device and torch.is_tensor(step) and step.device != p.device:
                    state["step"] = step.to(p.device)

    def reset_state(self) -> None:
        """Return every parameter's state to its initial value, in place: the same tensors (on the
        same devices) hold what :meth:`init_state` of a new optimizer would create, so that code
        compiled for this optimizer can be reused for a fresh run."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                fresh: dict[str, Any] = {}
                self._init_state(group, p, fresh)
                for key in [k for k in state if k not in fresh]:
                    del state[key]
                for key, value in fresh.items():
                    old = state.get(key)
                    if torch.is_tensor(old) and torch.is_tensor(value) and old.shape == value.shape:
                        old.copy_(value)
                    else:
                        state[key] = value

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
        """Params that have a gradient, their gradients and their (lazily created) states."""
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if len(state) == 0:
                self._init_state(group, p, state)
            params.append(p)
            grads.append(p.grad)
            states.append(state)
        if self._local_shards(group) and _dtensor.any_dtensor(params):
            grads = [_dtensor.local_grad(g, p) for g, p in zip(grads, params)]
            params = [_dtensor.local(p) for p in params]
            states = [{k: _dtensor.local(v) for k, v in s.items()} for s in states]
        return params, grads, states

    def _local_shards(self, group: dict[str, Any]) -> bool:
        """Whether this group's DTensor parameters are updated on their local shards."""
        return self._elementwise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim`` loading, then: ``step`` back on the CPU (torch moves it to the device for
        groups flagged ``fused``) and state dtypes per ``fp32_state``, taken from the saved tensors
        rather than from torch's cast to the parameter dtype (which would round fp32 state).

        Registered load hooks work as in torch: the checks and the restoring act on the state dict
        the pre-hooks return, and the post-hooks see (and may change) the restored state."""
        loading: dict[str, dict[str, Any]] = {}

        def last_pre_hook(_: Any, sd: dict[str, Any]) -> dict[str, Any]:
            loading["state_dict"] = sd
            return self._state_dict_for_torch(sd)

        def first_post_hook(_: Any) -> None:
            self._restore_loaded(loading["state_dict"])

        pre = self.register_load_state_dict_pre_hook(last_pre_hook)
        post = self.register_load_state_dict_post_hook(first_post_hook, prepend=True)
        try:
            super().load_state_dict(state_dict)
        finally:
            pre.remove()
            post.remove()

    def _state_dict_for_torch(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """The state dict torch's loading gets (after the user's pre-hooks), checked first."""
        self._check_saved_state(state_dict)
        return state_dict

    def _restore_loaded(self, state_dict: dict[str, Any]) -> None:
        """Undo torch's casts of ``step`` and the state tensors (before the user's post-hooks)."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        live = [(g, p) for g in self.param_groups for p in g["params"]]
        for pid, (group, p) in zip(saved_ids, live):
            saved = state_dict["state"].get(pid)
            if saved is None or p not in self.state:
                continue
            state = self.state[p]
            if torch.is_tensor(state.get("step")):
                state["step"] = self._place_step(group, p, saved["step"])
            dtype = self._state_dtype(group, p)
            for key in self._state_keys:
                value = saved.get(key)
                if torch.is_tensor(value) and (value.is_floating_point() or value.is_complex()):
                    state[key] = value.to(device=p.device, dtype=dtype, copy=True)

    def _place_step(self, group: dict[str, Any], p: Tensor, step: Tensor) -> Tensor:
        return step.to(device="cpu", dtype=_get_scalar_dtype(), copy=True)

    def _check_saved_state(self, state_dict: dict[str, Any]) -> None:
        """Refuse saved state whose keys are not the ones this optimizer keeps for that parameter
        (a state dict of another optimizer or configuration), before anything is loaded: torch
        would load it and fail at the next step with a KeyError, or, where the keys overlap (an
        AdamW state into Lion), carry on silently with the wrong state."""
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            return  # torch's own error names the mismatch
        for gi, (saved_group, group) in enumerate(zip(saved_groups, self.param_groups)):
            config = {**group, **{k: v for k, v in saved_group.items() if k != "params"}}
            for pid, p in zip(saved_group["params"], group["params"]):
                saved = state_dict["state"].get(pid)
                if not saved:
                    continue
                expected: dict[str, Any] = {}  # what a fresh step would create, on meta: no memory
                self._init_state(config, torch.empty(p.shape, dtype=p.dtype, device="meta"), expected)
                missing, extra = sorted(expected.keys() - saved), sorted(saved.keys() - expected.keys())
                if missing or extra:
                    raise ValueError(
                        f"Invalid state_dict: parameter {pid} (group {gi}) has state {sorted(saved)}, but "
                        f"{type(self).__name__} keeps {sorted(expected)} for it (missing {missing}, "
                        f"unexpected {extra}); was it saved by another optimizer or configuration?"
                    )
                for key, want in expected.items():
                    got = saved[key]
                    if torch.is_tensor(want) and torch.is_tensor(got) and got.shape != want.shape:
                        raise ValueError(
                            f"Invalid state_dict: parameter {pid} (group {gi}) has {key} of shape "
                            f"{tuple(got.shape)}, but a parameter of shape {tuple(p.shape)} keeps "
                            f"{tuple(want.shape)}; was it saved for another model?"
                        )
            # the saved hyperparameters replace the live ones: held to the constructor's rules
            self._validate_group(config, where=f"state_dict param_groups[{gi}].")
            for name in self._ensemble_hparams:
                for p in group["params"]:
                    check_member_hparam(f"state_dict param_groups[{gi}].{name}", config.get(name), p)

    # --- step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states = self._gather(group)
            if params:
                self._update_group(group, params, grads, states, **kwargs)
        return loss

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
    ) -> None:
        raise NotImplementedError


def check_member_hparam(name: str, value: Any, p: Tensor) -> None:
    """A 1-D (per-member) hyperparameter fits parameter ``p``: one value per slice along dim 0."""
    if not is_member(value):
        return
    if p.ndim == 0 or p.shape[0] != value.shape[0]:
        raise ValueError(
            f"Invalid {name}: a 1-D tensor of length {value.shape[0]} needs every parameter of its group "
            f"to have that many members along dim 0, got a parameter of shape {tuple(p.shape)}"
        )
    if _dtensor.is_dtensor(p):
        raise ValueError(
            f"Invalid {name}: 1-D (per-member) tensor hyperparameters need plain tensors, got a DTensor "
            "parameter"
        )


# --- scalar-or-tensor helpers ------------------------------------------------------------------
def scalar(x: Scalar) -> Scalar:
    """A 0-d tensor hyperparameter as a Python number (kept as a tensor while compiling)."""
    if isinstance(x, Tensor) and x.ndim == 0:
        return _get_value(x)
    return x


def number(x: Scalar) -> float:
    """A coefficient (``betas``, ``momentum``, ``gamma``) as the number it holds now: a 0-d tensor
    acts as its current value, as a 0-d ``lr`` does. (While compiling it stays a tensor, which the
    traced ops take alike; the type is the one the paths are written for.)"""
    return cast(float, scalar(x))


def is_member(x: Any) -> bool:
    """Whether a hyperparameter is a 1-D per-member (ensemble) tensor."""
    return isinstance(x, Tensor) and x.ndim == 1


def fused_hparam(x: Scalar) -> float | Tensor:
    """A hyperparameter as a fused kernel takes it: a float, or a 1-D per-member tensor as it is."""
    return x if is_member(x) else float(scalar(x))


def per_member(x: Scalar, p: Tensor) -> Scalar:
    """Broadcast a 1-D ensemble hyperparameter along dim 0 of ``p``; scalars pass through."""
    x = scalar(x)
    if isinstance(x, Tensor):
        if x.ndim == 0:
            return x.to(device=p.device, dtype=p.dtype if p.is_floating_point() else torch.float32)
        return x.to(device=p.device, dtype=p.dtype).view(x.shape[0], *([1] * (p.ndim - 1)))
    return x


def member_hparam(x: Scalar, like: Tensor) -> Scalar:
    """A 1-D ensemble hyperparameter on ``like``'s device and in its dtype, once for all tensors of a
    foreach group (so that arithmetic on it rounds as the per-tensor path's does); anything else
    becomes what :func:`scalar` makes of it."""
    if isinstance(x, Tensor) and x.ndim == 1:
        return x.to(device=like.device, dtype=like.dtype)
    return scalar(x)


def member_views(x: Scalar, tensors: list[Tensor]) -> Scalar | list[Tensor]:
    """One view of a 1-D (per-member) value per tensor, broadcasting along its dim 0 (no copies);
    a number or 0-d tensor is returned as it is."""
    if isinstance(x, Tensor) and x.ndim == 1:
        return [x.view(x.shape[0], *([1] * (t.ndim - 1))) for t in tensors]
    return x


def foreach_add_scaled_(tensors: Tensors, others: Tensors, alpha: Any) -> None:
    """``t += alpha * o`` for every pair: :func:`add_scaled_` over lists (``alpha`` a number, a
    0-d tensor or one broadcastable tensor per pair, as :func:`member_views` makes them)."""
    if isinstance(alpha, list):
        torch._foreach_addcmul_(tensors, others, alpha)
    elif isinstance(alpha, Tensor):
        torch._foreach_addcmul_(tensors, others, [alpha] * len(tensors))
    else:
        torch._foreach_add_(tensors, others, alpha=alpha)


def foreach_add_scaled(tensors: Tensors, others: Tensors, alpha: Any) -> tuple[Tensor, ...]:
    """``t + alpha * o`` for every pair, as new tensors (:func:`foreach_add_scaled_` out of place)."""
    if isinstance(alpha, list):
        return torch._foreach_addcmul(tensors, others, alpha)
    if isinstance(alpha, Tensor):
        return torch._foreach_addcmul(tensors, others, [alpha] * len(tensors))
    return torch._foreach_add(tensors, others, alpha=alpha)


def is_zero(x: Scalar) -> bool:
    """True only for a Python number equal to 0 (a tensor is never treated as zero)."""
    return not isinstance(x, Tensor) and x == 0


def add_scaled_(p: Tensor, x: Tensor, alpha: Scalar) -> Tensor:
    """``p += alpha * x`` for a number or a broadcastable tensor ``alpha``."""
    if isinstance(alpha, Tensor):
        return p.addcmul_(x, alpha)
    return p.add_(x, alpha=alpha)


def as_real(*tensors: Tensor) -> tuple[Tensor, ...]:
    """View complex tensors as real pairs (the last dim holds real and imaginary parts)."""
    return tuple(torch.view_as_real(t) if t.is_complex() else t for t in tensors)


def working_views(
    p: Tensor, g: Tensor, *states: Tensor, maximize: bool
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """``(p_real, work, g, states)``: what every per-tensor update starts from.

    Complex tensors become real views; ``g`` is negated for ``maximize`` (a new tensor, so
    ``.grad`` is untouched) and cast to the state dtype; ``work`` is ``p_real`` itself, or an fp32
    copy of it when the state is fp32 and ``p`` is not. Finish with ``write_back(p_real, work)``.
    """
    if maximize:
        g = -g
    p_real, g, *real_states = as_real(p, g, *states)
    dtype = real_states[0].dtype
    work = p_real if p_real.dtype == dtype else p_real.to(dtype)
    g = g if g.dtype == dtype else g.to(dtype)
    return p_real, work, g, real_states


def write_back(p_real: Tensor, work: Tensor) -> None:
    if work is not p_real:
        p_real.copy_(work)


def group_by_device_and_dtype(
    tensorlists: list[list[Tensor]],
) -> dict[tuple[Any, Any], tuple[list[list[Tensor]], list[int]]]:
    """``Optimizer._group_tensors_by_device_and_dtype`` of lists of tensors, typed as such: torch
    annotates the lists as holding optional tensors, which (``list`` being invariant) a list of
    tensors is not; what it returns holds the tensors it was given."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(cast("TensorListList", tensorlists))
    return cast("dict[tuple[Any, Any], tuple[list[list[Tensor]], list[int]]]", grouped)


class ForeachGroup(NamedTuple):
    """Tensors of one device/dtype (and, if asked, one step count) for a ``_foreach`` update."""

    params: list[Tensor]  # real views of the parameters
    work: list[Tensor]  # what to update: ``params``, or fp32 copies for fp32 state
    grads: Tensors  # real, negated for maximize, in the state dtype
    states: list[list[Tensor]]  # real views of each state buffer list
    steps: list[Any]  # the incremented step counts


def foreach_groups(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[list[Tensor]],
    state_steps: list[Tensor],
    *,
    maximize: bool,
    split_by_step: bool = False,
) -> Iterator[ForeachGroup]:
    """torch.optim's grouping by device and dtype, plus what every multi-tensor path does first:
    increment the step counts, take real views, negate the gradients for ``maximize`` and make
    fp32 working copies for fp32 state. With ``split_by_step``, tensors whose first gradient
    arrived at different steps (hence different bias corrections) form separate groups. The
    working copies are written back when the caller moves on to the next group."""
    grouped = group_by_device_and_dtype([params, grads, *states, state_steps])
    for _key, (lists, _) in grouped.items():
        dp, dg, *dstates, ds = lists
        if torch.compiler.is_compiling() or any(s.device.type != "cpu" for s in ds):
            for s in ds:
                s += 1
            values = [step_value(s) for s in ds]
        else:  # torch.optim's CPU step counts: one call each to count and to read them all
            torch._foreach_add_(ds, 1)
            values = torch.stack(ds).tolist()
        if split_by_step:
            buckets: dict[Any, list[int]] = {}
            for i, v in enumerate(values):
                buckets.setdefault(v, []).append(i)
            index_sets = list(buckets.values())
        else:
            index_sets = [list(range(len(dp)))]
        for idx in index_sets:
            p_real = [as_real(dp[i])[0] for i in idx]
            g: Tensors = [as_real(dg[i])[0] for i in idx]
            st = [[as_real(xs[i])[0] for i in idx] for xs in dstates]
            if maximize:
                g = torch._foreach_neg(g)
            dtype = st[0][0].dtype
            if p_real[0].dtype != dtype:
                work = [t.to(dtype) for t in p_real]
                g = [t.to(dtype) for t in g]
            else:
                work = p_real
            yield ForeachGroup(p_real, work, g, st, [values[i] for i in idx])
            if work is not p_real:
                torch._foreach_copy_(p_real, work)


def step_value(step_t: Tensor) -> float | Tensor:
    """The step count as a Python float; while compiling, a float64 tensor (bias corrections such
    as 1 - beta**t lose ties and digits in the float32 that ``step`` is stored in)."""
    step = _get_value(step_t)
    if isinstance(step, Tensor):
        step = step.to(torch.float64)
    return step


__all__ = [
    "BaseOptimizer",
    "ForeachGroup",
    "V",
    "add_scaled_",
    "as_real",
    "foreach_add_scaled_",
    "foreach_groups",
    "group_by_device_and_dtype",
    "is_zero",
    "member_hparam",
    "member_views",
    "per_member",
    "scalar",
    "step_value",
    "working_views",
    "write_back",
]
