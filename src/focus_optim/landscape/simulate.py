"""Batched simulation of noisy optimization on the narrowing valley.

Every trajectory of a sweep is one row of batched tensors: the parameters are a ``[R, N]``
tensor optimized by the project's own optimizer classes with ensemble hyperparameters
(``lr`` and ``weight_decay`` are ``[R]`` tensors, one value per row), built with
``focus_optim.make_optimizer(name, [x], ensemble_dims=1, ...)``. Each step (section 2.2 and A.1):

1. evaluate the exact loss and gradient of the valley at :math:`\\theta_t` (per-row sharpness);
2. multiply each gradient component by an independent :math:`\\mathcal N(1, \\sigma^2)` draw;
3. ``optimizer.step()``;
4. update the metrics: minimum loss and maximum projection :math:`u` along the trajectory.

After ``steps`` steps the final loss is recorded (and folded into the minimum). The initial
position is :math:`\\mathcal N(0, (10^{-4})^2)` per coordinate.

Random numbers come from :mod:`focus_optim.landscape.rng`, keyed by (cell seed, row of the cell,
step), so results do not depend on batching, chunking or sharding.

Speed. With ``compile=True`` the step (gradient + noise + ``optimizer.step()`` + metrics) is
compiled by ``torch.compile`` (``fullgraph``), which fuses it into a few loops over the rows (one
C++ kernel on CPU, a few Triton kernels on CUDA) with the random numbers drawn inside. The
parameters are stored column-major (each coordinate contiguous across trajectories) so those
loops vectorise over trajectories. Rows are processed in chunks of at most ``chunk_rows``: on CPU a
chunk (65536 rows, a few MB) stays in cache for all its steps and never mixes rows of different
cells, so a cell is computed on tensors of the same shape however cells are batched; on CUDA the
cells of a call are packed into big chunks, each cell starting at a multiple of 64 rows, and every
reduction over coordinates is a fixed-order sum, so each row meets the same arithmetic wherever it
sits. A workspace (parameters, optimizer, compiled step) is reused across chunks of one shape.
Eagerly (no compiler, or small runs), the noise of many steps is drawn in one go.

With ``kernels=True`` (CUDA, or any device under ``TRITON_INTERPRET=1``) nothing is compiled: a
step is one hand-written Triton kernel for the valley (:mod:`.triton_valley`: loss, metrics,
gradient and noise) followed by ``optimizer.step()`` on the optimizer's fused path, itself one
Triton launch (with per-row ``lr``/``weight_decay``). Each row's numbers do not depend on its
neighbours there either.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .. import make_optimizer
from ..compiling import raise_recompile_limit
from ..optim._common import BaseOptimizer
from . import rng
from . import valley as V

METRICS: tuple[str, ...] = ("final_loss", "min_loss", "max_u")
INIT_STD = 1e-4
ROW_ALIGN = 64
#: Steps per launch of the one-launch Triton step (``Options(kernels=True, fuse_update=True)``).
STEPS_PER_LAUNCH = 100
EAGER_NOISE_ELEMENTS = 1 << 20
#: CPU rows per chunk: large enough to amortise the per-call overhead of a compiled step, small
#: enough that a chunk's dozen state arrays stay in cache (benchmarks/toy_throughput.py).
CPU_CHUNK_ROWS = 65536
#: Workspaces kept (with their compiled steps): the suite needs 3 optimizers x 2 dimensions + a few.
MAX_WORKSPACES = 16


@dataclass(frozen=True)
class OptimizerSetup:
    """An optimizer of the toy experiments: a registry name plus hyperparameters (not lr/wd)."""

    label: str
    registry: str
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        return {"registry": self.registry, **{k: _plain(v) for k, v in self.hparams.items()}}


#: Appendix A.1's toy settings. AdamW with torch semantics (decoupled decay inside the update);
#: FOCUS with the toy code's decoupled decay ``theta -= lr * (sign(m) + gamma*sign(...) + wd*theta)``;
#: Signum = FOCUS with gamma = 0, beta2 = 0 (the registry's Signum: ``theta -= lr*(wd*theta + sign(m))``).
PAPER_SETUPS: dict[str, OptimizerSetup] = {
    "adamw": OptimizerSetup("adamw", "adamw", {"betas": (0.9, 0.999), "eps": 1e-8}),
    "signum": OptimizerSetup("signum", "signum", {"momentum": 0.9}),
    "focus": OptimizerSetup("focus", "focus", {"betas": (0.9, 0.9), "gamma": 0.2, "decay_mode": "decoupled"}),
}


def setup(name: str) -> OptimizerSetup:
    """A paper setup by label (``adamw``/``adam``, ``signum``, ``focus``)."""
    key = "adamw" if name.lower() == "adam" else name.lower()
    if key not in PAPER_SETUPS:
        raise ValueError(f"Invalid optimizer: {name!r} (allowed: {', '.join(PAPER_SETUPS)})")
    return PAPER_SETUPS[key]


@dataclass
class Rows:
    """Per-row settings of a block of trajectories (all ``[R]`` tensors; ``keys`` int32)."""

    sharpness: Tensor
    noise: Tensor
    lr: Tensor
    weight_decay: Tensor
    keys: Tensor

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @staticmethod
    def make(seed: int, sharpness: Any, noise: Any, lr: Any, weight_decay: Any) -> Rows:
        """Rows of one cell: each setting broadcast to a common shape, flattened row-major; the
        RNG keys are those of rows ``0..R-1`` of a cell with this seed."""
        arrays = torch.broadcast_tensors(
            *(torch.as_tensor(v, dtype=torch.float64) for v in (sharpness, noise, lr, weight_decay))
        )
        a, sigma, lr_, wd = (t.reshape(-1).to(torch.float32) for t in arrays)
        return Rows(a, sigma, lr_, wd, keys=rng.row_keys(seed, a.numel()))

    def pad(self, n: int) -> Rows:
        """These rows followed by inert rows (all settings 0) up to ``n`` rows."""
        extra = n - len(self)
        if extra <= 0:
            return self
        return Rows(*(torch.cat((t, t.new_zeros(extra))) for t in self._tensors()))

    def slice(self, start: int, stop: int) -> Rows:
        return Rows(*(t[start:stop] for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.sharpness, self.noise, self.lr, self.weight_decay, self.keys)

    @staticmethod
    def cat(blocks: Sequence[Rows]) -> Rows:
        return Rows(*(torch.cat(ts) for ts in zip(*(b._tensors() for b in blocks))))


@dataclass
class Options:
    """How to run (never what is computed).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        compile: fuse the step with ``torch.compile`` (``None``: on CUDA with Triton, or on CPU
            with a C++ compiler when a call has at least ``compile_min_work`` trajectory-steps).
        chunk_rows: rows per chunk (default: 65536 on CPU, ``2**27 // N`` on CUDA).
        steps_per_call: steps unrolled in one compiled call (a divisor of ``steps`` is used; compile
            time grows quickly with it, so 1 by default).
        pack_cells: pack the rows of different cells into the same chunks (default: on CUDA).
        fixed_order: sum over coordinates (N > 2) left to right, so that every row meets the same
            rounding wherever it sits in a chunk (default: when cells are packed); otherwise a
            reduction whose order the compiler may choose (fusable with the update, as softmax is).
        threads: CPU threads while simulating (``None``: leave torch's setting).
        kernels: run each step as two hand-written Triton launches (the valley kernel, then the
            optimizer's fused step) instead of compiling it; no compile time. CUDA, or
            ``TRITON_INTERPRET=1`` (default: off).
        fuse_update: with ``kernels``, one launch per ``steps_per_launch`` steps: the valley
            kernel applies the optimizer's update itself (:func:`.triton_valley.valley_update_`,
            with the step counts, bias corrections and hyperparameters of the optimizer's own fused
            step, recorded for every step), holding theta and the optimizer state in registers
            between steps, so neither the noisy gradient nor the state goes to memory in between;
            the same numbers as ``kernels`` alone, bit for bit (in the interpreter). Recorded runs
            take one launch a step (theta is copied out after each).
        steps_per_launch: steps per launch with ``fuse_update`` (default 100: long enough that
            memory traffic vanishes, short enough that the host records the next launch's steps
            while the GPU runs this one).
    """

    device: str = "cpu"
    compile: bool | None = None
    chunk_rows: int | None = None
    steps_per_call: int = 1
    pack_cells: bool | None = None
    compile_min_work: float = 5e8
    threads: int | None = None
    fixed_order: bool | None = None
    kernels: bool = False
    fuse_update: bool = False
    steps_per_launch: int = STEPS_PER_LAUNCH

    def resolved(self, dim: int, work: float) -> Options:
        dev = torch.device(self.device)
        chunk = self.chunk_rows or default_chunk_rows(dev, dim)
        comp = self.compile
        if self.kernels:
            if not kernels_available(dev):
                raise ValueError(
                    f"Invalid kernels=True on {dev}: the Triton kernels run on CUDA "
                    "(or under TRITON_INTERPRET=1)"
                )
            comp = False
        elif self.fuse_update:
            raise ValueError("Invalid fuse_update=True without kernels=True (it fuses the Triton step)")
        if self.steps_per_launch < 1:
            raise ValueError(f"Invalid steps_per_launch: {self.steps_per_launch} (allowed: an integer >= 1)")
        if comp is None:
            comp = compile_available(dev) and (dev.type != "cpu" or work >= self.compile_min_work)
        pack = self.pack_cells if self.pack_cells is not None else dev.type != "cpu"
        fixed = self.fixed_order if self.fixed_order is not None else pack
        return Options(
            self.device,
            bool(comp),
            chunk,
            self.steps_per_call,
            pack,
            self.compile_min_work,
            self.threads,
            fixed,
            self.kernels,
            self.fuse_update,
            self.steps_per_launch,
        )


def default_chunk_rows(device: torch.device, dim: int) -> int:
    """Rows per chunk: :data:`CPU_CHUNK_ROWS` on CPU, ``2**27`` coordinates' worth on a GPU."""
    return CPU_CHUNK_ROWS if device.type == "cpu" else max(ROW_ALIGN, (1 << 27) // dim)


def compile_available(device: torch.device) -> bool:
    """Whether torch.compile can generate code here (a C++ compiler on CPU, Triton on CUDA)."""
    if os.environ.get("FOCUS_OPTIM_NO_COMPILE"):
        return False
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def kernels_available(device: torch.device) -> bool:
    """Whether :mod:`.triton_valley` and the fused optimizer kernels run on ``device``."""
    from ..optim._kernels import use_triton

    return use_triton(device)


@dataclass
class Recording:
    """Per-step history of a recorded run: ``loss [T+1, R]``, ``u [T+1, R]``, ``theta [T+1, R, N]``."""

    loss: Tensor
    u: Tensor
    theta: Tensor


class Workspace:
    """Tensors, optimizer and (compiled) step for one chunk shape; reused across chunks."""

    def __init__(self, opt_setup: OptimizerSetup, valley: V.Valley, n_rows: int, opts: Options) -> None:
        dev = torch.device(opts.device)
        self.opt_setup = opt_setup
        self.valley, self.n_rows, self.opts = valley, n_rows, opts
        n = valley.dim
        # Column-major ("structure of arrays"): each coordinate is contiguous across rows, so the
        # fused kernels vectorise over trajectories; optimizer state inherits the layout.
        self.x = torch.zeros(n, n_rows, device=dev).t().requires_grad_()
        zeros = lambda: torch.zeros(n_rows, device=dev)  # noqa: E731
        self.a, self.sigma, self.lr, self.wd = zeros(), zeros(), zeros(), zeros()
        self.keys = torch.zeros(n_rows, dtype=torch.int32, device=dev)
        self.min_loss, self.max_u = zeros(), zeros()
        self.t = torch.zeros((), dtype=torch.int32, device=dev)
        self.e = valley.axis_tensor(dev)  # overwritten by load(): one workspace serves every axis
        self.ordered = bool(opts.fixed_order)
        # decay_norms_and_biases: with ensemble_dims=1 the [R, N] parameter counts as 1-D per member,
        # which make_optimizer would otherwise leave undecayed.
        fused: dict[str, Any] = {"fused": True} if opts.kernels else {}
        opt = make_optimizer(
            opt_setup.registry,
            [self.x],
            ensemble_dims=1,
            decay_norms_and_biases=True,
            lr=self.lr,
            weight_decay=self.wd,
            **fused,
            **dict(opt_setup.hparams),
        )
        assert isinstance(opt, BaseOptimizer)  # every registry optimizer is one
        self.opt = opt
        # The valley kernel's output, in the parameters' layout (the optimizer reads it as .grad).
        self.grad = torch.zeros(n, n_rows, device=dev).t() if opts.kernels else None
        group = self.opt.param_groups[0]
        if group["lr"] is not self.lr or group["weight_decay"] is not self.wd:
            raise RuntimeError("make_optimizer did not keep the per-row lr/weight_decay tensors")
        # Eager, so compiled code never sees it empty; on a GPU the step count lives there (no
        # per-step host kernels or transfers in the compiled graph).
        self.opt.init_state(step_on_device=bool(opts.compile))
        if opts.compile:
            raise_recompile_limit(256)
            self._advance = torch.compile(
                self._make_advance(opts.steps_per_call), fullgraph=True, dynamic=False
            )
            self._advance1 = self._advance
            if opts.steps_per_call > 1:
                self._advance1 = torch.compile(self._make_advance(1), fullgraph=True, dynamic=False)

    def _make_advance(self, k: int):
        """``k`` fused steps drawing their own noise (the function torch.compile sees)."""
        dim, t = self.valley.dim, self.t

        @torch.no_grad()
        def advance() -> None:
            for _ in range(k):
                self._step(rng.step_normals(self.keys, t, dim))
                t.add_(1)

        return advance

    def _step(self, z: Tensor) -> None:
        """One step with standard normals ``z [R, N]``: metrics at theta_t, noisy gradient, update."""
        x = self.x
        loss, grad, u = V.loss_and_grad(x, self.a, self.e, self.valley.c, self.ordered)
        self.min_loss.copy_(torch.minimum(self.min_loss, loss))
        self.max_u.copy_(torch.maximum(self.max_u, u))
        x.grad = V.noisy(grad, self.sigma, z)
        self.opt.step()
        x.grad = None  # as zero_grad(set_to_none=True): a compiled step never writes the gradient out

    @torch.no_grad()
    def _run_eager(self, steps: int, on_step: Any = None) -> None:
        """Eager steps; the noise of ``block`` steps is drawn at once (fewer, larger tensor ops)."""
        block = max(1, min(steps, EAGER_NOISE_ELEMENTS // (self.n_rows * self.valley.dim)))
        t0 = int(self.t)
        for start in range(0, steps, block):
            n = min(block, steps - start)
            z = rng.step_normals(self.keys, t0 + start, self.valley.dim, count=n)
            for i in range(n):
                if on_step is not None:
                    on_step()
                self._step(z[i])
        self.t.fill_(t0 + steps)

    @torch.no_grad()
    def _run_kernels(self, steps: int, record: bool = False) -> Recording | None:
        """Two launches a step: the valley kernel (metrics, noisy gradient), the fused optimizer step;
        with ``fuse_update``, one launch per ``steps_per_launch`` steps (:meth:`_fused_steps`).
        ``record``: the valley kernel also stores each step's loss and u; theta is copied (then one
        launch a step)."""
        from .triton_valley import valley_step_

        t0, c = int(self.t), float(self.valley.c)
        rec = None
        if record:
            n, dev = self.n_rows, self.x.device
            rec = Recording(
                torch.empty(steps + 1, n, device=dev),
                torch.empty(steps + 1, n, device=dev),
                torch.empty(steps + 1, n, self.valley.dim, device=dev),
            )
        if self.opts.fuse_update and rec is None:
            per = self.opts.steps_per_launch
            for start in range(0, steps, per):
                self._fused_steps(c, t0 + start, min(per, steps - start), {})
        else:
            grad = self.grad
            assert grad is not None  # allocated in __init__ with kernels=True, this method's condition
            for i, t in enumerate(range(t0, t0 + steps)):
                outs = {"loss_out": rec.loss[i], "u_out": rec.u[i]} if rec is not None else {}
                if rec is not None:
                    rec.theta[i].copy_(self.x)
                if self.opts.fuse_update:
                    self._fused_steps(c, t, 1, outs)
                    continue
                valley_step_(self.x, grad, self.a, self.sigma, self.keys, self.e, self.min_loss,
                             self.max_u, c=c, step=t, **outs)  # fmt: skip
                self.x.grad = grad
                self.opt.step()
        self.x.grad = None
        self.t.fill_(t0 + steps)
        if rec is not None:
            rec.loss[steps], _, rec.u[steps] = V.loss_and_grad(
                self.x, self.a, self.e, self.valley.c, self.ordered
            )
            rec.theta[steps].copy_(self.x)
        return rec

    def _fused_steps(self, c: float, t: int, n: int, outs: dict[str, Tensor]) -> None:
        """Steps ``t .. t + n - 1`` in one launch: the valley kernel applying the updates of the
        optimizer's own fused step, whose launches ``n`` calls of ``optimizer.step()`` record (with
        the step count advanced each time) instead of run."""
        from ..optim._kernels import recorded_launches
        from .triton_valley import valley_update_

        self.x.grad = self.grad  # (never read: step() only needs a gradient to see the parameter)
        with recorded_launches() as launches:
            for _ in range(n):
                self.opt.step()
        if len(launches) != n:
            raise RuntimeError(f"expected the optimizer's one fused launch per step, got {len(launches)}/{n}")
        valley_update_(self.x, launches, self.a, self.sigma, self.keys, self.e, self.min_loss, self.max_u,
                       c=c, step=t, **outs)  # fmt: skip

    def load(self, rows: Rows, valley: V.Valley) -> None:
        """Reset to step 0 with these rows (padding rows, if fewer, are inert: lr = sigma = 0)."""
        n = len(rows)
        if (valley.dim, valley.c) != (self.valley.dim, self.valley.c):
            raise ValueError(f"workspace for N={self.valley.dim}, c={self.valley.c} got {valley}")
        self.valley = valley
        with torch.no_grad():
            self.e.copy_(valley.axis_tensor(self.e.device))
            for dst, src in zip((self.a, self.sigma, self.lr, self.wd, self.keys), rows._tensors()):
                dst.zero_()
                dst[:n].copy_(src)
            for value in self.opt.state[self.x].values():
                if isinstance(value, Tensor):
                    value.zero_()
            self.t.fill_(0)
            self.x.copy_(INIT_STD * rng.step_normals(self.keys, self.t, self.valley.dim))
            self.x.grad = None
            self.min_loss.fill_(math.inf)
            self.max_u.fill_(-math.inf)
            self.t.fill_(1)

    def run(self, steps: int, record: bool = False) -> tuple[Tensor, Recording | None]:
        """Take ``steps`` steps; return metrics ``[n_rows, 3]`` (and the history if ``record``)."""
        rec = None
        if self.opts.kernels:
            rec = self._run_kernels(steps, record)
        elif record:
            hist: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
            self._run_eager(steps, on_step=lambda: self._snapshot(*hist))
            self._snapshot(*hist)
            rec = Recording(*(torch.stack(h) for h in hist))
        elif self.opts.compile:
            k = self.opts.steps_per_call
            for _ in range(steps // k):
                self._advance()
            for _ in range(steps % k):
                self._advance1()
        else:
            self._run_eager(steps)
        with torch.no_grad():
            final, _, u = V.loss_and_grad(self.x, self.a, self.e, self.valley.c, self.ordered)
            out = torch.stack((final, torch.minimum(self.min_loss, final), torch.maximum(self.max_u, u)), -1)
        return out, rec

    def _snapshot(self, hist_loss: list[Tensor], hist_u: list[Tensor], hist_x: list[Tensor]) -> None:
        with torch.no_grad():
            loss, _, u = V.loss_and_grad(self.x, self.a, self.e, self.valley.c, self.ordered)
            hist_loss.append(loss.clone())
            hist_u.append(u.clone())
            hist_x.append(self.x.detach().clone())


_WORKSPACES: dict[tuple[Any, ...], Workspace] = {}


def workspace(opt_setup: OptimizerSetup, valley: V.Valley, n_rows: int, opts: Options) -> Workspace:
    """A cached :class:`Workspace` (compiled code is reused by later calls with the same shape)."""
    key = (
        opt_setup.label,
        opt_setup.registry,
        repr(sorted(opt_setup.hparams.items())),
        valley.dim,
        valley.c,
        n_rows,
        opts.device,
        opts.compile,
        opts.steps_per_call,
        bool(opts.pack_cells),
        bool(opts.fixed_order),
        opts.kernels,
        opts.fuse_update,
        opts.steps_per_launch,
    )
    if key not in _WORKSPACES:
        if len(_WORKSPACES) >= MAX_WORKSPACES:
            _WORKSPACES.pop(next(iter(_WORKSPACES)))
        _WORKSPACES[key] = Workspace(opt_setup, valley, n_rows, opts)
    return _WORKSPACES[key]


def _align(n: int) -> int:
    return -(-n // ROW_ALIGN) * ROW_ALIGN


def _chunks(n: int, max_rows: int) -> tuple[int, int]:
    """(number of chunks, rows per chunk) splitting ``n`` rows evenly, chunk size aligned."""
    count = -(-n // max_rows)
    return count, _align(-(-n // count))


@overload
def simulate(
    opt_setup: OptimizerSetup | str,
    blocks: Rows | Sequence[Rows],
    valley: V.Valley,
    steps: int = ...,
    options: Options | None = ...,
    record: Literal[False] = ...,
) -> list[Tensor]: ...


@overload
def simulate(
    opt_setup: OptimizerSetup | str,
    blocks: Rows | Sequence[Rows],
    valley: V.Valley,
    steps: int = ...,
    options: Options | None = ...,
    *,
    record: Literal[True],
) -> tuple[list[Tensor], list[Recording]]: ...


@overload
def simulate(
    opt_setup: OptimizerSetup | str,
    blocks: Rows | Sequence[Rows],
    valley: V.Valley,
    steps: int = ...,
    options: Options | None = ...,
    record: bool = ...,
) -> list[Tensor] | tuple[list[Tensor], list[Recording]]: ...


def simulate(
    opt_setup: OptimizerSetup | str,
    blocks: Rows | Sequence[Rows],
    valley: V.Valley,
    steps: int = 1000,
    options: Options | None = None,
    record: bool = False,
) -> list[Tensor] | tuple[list[Tensor], list[Recording]]:
    """Run every row of every block; return the metrics of each block, ``[R_block, 3]`` on CPU.

    Args:
        opt_setup: an :class:`OptimizerSetup` or a paper label (``adamw``, ``signum``, ``focus``).
        blocks: one :class:`Rows` per cell (or a single one).
        valley: the landscape.
        steps: optimizer steps per trajectory.
        options: device, compilation and chunking (see :class:`Options`).
        record: also return each block's per-step history (eager, or on the Triton step with
            ``kernels``; for small runs).
    """
    opt_setup = setup(opt_setup) if isinstance(opt_setup, str) else opt_setup
    if isinstance(blocks, Rows):
        blocks = [blocks]
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps} (allowed: an integer >= 1)")
    total = sum(len(b) for b in blocks)
    opts = (options or Options()).resolved(valley.dim, float(total) * steps)
    if record:
        opts.compile = False
    k = math.gcd(steps, max(1, opts.steps_per_call))
    opts.steps_per_call = k
    with _threads(opts.threads if torch.device(opts.device).type == "cpu" else None):
        return _simulate(opt_setup, list(blocks), valley, steps, opts, record)


def _simulate(
    opt_setup: OptimizerSetup, blocks: list[Rows], valley: V.Valley, steps: int, opts: Options, record: bool
) -> Any:
    # Packed cells start at multiples of ROW_ALIGN rows, so that every row meets the same
    # (vectorised) code path whatever its neighbours.
    sizes = [len(b) for b in blocks]
    padded = [_align(n) for n in sizes]
    groups = [Rows.cat([b.pad(m) for b, m in zip(blocks, padded)])] if opts.pack_cells else list(blocks)
    outs: list[Tensor] = []
    recs: list[Recording] = []
    assert opts.chunk_rows is not None  # Options.resolved() fills it in
    for rows in groups:
        count, size = _chunks(len(rows), opts.chunk_rows)
        ws = workspace(opt_setup, valley, size, opts)
        parts, rparts = [], []
        for i in range(count):
            part = rows.slice(i * size, min(len(rows), (i + 1) * size))
            ws.load(_to(part, opts.device), valley)
            metrics, rec = ws.run(steps, record)
            parts.append(metrics[: len(part)].cpu())
            if rec is not None:
                n = len(part)
                rparts.append(Recording(rec.loss[:, :n].cpu(), rec.u[:, :n].cpu(), rec.theta[:, :n].cpu()))
        outs.append(torch.cat(parts))
        if record:
            recs.append(
                Recording(*(torch.cat(ts, dim=1) for ts in zip(*((r.loss, r.u, r.theta) for r in rparts))))
            )
    if opts.pack_cells:
        outs = [o[:n] for o, n in zip(torch.split(outs[0], padded), sizes)]
        if record:
            split = [t.split(padded, dim=1) for t in (recs[0].loss, recs[0].u, recs[0].theta)]
            recs = [Recording(*(s[i][:, :n] for s in split)) for i, n in enumerate(sizes)]
    return (outs, recs) if record else outs


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to(rows: Rows, device: str) -> Rows:
    return Rows(*(t.to(device) for t in rows._tensors()))


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


__all__ = [
    "INIT_STD",
    "METRICS",
    "PAPER_SETUPS",
    "OptimizerSetup",
    "Options",
    "Recording",
    "Rows",
    "Workspace",
    "compile_available",
    "kernels_available",
    "setup",
    "simulate",
]
