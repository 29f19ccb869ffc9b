r"""1-bit Adam (Tang et al., ICML 2021, arXiv 2102.02888) for plain PyTorch, after DeepSpeed's ``OnebitAdam``.

Source: ``microsoft/DeepSpeed`` ``deepspeed/runtime/fp16/onebit/adam.py`` (and
``runtime/comm/nccl.py`` for the all-reduce), restated in ``specs/optimizers.md`` §4. With
:math:`t` the step count, :math:`n` workers and :math:`\lambda` the weight decay:

**Call 1, the initialisation dry-run** (``init_dry_run=True``, the reference's behaviour):
:math:`t \leftarrow 1`; no moment and no parameter update, this step's gradient is discarded
(``non_freeze`` groups do update :math:`m, v` with it, as the reference does).

**Warm-up** (:math:`t <` ``freeze_step``; gradients averaged over the workers, by DDP or by
``average_grads=True``), Adam without bias correction and with :math:`\epsilon` outside the root:

.. math::
    m &\leftarrow \beta_1 m + (1-\beta_1)\,\bar g, \qquad v \leftarrow \beta_2 v + (1-\beta_2)\,\bar g^2 \\
    \theta &\leftarrow \theta - \eta\bigl(m/(\sqrt v + \epsilon) + \lambda\theta\bigr)

computed by :func:`focus_optim.optim.adamw.adamw` with ``bias_correction=False`` (decoupled
decay :math:`\theta(1-\eta\lambda) - \eta u`, the same rule up to rounding). After the step at
which :math:`t` reaches ``freeze_step``, the optimizer is *frozen*.

**Compression stage** (frozen; :math:`g_j` is worker :math:`j`'s *local* gradient):

.. math::
    m_j &\leftarrow \beta_1 m + (1-\beta_1)\,g_j \\
    m &\leftarrow \operatorname{CompressedAllReduce}(m_1..m_n;\ \delta_j, \bar\delta_i)
        \quad (\text{then } m \leftarrow m\odot\texttt{exp\_avg\_mask}) \\
    \theta &\leftarrow \theta - \eta\bigl(m/(\sqrt v + \epsilon) + \lambda\theta\bigr)
        \quad (v \text{ frozen})

with the error-compensated two-stage 1-bit all-reduce of :mod:`focus_optim.optim._comm`
(worker errors :math:`\delta_j`, server errors :math:`\bar\delta_i`, one scale per
worker-tensor and per server-chunk). Groups with ``non_freeze=True`` run the warm-up rule
throughout, the optimizer averaging their gradients itself once frozen.

Reference conventions kept, and the options for the other side:

* ``bias_correction`` is accepted and ignored (the reference reads it and never uses it);
  ``amsgrad=True`` raises.
* ``init_dry_run=False`` skips the discarded first step (the first call is a warm-up step).
* One process: no compression (the reference's n = 1); ``simulate_workers=n`` runs the n-worker
  compressed all-reduce on one device, each simulated worker with its own δ, plus the server
  errors (bit-identical to n real processes on the same gradients; n = 1 compresses nothing, as
  one process).
* The reference resets δ and δ̄ when loading a checkpoint (it could only save rank 0's); here
  ``state_dict()`` holds this rank's δ and δ̄ and :func:`save_rank_state` /
  :func:`load_rank_state` write one file per rank. :meth:`OneBitAdam.reset_compression_errors`
  reproduces the reference's reset.

Training loop: before the freeze DDP averages the gradients; afterwards
:meth:`OneBitAdam.needs_grad_sync` is False and the loop runs backward under ``model.no_sync()``
(see ``docs/onebit_adam.md``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor

from ..atomic import write_atomic
from . import _comm, _dtensor
from ._common import BaseOptimizer, V, add_scaled_, is_zero, per_member
from .adamw import adamw

_ERROR_KEYS = ("worker_error", "server_error")
_LAYOUT_KEYS = ("world_size", "rank", "simulate_workers")


class OneBitAdam(BaseOptimizer):
    r"""1-bit Adam: Adam warm-up, then frozen variance and 1-bit compressed momentum averaging.

    Args:
        params: iterable of parameters or dicts defining parameter groups. Group keys beyond the
            hyperparameters: ``non_freeze`` (bool, full Adam with averaged gradients throughout)
            and ``exp_avg_mask`` (tensor broadcastable to every parameter of the group, multiplied
            into the momentum after each compressed all-reduce; for coordinates whose gradient is
            always exactly 0).
        lr: learning rate :math:`\eta` (>= 0); float, 0-d tensor or 1-D per-member tensor.
        freeze_step: the step count :math:`t` after which v is frozen and compression starts
            (the dry-run counts as step 1).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: added to :math:`\sqrt v` (> 0).
        weight_decay: :math:`\lambda` (>= 0), added to the preconditioned update.
        bias_correction: accepted for DeepSpeed configs and ignored (as there).
        amsgrad: must be False (as in DeepSpeed).
        init_dry_run: the first ``step()`` only advances t and discards the gradient (DeepSpeed).
        average_grads: the optimizer all-reduces (averages) the gradients itself before the
            freeze; for loops without DDP. With DDP leave it False (DDP averages them).
        process_group: the data-parallel group (default: the world group when
            ``torch.distributed`` is initialised; otherwise one process, no communication).
        simulate_workers: run the n-worker compressed all-reduce on one process (see
            :meth:`stash_worker_grads`); ``None`` for real workers.
        phase1: ``"auto"``, ``"all_to_all"`` or ``"all_gather"``: the collective of phase 1.
        maximize, foreach, fp32_state: as in :class:`~focus_optim.optim.adamw.AdamW`.

    Ensemble hyperparameters (1-D ``lr``/``weight_decay``, one value per member along dim 0)
    act per member in the update; the compression keeps the reference's one scale per
    worker-tensor, so stacked members share it and are coupled once frozen.

    Defaults: DeepSpeed ``OnebitAdam`` (lr 1e-3, freeze_step 100000, betas (0.9, 0.999),
    eps 1e-8, no decay). DeepSpeed's tutorial recipes use a warm-up of 15-25 % of the steps.

    Attributes:
        comm_stats: the last step's communication, bytes sent by *this* rank (a simulated
            worker in simulated mode): ``compressed_bytes`` (the 1-bit exchange),
            ``allreduce_bytes`` (full-precision averaging done by the optimizer), ``ddp_bytes``
            (the fp32 ring all-reduce DDP performs for this step's gradients when the protocol
            asked for it), ``bytes_sent`` (their sum), ``fp32_allreduce_bytes`` (what DDP with a
            plain optimizer sends every step: :math:`2(n-1)/n\cdot 4\sum L`), ``ratio``,
            ``total_bytes_sent`` (cumulative), ``phase`` and ``phase1``.
    """

    _hparam_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": V.check_nonneg,
        "betas": V.check_betas,
        "eps": V.check_positive,
        "weight_decay": V.check_nonneg,
        "bias_correction": V.check_bool,
        "non_freeze": V.check_bool,
    }
    _state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        freeze_step: int = 100000,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | Tensor = 0.0,
        *,
        bias_correction: bool = True,
        amsgrad: bool = False,
        init_dry_run: bool = True,
        average_grads: bool = False,
        process_group: dist.ProcessGroup | None = None,
        simulate_workers: int | None = None,
        phase1: _comm.Phase1 = "auto",
        maximize: bool = False,
        foreach: bool | None = None,
        fp32_state: bool = False,
    ) -> None:
        flags = {"amsgrad": amsgrad, "init_dry_run": init_dry_run, "average_grads": average_grads}
        for name, flag in flags.items():
            V.check_bool(name, flag)
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            allowed = "None or a torch.distributed ProcessGroup"
            raise ValueError(f"Invalid process_group: {process_group!r} (allowed: {allowed})")
        if amsgrad:
            raise ValueError("Invalid amsgrad: True (allowed: False; 1-bit Adam has no AMSGrad variant)")
        V.check_int("freeze_step", freeze_step, 0)
        V.check_choice("phase1", phase1, _comm.PHASE1_MODES)
        if simulate_workers is not None:
            V.check_int("simulate_workers", simulate_workers, 1)
        defaults = dict(
            lr=lr,
            betas=V.as_tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            non_freeze=False,
            maximize=maximize,
            foreach=foreach,
            fp32_state=fp32_state,
        )
        super().__init__(params, defaults)
        self.freeze_step = freeze_step
        self.init_dry_run = init_dry_run
        self.average_grads = average_grads
        self.phase1 = phase1
        self._setup_workers(process_group, simulate_workers)
        self._reset_phase()
        self.comm_stats: dict[str, Any] = {"total_bytes_sent": 0}

    def _reset_phase(self) -> None:
        """The optimizer-wide state of a new run: step 0, warm-up, nothing stashed."""
        self._t = 0
        self._initialized = not self.init_dry_run
        self._frozen = False
        self._grads_averaged = False
        self._stash: list[dict[Tensor, Tensor]] = []

    def reset_state(self) -> None:
        """Per-parameter state *and* the warm-up/compression phase back to a new run's."""
        super().reset_state()
        self._reset_phase()

    # --- copies ----------------------------------------------------------------------------------
    #: the run's settings and stage, kept by copies (torch pickles defaults, state and groups only)
    _RUN_ATTRS: ClassVar[tuple[str, ...]] = (
        "freeze_step", "init_dry_run", "average_grads", "phase1",
        "_t", "_initialized", "_frozen", "_grads_averaged", "_stash", "comm_stats",
    )  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        """torch's pickled state plus the run's settings, stage and worker layout, so that a copy
        (``copy.deepcopy``, pickle) carries on as the original would."""
        if self.group is not None:
            raise TypeError(
                "OneBitAdam with a process_group of its own cannot be copied or pickled (a process "
                "group cannot); save its state_dict() instead"
            )
        state = super().__getstate__()
        state["onebit"] = {name: getattr(self, name) for name in self._RUN_ATTRS}
        state["onebit"]["layout"] = self._layout()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        run = state.pop("onebit", None)
        super().__setstate__(state)
        if run is None:  # torch's load_state_dict: the per-parameter state and groups only
            return
        run = dict(run)
        layout = run.pop("layout")
        for name, value in run.items():
            setattr(self, name, value)
        self._setup_workers(None, layout[2])  # the default group of the process it lands in
        self._adopt_layout(layout)

    # --- setup -----------------------------------------------------------------------------------
    def _setup_workers(self, process_group: dist.ProcessGroup | None, simulate: int | None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        self.group = process_group if distributed else None
        self.world_size = dist.get_world_size(self.group) if distributed else 1
        self.rank = dist.get_rank(self.group) if distributed else 0
        self.simulate_workers = simulate
        if simulate is not None and self.world_size > 1:
            raise ValueError(
                f"Invalid simulate_workers: {simulate} (allowed: None when running {self.world_size} "
                "real processes; simulation is for one process)"
            )

    @property
    def num_workers(self) -> int:
        """n: simulated workers in simulated mode, else the data-parallel world size."""
        return self.simulate_workers if self.simulate_workers is not None else self.world_size

    @property
    def frozen(self) -> bool:
        """True once v is frozen and the momentum is exchanged compressed."""
        return self._frozen

    def _supports_complex(self) -> bool:
        return False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if _dtensor.any_dtensor(group["params"]):
            raise ValueError(
                "OneBitAdam does not support DTensor (FSDP2 / tensor-parallel) parameters: it replaces "
                "DDP's gradient all-reduce and needs every parameter whole on every worker"
            )
        mask = group.get("exp_avg_mask")
        if mask is not None and not isinstance(mask, Tensor):
            raise ValueError(
                f"Invalid exp_avg_mask: {type(mask).__name__} (allowed: a tensor broadcastable to every "
                "parameter of its group)"
            )
        if mask is not None:
            for p in group["params"]:
                try:
                    fits = torch.broadcast_shapes(mask.shape, p.shape) == p.shape
                except RuntimeError:
                    fits = False
                if not fits:
                    raise ValueError(
                        f"Invalid exp_avg_mask: shape {tuple(mask.shape)} does not broadcast to a parameter "
                        f"of shape {tuple(p.shape)} in its group"
                    )

    # --- training-loop protocol ---------------------------------------------------------------
    def needs_grad_sync(self) -> bool:
        """Whether DDP must all-reduce the next gradients (``protocol.needs_grad_sync``).

        False once frozen (each worker's local gradient feeds its local momentum) and always
        when ``average_grads=True`` (the optimizer averages the gradients itself).
        """
        return not (self._frozen or self.average_grads)

    @torch.no_grad()
    def average_gradients(self) -> int:
        """Average the ``.grad`` of every parameter that this step uses averaged, in place.

        For loops without DDP that clip or inspect averaged gradients before ``step()``; ``step``
        then does not average again. A no-op on one process. Returns the bytes sent.
        """
        if self.world_size <= 1 or self._grads_averaged:
            return 0
        dry = not self._initialized
        grads = [
            p.grad
            for group in self.param_groups
            if (group["non_freeze"] or not (self._frozen or dry))
            for p in group["params"]
            if p.grad is not None
        ]
        sent = _comm.allreduce_mean_(grads, self.group)
        self._grads_averaged = True
        return sent

    @torch.no_grad()
    def stash_worker_grads(self) -> int:
        """Simulated mode: take the current ``.grad`` of every parameter as the next simulated
        worker's gradient and clear ``.grad``. Call it after each worker's backward, ``n`` times
        per step; without any stash, every simulated worker uses ``.grad``. Returns the count."""
        if self.simulate_workers is None:
            raise RuntimeError("stash_worker_grads() needs simulate_workers=n")
        if len(self._stash) >= self.simulate_workers:
            raise RuntimeError(f"already {len(self._stash)} worker gradients stashed for this step")
        stash = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    stash[p] = p.grad
                    p.grad = None
        self._stash.append(stash)
        return len(self._stash)

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"onebit"``: step count, stage flags and the worker layout.
        Per-parameter state holds this rank's ``worker_error``/``server_error`` once frozen.
        Registered state-dict post-hooks see ``"onebit"`` too."""

        def first_post_hook(_: Any, sd: dict[str, Any]) -> dict[str, Any]:
            sd["onebit"] = {"t": self._t, "initialized": self._initialized, "frozen": self._frozen}
            sd["onebit"].update(zip(_LAYOUT_KEYS, self._layout()))
            return sd

        handle = self.register_state_dict_post_hook(first_post_hook, prepend=True)
        try:
            return super().state_dict()
        finally:
            handle.remove()

    def _layout(self) -> tuple[int, int, int | None]:
        """What this rank's compression errors depend on: (world_size, rank, simulate_workers)."""
        return (self.world_size, self.rank, self.simulate_workers)

    def _state_dict_for_torch(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Load a state dict of the same rank. The ``exp_avg_mask`` of the current groups is kept
        (DeepSpeed: masks may change between training phases). Compression errors saved under a
        different rank or worker layout are dropped (re-initialised to zero) with a warning."""
        sd = dict(state_dict)
        sd.pop("onebit", None)
        groups = []
        for current, saved in zip(self.param_groups, sd["param_groups"]):
            saved = dict(saved)
            saved.pop("exp_avg_mask", None)
            if "exp_avg_mask" in current:
                saved["exp_avg_mask"] = current["exp_avg_mask"]
            groups.append(saved)
        sd["param_groups"] = groups + list(sd["param_groups"][len(groups) :])
        # torch casts every state tensor to its parameter's dtype; the errors stay float32, and
        # are restored from the saved ones after loading
        sd["state"] = {
            i: {k: v for k, v in st.items() if k not in _ERROR_KEYS} for i, st in sd["state"].items()
        }
        return super()._state_dict_for_torch(sd)

    def _restore_loaded(self, state_dict: dict[str, Any]) -> None:
        super()._restore_loaded(state_dict)
        index = {
            i: p
            for saved, cur in zip(state_dict["param_groups"], self.param_groups)
            for i, p in zip(saved["params"], cur["params"])
        }
        for i, st in state_dict["state"].items():
            for k in _ERROR_KEYS:
                if k in st:
                    self.state[index[i]][k] = st[k].to(device=index[i].device, dtype=torch.float32)
        extra = state_dict.get("onebit")
        if extra is None:  # a plain torch state dict: derive the stage from the step counts
            steps = [float(s["step"]) for s in self.state.values() if "step" in s]
            self._t = int(max(steps, default=0))
            self._initialized = self._t > 0 or not self.init_dry_run
            first_warmup_step = 2 if self.init_dry_run else 1  # the freeze follows a warm-up step
            self._frozen = self._t >= max(self.freeze_step, first_warmup_step)
            return
        self._t = int(extra["t"])
        self._initialized = bool(extra["initialized"])
        self._frozen = bool(extra["frozen"])
        self._adopt_layout(tuple(extra[k] for k in _LAYOUT_KEYS))

    def _adopt_layout(self, saved: tuple[Any, ...]) -> None:
        """Drop compression errors kept under another worker layout, with a warning."""
        if saved != self._layout():
            if any(k in s for s in self.state.values() for k in _ERROR_KEYS):
                warnings.warn(
                    f"OneBitAdam: compression errors saved by (world_size, rank, simulate_workers)={saved} "
                    f"do not fit {self._layout()}; resetting them",
                    stacklevel=2,
                )
            self.reset_compression_errors()

    def reset_compression_errors(self) -> None:
        """Drop every worker and server error (DeepSpeed does this on each checkpoint load)."""
        for s in self.state.values():
            for k in _ERROR_KEYS:
                s.pop(k, None)

    # --- step -------------------------------------------------------------------------------------
    # torch.optim's own decorator for this (imports dynamo only when called, keeping
    # ``import focus_optim`` light, unlike torch.compiler.disable at class definition)
    @torch._disable_dynamo
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimization step (see the module docstring for the stages).

        It runs eagerly inside ``torch.compile``: the stage it is in (step count, dry run,
        frozen) and its statistics are Python state, whose updates a compiled optimizer step
        does not keep (the step would stay in its first stage), and the compressed stage is
        bound by communication, not by kernel launches."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        n = self.num_workers
        dry = not self._initialized
        frozen = self._frozen
        stash = self._take_stash()
        ddp_synced = self.simulate_workers is None and self.world_size > 1 and self.needs_grad_sync()
        stats: dict[str, Any] = {"compressed_bytes": 0, "allreduce_bytes": 0, "numel": 0, "phase1": "none"}

        full: list[tuple[dict[str, Any], list[tuple[Tensor, Tensor, dict[str, Any]]]]] = []
        compressed: list[tuple[dict[str, Any], list[tuple[Tensor, Tensor, dict[str, Any]]]]] = []
        for group in self.param_groups:
            items = self._collect(group, stash)
            if not items:
                continue
            stats["numel"] += sum(p.numel() for p, _, _ in items)
            use_full = group["non_freeze"] or not frozen
            (full if use_full else compressed).append((group, items))

        # Full-precision averaging of the gradients this step uses averaged (``full`` holds only the
        # non_freeze groups once frozen; the dry-run uses only non_freeze gradients). The optimizer
        # does it when frozen (DDP is off) or when asked to; otherwise DDP has done it.
        averaged = [(p, grad) for g, items in full if g["non_freeze"] or not dry for p, grad, _ in items]
        if self.simulate_workers is not None:  # what each simulated worker's all-reduce would send
            numel = sum(p.numel() for p, _ in averaged)
            stats["allreduce_bytes"] += _comm.ring_allreduce_bytes(numel, n) if n > 1 else 0
        elif self.world_size > 1 and (frozen or self.average_grads) and not self._grads_averaged:
            stats["allreduce_bytes"] += _comm.allreduce_mean_([grad for _, grad in averaged], self.group)

        for group, items in full:
            if dry:
                _dry_run_moments(group, items)
            else:
                self._adam_step(group, items)
        for _group, items in compressed:
            for _, _, state in items:
                state["step"] += 1
        if compressed and not dry:
            stats.update(self._compressed_step(compressed))

        self._t += 1
        self._initialized = True
        if not dry and not frozen and self._t >= self.freeze_step:
            self._frozen = True
        self._grads_averaged = False
        self._record_stats(stats, n, dry, frozen, ddp_synced)
        return loss

    def _take_stash(self) -> list[dict[Tensor, Tensor]] | None:
        stash, self._stash = self._stash, []
        if not stash:
            return None
        if len(stash) != self.simulate_workers:
            raise RuntimeError(f"{len(stash)} worker gradients stashed, expected {self.simulate_workers}")
        return stash

    def _collect(
        self, group: dict[str, Any], stash: list[dict[Tensor, Tensor]] | None
    ) -> list[tuple[Tensor, Tensor, dict[str, Any]]]:
        """(param, gradient, state) for the params of ``group`` with a gradient. The gradient is
        ``p.grad``, or in simulated mode with a stash the ``(n, *shape)`` worker gradients."""
        items = []
        for p in group["params"]:
            if stash is not None:
                if not any(p in s for s in stash):
                    continue
                grad = torch.stack([s[p] if p in s else torch.zeros_like(p) for s in stash])
            elif p.grad is None:
                continue
            else:
                grad = p.grad
            if grad.is_sparse:
                raise RuntimeError("OneBitAdam does not support sparse gradients")
            state = self.state[p]
            if len(state) == 0:
                self._init_state(group, p, state)
                if self._frozen and not group["non_freeze"]:
                    warnings.warn(
                        f"OneBitAdam: a parameter of shape {tuple(p.shape)} got its first gradient after "
                        f"the variance froze (step {self._t}); its variance stays 0, so each update is "
                        "lr * m / eps (as in DeepSpeed). Put it in a non_freeze group, or give it "
                        "gradients before freeze_step",
                        stacklevel=3,
                    )
            items.append((p, grad, state))
        return items

    def _worker_grads(self, p: Tensor, grad: Tensor) -> Tensor:
        """Simulated mode: ``(n, *shape)`` gradients (a stash, or ``.grad`` for every worker)."""
        if grad.shape == p.shape:
            assert self.simulate_workers is not None  # called in simulated mode only
            return grad.unsqueeze(0).expand(self.simulate_workers, *p.shape)
        return grad

    def _mean_grad(self, p: Tensor, grad: Tensor) -> Tensor:
        if self.simulate_workers is not None and grad.shape != p.shape:
            return grad.sum(0).mul_(1 / grad.shape[0])
        return grad

    def _adam_step(self, group: dict[str, Any], items: list[tuple[Tensor, Tensor, dict[str, Any]]]) -> None:
        params = [p for p, _, _ in items]
        adamw(
            params,
            [self._mean_grad(p, g) for p, g, _ in items],
            [s["exp_avg"] for _, _, s in items],
            [s["exp_avg_sq"] for _, _, s in items],
            [s["step"] for _, _, s in items],
            path=self._select_path(group, params),
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            bias_correction=False,
            decay_mode="decoupled",
            maximize=group["maximize"],
        )

    def _compressed_step(self, compressed: list[tuple[dict[str, Any], list]]) -> dict[str, Any]:
        """Local momentum, compressed all-reduce (bucketed per device), mask, frozen-v update."""
        n = self.num_workers
        real = self.simulate_workers is None
        stats: dict[str, Any] = {"compressed_bytes": 0, "phase1": "none"}
        buckets: dict[torch.device, list[tuple[Tensor, Tensor, dict[str, Any]]]] = {}
        for group, items in compressed:
            beta1 = group["betas"][0]
            for p, grad, state in items:
                m = state["exp_avg"]
                if real or n == 1:  # one worker, real or simulated: nothing to compress (as n = 1)
                    g = self._mean_grad(p, grad)
                    g = -g if group["maximize"] else g
                    m.lerp_(g.to(m.dtype), 1 - beta1)
                    if n > 1:
                        self._ensure_errors(p, state, n)
                        buckets.setdefault(p.device, []).append((p, m, state))
                else:
                    self._ensure_errors(p, state, n)
                    g = self._worker_grads(p, grad)
                    g = -g if group["maximize"] else g
                    local = m.unsqueeze(0).lerp(g.to(m.dtype), 1 - beta1)
                    reduced = _comm.simulated_compressed_allreduce(
                        local, state["worker_error"], state["server_error"]
                    )
                    m.copy_(reduced)
                    padded = state["worker_error"].shape[1]
                    stats["compressed_bytes"] += _comm.compressed_allreduce_bytes([padded], n)
                    stats["phase1"] = "simulated"
        for bucket in buckets.values():
            sent, mode = _comm.compressed_allreduce_(
                [m for _, m, _ in bucket],
                [s["worker_error"] for _, _, s in bucket],
                [s["server_error"] for _, _, s in bucket],
                group=self.group,
                phase1=self.phase1,
            )
            stats["compressed_bytes"] += sent
            stats["phase1"] = mode
        for group, items in compressed:
            mask = group.get("exp_avg_mask")
            if mask is not None:
                for _, _, state in items:
                    m = state["exp_avg"]
                    if mask.device != m.device:
                        group["exp_avg_mask"] = mask = mask.to(m.device)
                    m.mul_(mask)
            frozen_adam_update(
                [p for p, _, _ in items],
                [s["exp_avg"] for _, _, s in items],
                [s["exp_avg_sq"] for _, _, s in items],
                lr=group["lr"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
            )
        return stats

    def _ensure_errors(self, p: Tensor, state: dict[str, Any], n: int) -> None:
        if "worker_error" in state:
            return
        padded = _comm.padded_numel(p.numel(), n)
        if self.simulate_workers is None:
            state["worker_error"] = torch.zeros(padded, dtype=torch.float32, device=p.device)
            state["server_error"] = torch.zeros(padded // n, dtype=torch.float32, device=p.device)
        else:
            state["worker_error"] = torch.zeros(n, padded, dtype=torch.float32, device=p.device)
            state["server_error"] = torch.zeros(padded, dtype=torch.float32, device=p.device)

    def _record_stats(self, stats: dict[str, Any], n: int, dry: bool, frozen: bool, ddp_synced: bool) -> None:
        numel = stats.pop("numel")
        fp32 = _comm.ring_allreduce_bytes(numel, n) if n > 1 else 0
        ddp = fp32 if ddp_synced else 0
        sent = stats["compressed_bytes"] + stats["allreduce_bytes"] + ddp
        total = self.comm_stats.get("total_bytes_sent", 0) + sent
        phase = "dry_run" if dry else ("compressed" if frozen else "warmup")
        if frozen and n <= 1:
            phase = "local"
        self.comm_stats = {
            "step": self._t,
            "phase": phase,
            "world_size": n,
            **stats,
            "ddp_bytes": ddp,
            "bytes_sent": sent,
            "fp32_allreduce_bytes": fp32,
            "ratio": sent / fp32 if fp32 else math.nan,
            "total_bytes_sent": total,
        }


def _dry_run_moments(group: dict[str, Any], items: list[tuple[Tensor, Tensor, dict[str, Any]]]) -> None:
    """The reference's first call: t += 1; ``non_freeze`` groups also update m and v (no param update)."""
    beta1, beta2 = group["betas"]
    for p, grad, state in items:
        state["step"] += 1
        if not group["non_freeze"]:
            continue
        g = grad.sum(0).mul_(1 / grad.shape[0]) if grad.shape != p.shape else grad
        g = -g if group["maximize"] else g
        m, v = state["exp_avg"], state["exp_avg_sq"]
        g = g.to(m.dtype)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)


def frozen_adam_update(
    params: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    lr: float | Tensor,
    eps: float,
    weight_decay: float | Tensor,
) -> None:
    r"""The compression stage's parameter update.

    .. math:: \theta \leftarrow \theta(1-\eta\lambda) - \eta\, m/(\sqrt v+\epsilon)

    ``m`` has already been replaced by the compressed average; ``v`` is frozen (not touched).
    """
    for p, m, v in zip(params, exp_avgs, exp_avg_sqs):
        work = p if p.dtype == m.dtype else p.to(m.dtype)
        eta = per_member(lr, work)
        wd = per_member(weight_decay, work)
        if not is_zero(wd):
            work.mul_(1 - eta * wd)
        denom = v.sqrt().add_(eps)
        if isinstance(eta, Tensor):
            add_scaled_(work, m / denom, -eta)
        else:
            work.addcdiv_(m, denom, value=-eta)
        if work is not p:
            p.copy_(work)


# --- per-rank checkpoints ------------------------------------------------------------------------
def rank_state_path(template: str | os.PathLike[str], rank: int | None = None) -> Path:
    """The file of ``rank`` (default: this process's rank): ``template`` with ``{rank}``
    substituted, or ``<stem>.rank<r><suffix>`` when the template has no ``{rank}``."""
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    text = os.fspath(template)
    if "{rank}" in text:
        return Path(text.format(rank=rank))
    path = Path(text)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def save_rank_state(optimizer: torch.optim.Optimizer, template: str | os.PathLike[str]) -> Path:
    """Each rank writes its own ``optimizer.state_dict()`` (with its compression errors),
    atomically (temp file + ``os.replace``). Returns the path written."""
    rank = getattr(optimizer, "rank", None)
    path = rank_state_path(template, rank)
    return write_atomic(path, lambda f: torch.save(optimizer.state_dict(), f))


def load_rank_state(optimizer: torch.optim.Optimizer, template: str | os.PathLike[str]) -> Path:
    """Each rank loads the file :func:`save_rank_state` wrote for it (``weights_only=True``)."""
    path = rank_state_path(template, getattr(optimizer, "rank", None))
    optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return path


__all__ = ["OneBitAdam", "frozen_adam_update", "load_rank_state", "rank_state_path", "save_rank_state"]
